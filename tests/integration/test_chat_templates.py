"""``synthd serve --chat-template`` (vLLM's flag): a base model without a template chats in the one
its operator gives it, exactly as transformers renders and continues it; bad templates fail the
start with one line."""

from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from synthd.errors import InvalidRequest
from synthd.models.chat_templates import assign_chat_templates
from synthd.models.resolve import ModelSource
from synthd.server_process import ServerProcess, free_port
from tests.support.cli import synthd
from tests.support.server import MODEL, server_env

pytestmark = pytest.mark.native_only("templates are rendered by synthd's own prompt code, the same for both engines")

TURNS = (
    "{% for m in messages %}{{ 'Q: ' if m['role'] == 'user' else 'A: ' }}{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}A:{% endif %}"
)
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_a_base_model_chats_in_the_operators_template(
    models_dir: Path, gemma_dir: Path, tmp_path: Path, home: Path
) -> None:
    template = tmp_path / "turns.jinja"
    template.write_text(TURNS)
    args = ["--dtype", "float32", "--model", MODEL, "--model", "gemma-3-270m"]
    args += ["--chat-template", f"gemma-3-270m={template}"]
    with ServerProcess(args, log_path=home / "templates.log", env=server_env(home, models_dir)) as server:
        sdk = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        reply = sdk.chat.completions.create(model="gemma-3-270m", messages=MESSAGES, temperature=0, max_tokens=8)
        smol = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=4)
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    ids = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, chat_template=TURNS, return_tensors="pt", return_dict=True
    )
    model = AutoModelForCausalLM.from_pretrained(gemma_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert reply.usage.prompt_tokens == ids["input_ids"].shape[1]
    assert reply.choices[0].message.content == tokenizer.decode(
        out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert smol.choices[0].message.content  # the other model keeps its own template


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        (["{{ oops"], "not a valid Jinja template"),
        (["./no-such-template.jinja"], "no such file, and not a Jinja template"),
        (["."], "is a directory, not a template file"),
        (["{{ raise_exception('[/x]') }"], "not a valid Jinja template"),  # brackets shown as they are
    ],
)
def test_bad_templates_fail_the_start_in_one_line(specs: list[str], expected: str) -> None:
    result = synthd("serve", "--port", str(free_port()), *(a for s in specs for a in ("--chat-template", s)))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert expected in result.stderr


def test_templates_are_assigned_by_served_id(tmp_path: Path) -> None:
    a, b = ModelSource("a", tmp_path), ModelSource("b", tmp_path)
    assert [s.chat_template for s in assign_chat_templates([a, b], ["b={{ x }}"])] == [None, "{{ x }}"]
    gemma = ModelSource("gemma-3-270m", tmp_path)
    assert assign_chat_templates([a, gemma], ["google/gemma-3-270m={{ x }}"])[1].chat_template == "{{ x }}"
    assert assign_chat_templates([a], ["{{ x }}"])[0].chat_template == "{{ x }}"
    with pytest.raises(InvalidRequest, match="name the model it is for, as MODEL=PATH, one of a, b"):
        assign_chat_templates([a, b], ["{{ x }}"])
    with pytest.raises(InvalidRequest, match="two templates for a"):
        assign_chat_templates([a], ["a={{ x }}", "{{ y }}"])
