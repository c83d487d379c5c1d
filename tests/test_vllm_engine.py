"""What only the vLLM engine has to prove (SYNTHD_TEST_ENGINE=vllm; ``make test`` runs it in .venv-vllm):
a bad adapter fails only its own request, a dead EngineCore is restarted, vLLM's stats reach
``/metrics`` under synthd's names, and stopping the server leaves none of vLLM's processes."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import torch
from conftest import MODEL, server_env
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from synthd.server_process import ServerProcess

pytestmark = pytest.mark.vllm_only("vLLM's processes, LoRA slots and restarts")
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def engine_processes(server: ServerProcess) -> list[psutil.Process]:
    """vLLM's EngineCore and worker processes under the server."""
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p for p in children if p.name().startswith("VLLM::")]


def metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(server.root_url + "/metrics").text
    pattern = re.compile(
        rf'^synthd:{re.escape(name)}\{{[^}}]*model_name="{re.escape(MODEL)}"[^}}]*\}} (\S+)$', re.MULTILINE
    )
    return sum(float(v) for v in pattern.findall(text))


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vllm-home")


@pytest.fixture(scope="module")
def server(home: Path, models_dir: Path):
    with ServerProcess(log_path=home / "server.log", env=server_env(home, models_dir)) as process:
        yield process


def ask(server: ServerProcess, **extra) -> httpx.Response:
    return httpx.post(
        server.base_url + "/chat/completions",
        timeout=600,
        json={"model": MODEL, "messages": FRANCE, "temperature": 0, "max_tokens": 20, **extra},
    )


def test_stats_reach_metrics_under_synthd_names(server: ServerProcess) -> None:
    long_prompt = [{"role": "user", "content": "Summarise: " + "the quick brown fox jumps over the lazy dog " * 40}]
    queries, hits = metric(server, "prefix_cache_queries_total"), metric(server, "prefix_cache_hits_total")
    answers = [ask(server, messages=long_prompt, max_tokens=2) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    prompt_tokens = answers[0].json()["usage"]["prompt_tokens"]
    assert prompt_tokens > 256
    assert metric(server, "prefix_cache_queries_total") - queries >= 2 * prompt_tokens
    # The second prompt reuses the first one's full 128-token blocks (vLLM-CPU's block size).
    assert metric(server, "prefix_cache_hits_total") - hits >= 128 * (prompt_tokens // 128)


def test_adapter_above_the_reserved_rank_fails_alone(
    server: ServerProcess, home: Path, models_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(models_dir / MODEL, dtype=torch.float32)
    config = LoraConfig(r=32, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "wide")
    imported = subprocess.run(
        [
            sys.executable,
            "-m",
            "synthd.cli",
            "models",
            "import",
            str(tmp_path / "wide"),
            "--base",
            MODEL,
            "--name",
            "wide",
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
        env={**os.environ, **server_env(home, models_dir)},
    )
    assert imported.returncode == 0, imported.stderr
    cores = {p.pid for p in engine_processes(server)}

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=600) as http:
            body = {"messages": FRANCE, "temperature": 0, "max_tokens": 20}
            return list(
                await asyncio.gather(
                    http.post("/chat/completions", json={"model": f"ft:{MODEL}:wide", **body}),
                    *(http.post("/chat/completions", json={"model": MODEL, **body}) for _ in range(3)),
                )
            )

    wide, *neighbours = asyncio.run(together())
    assert wide.status_code == 500
    assert "rank 32" in wide.json()["error"]["message"] and "max_lora_rank" in wide.json()["error"]["message"]
    for answer in neighbours:
        assert answer.status_code == 200 and "Paris" in answer.json()["choices"][0]["message"]["content"]
    assert {p.pid for p in engine_processes(server)} == cores  # the engine was not restarted


def test_a_dead_engine_fails_its_requests_and_is_restarted(server: ServerProcess) -> None:
    [core] = [p for p in engine_processes(server) if p.name() == "VLLM::EngineCore"]
    stream = httpx.stream(
        "POST",
        server.base_url + "/chat/completions",
        timeout=600,
        json={"model": MODEL, "messages": FRANCE, "max_tokens": 4000, "ignore_eos": True, "stream": True},
    )
    with stream as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        core.send_signal(signal.SIGKILL)
        rest = "\n".join(lines)
    error = next(line for line in rest.splitlines() if line.startswith('data: {"error"'))
    assert "restarted" in error and rest.rstrip().endswith("data: [DONE]")
    answer = ask(server)
    assert answer.status_code == 200 and "Paris" in answer.json()["choices"][0]["message"]["content"]
    [new_core] = [p for p in engine_processes(server) if p.name() == "VLLM::EngineCore"]
    assert new_core.pid != core.pid


def test_stopping_the_server_leaves_no_engine_process(models_dir: Path, tmp_path: Path) -> None:
    with ServerProcess(log_path=tmp_path / "server.log", env=server_env(tmp_path, models_dir)) as server:
        engines = engine_processes(server)
        assert {p.name() for p in engines} >= {"VLLM::EngineCore"}
        assert ask(server).status_code == 200
    deadline = time.monotonic() + 30
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in engines) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p.pid for p in engines if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0).models.list()
