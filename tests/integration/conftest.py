"""Fixtures for tests against a real synthd server on 127.0.0.1: one shared session server with the
embedded model and the official SDK pointed at it, and a fresh home per module for modules that
start their own."""

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from synthd.server_process import ServerProcess
from tests.support.server import server_env


@pytest.fixture(scope="module")
def home(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ``SYNTHD_HOME`` for this module's own server(s) (database, files, adapters, logs)."""
    return tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2].removeprefix("test_") + "-home")


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
