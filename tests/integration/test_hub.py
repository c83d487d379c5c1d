"""Models from the Hugging Face Hub: ``synthd models pull ORG/NAME[@REVISION]`` and ``synthd serve
--model ORG/NAME`` against a local server speaking the Hub's file API (``HF_ENDPOINT``), serving tiny
models built here. config.json comes first and a model no engine here runs is refused before its
weights are fetched; only the files serving reads are downloaded; an unreachable Hub is one line."""

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig

from synthd.server_process import ServerProcess, free_port
from tests.fakes import hub_server
from tests.fakes.script import serve
from tests.support.cli import synthd
from tests.support.server import MODEL, server_env

pytestmark = pytest.mark.native_only("where models come from, not how an engine runs them")

TINY = "test-org/tiny-llama"
REFUSED = "test-org/tiny-gpt2"
UNAUTHORIZED = "test-org/needs-a-token"


@pytest.fixture(scope="module")
def hub(models_dir: Path, tmp_path_factory) -> Iterator[tuple[str, list[str]]]:
    """The fake Hub's URL and the files it was asked for; it serves a tiny Llama (with a ``.bin``
    copy of its weights that must not be fetched) and a tiny GPT-2."""
    root = tmp_path_factory.mktemp("hub")
    llama = root / "llama"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(llama)
    AutoTokenizer.from_pretrained(models_dir / MODEL).save_pretrained(llama)
    (llama / "pytorch_model.bin").write_bytes(b"the same weights, pickled")
    gpt2 = root / "gpt2"
    GPT2Config(n_embd=32, n_layer=1, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(gpt2)
    (gpt2 / "model.safetensors").write_bytes(b"never fetched")
    requested: list[str] = []
    app = hub_server.create_app({TINY: llama, REFUSED: gpt2}, requested, refused=frozenset({UNAUTHORIZED}))
    with serve(app) as url:
        yield url, requested


def hub_env(home: Path, models_dir: Path, endpoint: str) -> dict[str, str]:
    return server_env(home, models_dir, HF_ENDPOINT=endpoint, HF_HOME=str(home / "hf"), HF_HUB_DISABLE_XET="1")


def test_pull_downloads_what_serving_reads_config_first(hub, models_dir: Path, tmp_path: Path) -> None:
    url, requested = hub
    requested.clear()
    env = hub_env(tmp_path, models_dir, url)
    pulled = synthd("models", "pull", TINY, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert f"{TINY} ready in" in pulled.stdout
    fetched = [r.removeprefix(f"{TINY}/") for r in requested]
    assert fetched[0] == "config.json"
    assert {"model.safetensors", "tokenizer.json", "generation_config.json"} <= set(fetched)
    assert "pytorch_model.bin" not in fetched
    again = synthd("models", "pull", TINY, env={**env, "HF_HUB_OFFLINE": "1"})  # offline: from the cache
    assert again.returncode == 0 and f"{TINY} ready in" in again.stdout, again.stderr
    listed = json.loads(synthd("models", "list", "--json", env=env).stdout)
    assert {"model_id": TINY, "source": "hf-cache", "cached": True} in [
        {k: r[k] for k in ("model_id", "source", "cached")} for r in listed
    ]


def test_an_architecture_no_engine_here_runs_is_refused_before_its_weights(
    hub, models_dir: Path, tmp_path: Path
) -> None:
    url, requested = hub
    requested.clear()
    refused = synthd("models", "pull", REFUSED, env=hub_env(tmp_path, models_dir, url))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "GPT2LMHeadModel" in refused.stderr and "vLLM is not installed here" in refused.stderr
    assert requested == [f"{REFUSED}/config.json"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("test-org/no-such-model", "test-org/no-such-model: no such model on the Hub (a private one needs HF_TOKEN)"),
        (UNAUTHORIZED, f"refused {UNAUTHORIZED}: "),
        ("not/a/hub/id", "is neither a shipped model"),
        ("test-org/tiny-llama@../../x", "is neither a shipped model"),
        ("test-org/tiny-llama@", "is neither a shipped model"),
        ("x[/]", "'x[/]' is neither a shipped model"),  # square brackets are shown, never read as markup
    ],
)
def test_unknown_models_are_one_line(hub, models_dir: Path, tmp_path: Path, name: str, expected: str) -> None:
    result = synthd("models", "pull", name, env=hub_env(tmp_path, models_dir, hub[0]))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert expected in result.stderr


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("http://127.0.0.1:{port}", "cannot reach the Hugging Face Hub at http://127.0.0.1:{port} to download"),
        ("ftp://127.0.0.1:{port}", "HF_ENDPOINT 'ftp://127.0.0.1:{port}' is not an http:// or https:// URL"),
    ],
)
def test_an_unreachable_hub_is_one_line(models_dir: Path, tmp_path: Path, endpoint: str, expected: str) -> None:
    port = free_port()
    result = synthd("models", "pull", TINY, env=hub_env(tmp_path, models_dir, endpoint.format(port=port)))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert expected.format(port=port) in result.stderr


def test_serve_downloads_a_hub_model_it_does_not_have(hub, models_dir: Path, tmp_path: Path) -> None:
    url, requested = hub
    requested.clear()
    env = hub_env(tmp_path, models_dir, url)
    with ServerProcess(["--model", TINY], log_path=tmp_path / "server.log", env=env) as server:
        sdk = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
        assert TINY in [m.id for m in sdk.models.list().data]
        reply = sdk.completions.create(model=TINY, prompt="Hello there", max_tokens=3, temperature=0)
    assert reply.usage.completion_tokens == 3
    assert f"{TINY}/model.safetensors" in requested
