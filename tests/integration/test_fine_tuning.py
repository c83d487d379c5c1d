"""Files and fine-tuning jobs through the official openai SDK, with real (tiny) training."""

import json
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from synthd.demo_data import DEMO_DATA
from synthd.engine.prompts import CHAT_TEMPLATE_FILE, DEFAULT_CHAT_TEMPLATE
from synthd.models.shipped import GEMMA3_270M
from synthd.server_process import ServerProcess
from tests.support.cli import synthd
from tests.support.jobs import ExampleJob, example_job, wait_for
from tests.support.server import MODEL


def upload(client: openai.OpenAI, content: bytes | Path, purpose: str = "fine-tune", name: str = "data.jsonl") -> str:
    data = content.read_bytes() if isinstance(content, Path) else content
    return client.files.create(file=(name, data), purpose=purpose).id


@pytest.fixture(scope="module")
def base(models_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(models_dir / MODEL)
    model = AutoModelForCausalLM.from_pretrained(models_dir / MODEL, dtype=torch.float32).eval()
    return model, tokenizer


def answer(model, tokenizer, question: str) -> str:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def test_files_api(ft_client: openai.OpenAI, ft_server: ServerProcess) -> None:
    data = (DEMO_DATA / "sft_facts.jsonl").read_bytes()
    created = ft_client.files.create(file=("facts.jsonl", data), purpose="fine-tune")
    assert created.object == "file" and created.bytes == len(data) and created.filename == "facts.jsonl"
    assert created.id in [f.id for f in ft_client.files.list().data]
    assert ft_client.files.retrieve(created.id).purpose == "fine-tune"
    assert ft_client.files.content(created.id).read() == data
    assert ft_client.files.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        ft_client.files.retrieve(created.id)
    too_big = httpx.post(
        ft_server.base_url + "/files", files={"file": ("big.jsonl", b"x" * 300_000)}, data={"purpose": "fine-tune"}
    )
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "file_too_large"
    bad_purpose = httpx.post(
        ft_server.base_url + "/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "nope"}
    )
    assert bad_purpose.status_code == 400 and bad_purpose.json()["error"]["param"] == "purpose"
    missing = httpx.post(ft_server.base_url + "/files", data={"purpose": "fine-tune"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    not_multipart = httpx.post(ft_server.base_url + "/files", json={"purpose": "fine-tune"})
    assert not_multipart.status_code == 400 and not_multipart.json()["error"]["param"] == "file"
    listed = {f.id for f in ft_client.files.list().data}
    leftovers = [p.name for p in (ft_server_home(ft_server) / "files").iterdir() if p.name not in listed]
    assert leftovers == [], leftovers  # refused uploads leave nothing on disk


def ft_server_home(server: ServerProcess) -> Path:
    return Path(server.env["SYNTHD_HOME"])


@pytest.mark.timeout(1800)  # 18 real training steps: minutes on a quiet machine, more on a loaded one
def test_sft_teaches_facts(ft_client: openai.OpenAI, sft_facts_job: ExampleJob, base) -> None:
    from peft import PeftModel

    model, tokenizer = base
    heldout = [json.loads(line) for line in (DEMO_DATA / "sft_facts_heldout.jsonl").read_text().splitlines()]
    before = [answer(model, tokenizer, h["question"]) for h in heldout]
    assert not any(h["answer"] in b for h, b in zip(heldout, before)), before
    job = sft_facts_job.created
    assert job.status == "validating_files" and job.metadata == {"purpose": "test"}
    done = wait_for(ft_client, job.id, timeout_s=1500)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{MODEL}:facts:{job.id}"
    assert done.trained_tokens > 0 and done.finished_at >= done.created_at
    assert done.method.type == "supervised"
    events = ft_client.fine_tuning.jobs.list_events(job.id, limit=100).data
    steps = [
        e.data for e in events if e.type == "metrics" and e.data and "train_loss" in e.data and "total_steps" in e.data
    ]
    assert {s["step"] for s in steps} == set(range(1, 19))  # 15 rows / 5 per step x 6 epochs, one event per step
    assert all({"learning_rate", "epoch", "total_steps"} <= set(s) for s in steps)
    checkpoints = ft_client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [18, 12, 6]  # n_checkpoints defaults to 3
    assert all(c.metrics.train_loss > 0 and 0 < c.metrics.train_mean_token_accuracy <= 1 for c in checkpoints)
    assert checkpoints[0].metrics.train_loss < checkpoints[-1].metrics.train_loss
    listed = ft_client.fine_tuning.jobs.list(limit=50).data
    assert job.id in [j.id for j in listed]
    adapter_dir = sft_facts_job.adapter_dir
    assert (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "adapter_model.safetensors").is_file()
    tuned = PeftModel.from_pretrained(model, adapter_dir).eval()
    try:
        after = [answer(tuned, tokenizer, h["question"]) for h in heldout]
    finally:
        tuned.unload()
    assert sum(h["answer"] in a for h, a in zip(heldout, after)) >= 2, after


def sequence_logprob(model, tokenizer, prompt: list[dict], reply: list[dict]) -> float:
    """Sum of log-probabilities of the reply's tokens after the chat-templated prompt."""
    context = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]
    full = tokenizer.apply_chat_template(prompt + reply, tokenize=True, return_dict=True)["input_ids"]
    ids = torch.tensor([full])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = ids[0, 1:]
    return float(logprobs[torch.arange(len(context) - 1, len(full) - 1), targets[len(context) - 1 :]].sum())


def margin(model, tokenizer, pairs: list[dict]) -> float:
    return sum(
        sequence_logprob(model, tokenizer, p["prompt"], p["chosen"])
        - sequence_logprob(model, tokenizer, p["prompt"], p["rejected"])
        for p in pairs
    ) / len(pairs)


@pytest.mark.timeout(1800)
def test_dpo_raises_preference_margin(ft_client: openai.OpenAI, dpo_style_job: ExampleJob, base) -> None:
    from peft import PeftModel

    model, tokenizer = base
    heldout = [json.loads(line) for line in (DEMO_DATA / "dpo_style_heldout.jsonl").read_text().splitlines()]
    before = margin(model, tokenizer, heldout)
    done = wait_for(ft_client, dpo_style_job.created.id, timeout_s=1500)
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.1
    tuned = PeftModel.from_pretrained(model, dpo_style_job.adapter_dir).eval()
    try:
        after = margin(tuned, tokenizer, heldout)
    finally:
        tuned.unload()
    assert after > before + 1.0, (before, after)


@pytest.mark.timeout(1800)
def test_dpo_on_a_base_model_without_chat_template(ft_client: openai.OpenAI, ft_home: Path) -> None:
    """DPO of Gemma 3 270M (no chat template): trained with synthd's default template, stored with the
    adapter, on LoRA targets found from the architecture (Gemma's seven projections)."""
    job = example_job(
        ft_client, ft_home, "dpo_style.jsonl", "dpo", {"n_epochs": 1, "batch_size": 4}, model=GEMMA3_270M.model_id
    )
    done = wait_for(ft_client, job.created.id, timeout_s=1500)
    assert done.status == "succeeded", done.error
    assert (job.adapter_dir / CHAT_TEMPLATE_FILE).read_text() == DEFAULT_CHAT_TEMPLATE
    targets = json.loads((job.adapter_dir / "adapter_config.json").read_text())["target_modules"]
    assert sorted(targets) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


BAD_FILES = [
    (
        "bad json on line 3",
        "supervised",
        b'{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n{not json}\n',
        "line 3: invalid JSON",
    ),
    (
        "no assistant turn",
        "supervised",
        b'{"messages": [{"role": "user", "content": "hi"}]}\n',
        "line 1: 'messages' has no assistant turn",
    ),
    ("dpo without rejected", "dpo", b'{"prompt": "q", "chosen": "yes"}\n', "line 1: missing 'rejected'"),
    (
        "openai dpo without non-preferred",
        "dpo",
        b'{"input": {"messages": [{"role": "user", "content": "q"}]}, "preferred_output": [{"role": "assistant", "content": "a"}]}\n',
        "line 1: missing 'non_preferred_output'",
    ),
    ("empty file", "supervised", b"", "no examples"),
    (
        "bad role",
        "supervised",
        b'{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}\n',
        "line 1: 'messages[0].role'",
    ),
    (
        "integer past json's digit limit",
        "supervised",
        b'{"prompt": "a", "completion": "b", "n": ' + b"9" * 5000 + b"}\n",
        "line 1: invalid JSON",
    ),
    ("nesting past the stack", "supervised", b"[" * 20_000 + b"]" * 20_000 + b"\n", "line 1: invalid JSON"),
    (
        "fractional weight",
        "supervised",
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]}\n',
        "line 1: 'messages[1].weight' must be 0 or 1, not 0.5",
    ),
    (
        "string weight",
        "supervised",
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": "1"}]}\n',
        "line 1: 'messages[1].weight' must be 0 or 1, not \"1\"",
    ),
    (
        "weight on a user message",
        "supervised",
        b'{"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]}\n',
        "line 1: 'messages[0].weight' is only allowed on assistant messages",
    ),
    (
        "nothing to train on",
        "supervised",
        b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}\n',
        "no trainable tokens",
    ),
]


@pytest.mark.parametrize("name,method,content,expected", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_malformed_files_fail_with_line_and_reason(ft_client: openai.OpenAI, name, method, content, expected) -> None:
    job = ft_client.fine_tuning.jobs.create(
        model=MODEL, training_file=upload(ft_client, content), method={"type": method}
    )
    done = wait_for(ft_client, job.id, timeout_s=60)
    assert done.status == "failed"
    assert done.error.code == "invalid_training_file" and done.error.param == "training_file"
    assert expected in done.error.message, done.error.message


def test_create_time_errors_are_400(ft_client: openai.OpenAI) -> None:
    good = upload(ft_client, DEMO_DATA / "sft_facts.jsonl")
    wrong_purpose = upload(ft_client, DEMO_DATA / "sft_facts.jsonl", purpose="assistants")
    cases = [
        ({"model": MODEL, "training_file": "file-does-not-exist"}, "training_file"),
        ({"model": MODEL, "training_file": wrong_purpose}, "training_file"),
        ({"model": "no-such-base-model", "training_file": good}, "model"),
        ({"model": MODEL, "training_file": good, "extra_body": {"gpu_preference": "H100:3"}}, "gpu_preference"),
        ({"model": MODEL, "training_file": good, "method": {"type": "ppo"}}, "method.type"),
        ({"model": MODEL, "training_file": good, "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"model": MODEL, "training_file": good, "seed": 2**63}, "seed"),
        ({"model": MODEL, "training_file": good, "suffix": "a:b"}, "suffix"),
        ({"model": MODEL, "training_file": good, "method": {"type": "dpo", "supervised": {}}}, "method"),
        ({"model": MODEL, "training_file": good, "extra_body": {"lora": {"r": 10**9}}}, "lora.r"),
        (
            {"model": MODEL, "training_file": good, "extra_body": {"lora": {"target_modules": ["q_proj", "nope"]}}},
            "lora.target_modules",
        ),  # accepted before, then failed in training
        ({"model": MODEL, "training_file": good, "hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            ft_client.fine_tuning.jobs.create(**kwargs)
        assert info.value.body["param"] == param, (kwargs, info.value.body)
    with pytest.raises(openai.ConflictError):
        ft_client.fine_tuning.jobs.create(model=MODEL, training_file=good, extra_body={"gpu_preference": "H100"})
    infinite = httpx.post(
        str(ft_client.base_url) + "fine_tuning/jobs",
        headers={"content-type": "application/json"},
        content=b'{"model": "%s", "training_file": "%s", "hyperparameters": '
        b'{"learning_rate_multiplier": 1e999}}' % (MODEL.encode(), good.encode()),
    )
    assert (
        infinite.status_code == 400 and infinite.json()["error"]["param"] == "hyperparameters.learning_rate_multiplier"
    )
    with pytest.raises(openai.NotFoundError):
        ft_client.fine_tuning.jobs.retrieve("ftjob-nope")


def test_older_and_synth_forms_and_listing(ft_client: openai.OpenAI) -> None:
    data = upload(ft_client, DEMO_DATA / "dpo_style.jsonl")
    synth = ft_client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=data,
        extra_body={"training_type": "dpo", "lora": {"r": 4, "alpha": 8}},
        hyperparameters={"n_epochs": 1, "batch_size": 4},
    )
    assert synth.method.type == "dpo" and synth.model_extra["lora"]["r"] == 4
    ft_client.fine_tuning.jobs.cancel(synth.id)
    assert wait_for(ft_client, synth.id, timeout_s=1500).status == "cancelled"
    first = ft_client.fine_tuning.jobs.list(limit=1)
    assert len(first.data) == 1 and first.has_more
    second = ft_client.fine_tuning.jobs.list(limit=1, after=first.data[0].id)
    assert second.data[0].id != first.data[0].id
    with pytest.raises(openai.ConflictError) as ended:
        ft_client.fine_tuning.jobs.cancel(synth.id)
    assert ended.value.body["code"] == "job_not_cancellable"


def test_cancel_mid_run(ft_client: openai.OpenAI) -> None:
    job = ft_client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=upload(ft_client, DEMO_DATA / "sft_facts.jsonl"),
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}},
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        events = ft_client.fine_tuning.jobs.list_events(job.id, limit=5).data
        if any(e.type == "metrics" for e in events):
            break
        time.sleep(0.5)
    assert ft_client.fine_tuning.jobs.retrieve(job.id).status == "running"
    ft_client.fine_tuning.jobs.cancel(job.id)
    done = wait_for(ft_client, job.id, timeout_s=60)
    assert done.status == "cancelled"
    assert done.fine_tuned_model is None
    assert not [m.id for m in ft_client.models.list().data if job.id in m.id]
    assert ft_client.fine_tuning.jobs.checkpoints.list(job.id).data == []


def test_cli_upload_create_wait_list_events(ft_server: ServerProcess, ft_client: openai.OpenAI, ft_home: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return synthd(*args, "--base-url", ft_server.base_url)

    uploaded = cli("files", "upload", str(DEMO_DATA / "sft_facts.jsonl"))
    assert uploaded.returncode == 0 and uploaded.stdout.startswith("file-")
    created = cli(
        "ft",
        "create",
        "--training-file",
        str(DEMO_DATA / "sft_facts.jsonl"),
        "--n-epochs",
        "1",
        "--batch-size",
        "5",
        "--suffix",
        "cli",
        "--wait",
    )
    assert created.returncode == 0, created.stderr
    assert "succeeded: ft:SmolLM2-135M-Instruct:cli:ftjob-" in created.stdout
    job_id = created.stdout.split()[0]
    assert job_id in cli("ft", "list").stdout
    assert "The job has successfully completed" in cli("ft", "events", job_id, "--limit", "50").stdout
    assert json.loads(cli("ft", "get", job_id).stdout)["status"] == "succeeded"
    refused = cli("ft", "cancel", job_id)
    assert refused.returncode == 1 and "already succeeded" in refused.stderr
    bad = cli("ft", "create", "--training-file", "file-nope")
    assert bad.returncode == 1 and bad.stderr.startswith("error: 400")
    model_id = f"ft:{MODEL}:cli:{job_id}"  # a trained fine-tune, deleted: unlisted, its adapter gone, then 404
    assert ft_client.models.delete(model_id).deleted is True
    assert model_id not in [m.id for m in ft_client.models.list().data]
    assert not (ft_home / "adapters" / job_id).exists()
    with pytest.raises(openai.NotFoundError):
        ft_client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
