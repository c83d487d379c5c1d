"""Process-wide settings, read from the environment (prefix ``SYNTHD_``): the one place every
default of the server and every ``SYNTHD_*`` variable is written, each with its help text (the
configuration reference is generated from ``Settings``). The engine, security and autoscaling
configurations are built from it (``EngineConfig.from_settings``, ``SecurityConfig.from_settings``,
``AutoscalingConfig.from_settings``); ``synthd serve``'s options override it for one run.

An empty variable counts as unset (as for the command-line options that read them).

``SYNTH_API_URL`` and ``SYNTH_API_KEY`` are the client's (``synthd`` commands that talk to a server,
``synthd.client``): the Synth platform's names, like ``OPENAI_API_KEY`` for the OpenAI SDK, read
where the client is configured (``synthd_api_url`` below, ``synthd.cli.common``). The server accepts
``SYNTH_API_KEY`` as its admin key when ``SYNTHD_API_KEY`` is unset, so one variable serves both.
"""

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Typed settings; every field can be set as ``SYNTHD_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="SYNTHD_", extra="ignore", env_ignore_empty=True, populate_by_name=True
    )

    home: Path = Field(default=Path.home() / ".synthd", description="Root of all synthd data.")
    engine: str = Field(
        default="native",
        description="Inference engine: native | vllm | auto (vLLM when installed and a CUDA device is present).",
    )
    dtype: str = Field(default="auto", description="Weights' dtype: auto | bfloat16 | float32.")
    max_num_seqs: int = Field(default=64, ge=1, description="Most sequences decoded in one batch.")
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context cap in tokens; default is the model's own."
    )
    max_num_batched_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Tokens computed per engine step, prompt chunks and decode tokens together "
        "(unset: the engine's default).",
    )
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse the keys and values of cached prompt prefixes."
    )
    batch_invariant: bool = Field(
        default=False,
        description="Greedy outputs do not depend on which requests share the batch (costs throughput).",
    )
    gpu_memory_utilization: float = Field(
        default=0.9, ge=0.05, le=1.0, description="vLLM engine: share of each GPU's memory it may use."
    )
    max_lora_rank: int | None = Field(
        default=None,
        ge=1,
        description="vLLM engine: largest LoRA rank it reserves buffers for (unset: the smallest rank vLLM "
        "accepts that covers the registered fine-tunes and the default training rank).",
    )
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="Native engine on the CPU: torch's intra-op threads (unset: every core this process "
        "may use but one, left to the API server).",
    )

    model_idle_timeout_s: float | None = Field(
        default=None, gt=0, description="Unload a model unused for this many seconds (unset: never)."
    )
    max_loaded_models: int = Field(default=4, ge=1, description="Most resident models; LRU idle one evicted.")
    max_loaded_adapters: int = Field(
        default=8, ge=1, description="Resident LoRA adapters per base; LRU idle one evicted."
    )
    kv_cache_tokens: int | None = Field(
        default=None,
        ge=16,
        description="Native engine KV budget in tokens (default: a quarter of the placement's memory).",
    )
    max_waiting: int = Field(default=1024, ge=1, description="Sequences that may wait per engine; beyond, 429.")
    gpu_pool_file: Path | None = Field(
        default=None, description="JSON declaring a cluster's GPU pool (see synthd.gpus.inventory)."
    )
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in $SYNTHD_HOME.")
    max_file_bytes: int = Field(default=512 * 1024 * 1024, ge=1, description="Largest upload accepted (413 beyond).")
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Largest request body on any route but the upload (413 beyond, checked while the body is read).",
    )
    api_key: str | None = Field(
        default=None,
        repr=False,
        validation_alias=AliasChoices("SYNTHD_API_KEY", "SYNTH_API_KEY"),
        description="The server's admin key: every route but /health needs it as a bearer token "
        "(also read from SYNTH_API_KEY when unset; synthd serve --api-key).",
    )
    api_key_file: Path | None = Field(
        default=None, description="Read the admin key from this file's first line (synthd serve --api-key-file)."
    )
    allowed_hosts: str | None = Field(
        default=None,
        description="Comma-separated Host names to answer ('*.example.com' patterns, '*' for any); "
        "default: localhost, 127.0.0.1, ::1 and the bound host.",
    )
    public_metrics: bool = Field(default=False, description="Serve /metrics without a key.")
    max_concurrent_jobs: int = Field(default=1, ge=1, description="Fine-tuning jobs trained at once.")
    models_dir: Path | None = Field(default=None, description="Converted models; default $SYNTHD_HOME/models.")
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster to serve and train on: 'auto', "
        "'HOST:PORT', 'ray://HOST:PORT', or 'local' (a private Ray on this machine).",
    )
    shared_dir: Path | None = Field(
        default=None,
        description="A folder every Ray node reads at the same path; "
        "adapters under it reach replicas by path, others through Ray's object store.",
    )
    min_replicas: int = Field(default=0, ge=0, description="Replicas kept per model and GPU type however idle.")
    max_replicas: int = Field(default=1, ge=1, description="Most replicas per model and GPU type (autoscaling).")
    target_ongoing_requests: int = Field(
        default=2,
        ge=1,
        description="Requests in flight per replica before another replica is started (up to max_replicas).",
    )

    failpoints: str = Field(
        default="",
        description="Testing only: faults to switch on, comma-separated name=action "
        "(see synthd.store.failpoints); unset in normal operation.",
    )
    parent_pid: int | None = Field(
        default=None,
        description="Internal: set by the job scheduler for the training workers it starts (its own pid), "
        "so that a worker whose server is gone exits.",
    )

    @model_validator(mode="after")
    def _default_models_dir(self) -> "Settings":
        if self.models_dir is None:
            self.models_dir = self.home / "models"
        return self


def setting_default(name: str) -> Any:
    """The default of setting ``name`` (for configurations whose fields mirror settings, so that
    each default is written once, here).

    Raises:
        KeyError: no such setting.
    """
    return Settings.model_fields[name].default


DEFAULT_SYNTH_API_URL = "http://127.0.0.1:8000"


def synthd_api_url(url: str | None = None) -> str:
    """The OpenAI base URL of a synthd server: ``url``, else ``SYNTH_API_URL``, else
    http://127.0.0.1:8000, with ``/v1`` appended when missing."""
    url = (url or os.environ.get("SYNTH_API_URL") or DEFAULT_SYNTH_API_URL).rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


@lru_cache
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings()
