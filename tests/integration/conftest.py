"""Fixtures for tests against a real synthd server on 127.0.0.1: one shared session server with the
embedded model and the official SDK pointed at it, a fresh home per module for modules that start
their own, and one fine-tuning server whose example SFT and DPO jobs are trained once per session
(checked by test_fine_tuning, served again by test_demo)."""

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from synthd.models.shipped import GEMMA3_270M
from synthd.server_process import ServerProcess
from tests.support.jobs import ExampleJob, example_job
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


@pytest.fixture(scope="session")
def ft_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fine-tuning server's home: its jobs' adapters are in ``adapters/<job id>``."""
    return tmp_path_factory.mktemp("ft-home")


@pytest.fixture(scope="session")
def ft_server(models_dir: Path, ft_home: Path) -> Iterator[ServerProcess]:
    """A server for files and fine-tuning jobs, its upload cap lowered to 200 kB."""
    env = server_env(ft_home, models_dir, SYNTHD_MAX_FILE_BYTES="200000")
    with ServerProcess(log_path=ft_home / "server.log", env=env) as process:
        yield process


@pytest.fixture(scope="session")
def ft_client(ft_server: ServerProcess) -> openai.OpenAI:
    """The official SDK pointed at the fine-tuning server."""
    return openai.OpenAI(base_url=ft_server.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def sft_facts_job(ft_client: openai.OpenAI, ft_home: Path) -> ExampleJob:
    """SFT on the demo's ``sft_facts.jsonl`` with ``synthd demo``'s settings (seed 7; 15 rows, 5 a
    step, 6 epochs: 18 steps), created once per session."""
    hyperparameters = {"n_epochs": 6, "batch_size": 5, "learning_rate_multiplier": 10}
    return example_job(
        ft_client,
        ft_home,
        "sft_facts.jsonl",
        "supervised",
        hyperparameters,
        suffix="facts",
        seed=7,
        metadata={"purpose": "test"},
    )


@pytest.fixture(scope="session")
def gemma_sft_job(ft_client: openai.OpenAI, ft_home: Path, gemma_dir: Path) -> ExampleJob:
    """SFT of the second shipped model, Gemma 3 270M (a base model: no chat template), on the demo's
    ``sft_facts.jsonl`` (seed 5; 15 rows, 5 a step, 2 epochs: 6 steps), created once per session."""
    hyperparameters = {"n_epochs": 2, "batch_size": 5, "learning_rate_multiplier": 10}
    return example_job(
        ft_client, ft_home, "sft_facts.jsonl", "supervised", hyperparameters, model=GEMMA3_270M.model_id, seed=5
    )


@pytest.fixture(scope="session")
def dpo_style_job(ft_client: openai.OpenAI, ft_home: Path) -> ExampleJob:
    """DPO on the demo's ``dpo_style.jsonl`` with ``synthd demo``'s hyperparameters (seed 3), created
    once per session."""
    hyperparameters = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 5, "beta": 0.1}
    return example_job(ft_client, ft_home, "dpo_style.jsonl", "dpo", hyperparameters, suffix="style", seed=3)
