"""Session-wide fixtures and markers: the pulled shipped models, the embedded tokenizer, the fake providers."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from synthd.config import get_settings
from synthd.models.shipped import EMBEDDED, GEMMA3_270M, embedded_model_dir
from tests.fakes import anthropic_server, openai_server
from tests.fakes.script import FakeProvider, Script, serve
from tests.support.server import ENGINE


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The pulled embedded model's parent folder (``make test`` pulls it first)."""
    directory = get_settings().models_dir
    if not EMBEDDED.is_pulled(directory):
        pytest.fail("the embedded model is not pulled: run 'make test' (or 'synthd models pull') first")
    return directory


@pytest.fixture(scope="session")
def gemma_dir(models_dir: Path) -> Path:
    """The pulled Gemma 3 270M, the second shipped model (``make test`` pulls it first)."""
    if not GEMMA3_270M.is_pulled(models_dir):
        pytest.fail("gemma-3-270m is not pulled: run 'make test' (or 'synthd models pull gemma-3-270m') first")
    return GEMMA3_270M.folder(models_dir)


@pytest.fixture(scope="session")
def tokenizer(models_dir: Path):
    """The embedded model's tokenizer, for exact usage checks."""
    return AutoTokenizer.from_pretrained(embedded_model_dir(models_dir))


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
