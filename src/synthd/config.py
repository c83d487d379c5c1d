"""Process-wide settings, read from the environment (prefix ``SYNTHD_``)."""

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Typed settings; every field can be set as ``SYNTHD_<NAME>`` in the environment.

    The server's admin key is an option of ``synthd serve`` (``--api-key``, from ``SYNTHD_API_KEY`` or
    ``SYNTH_API_KEY``), not a setting.
    """

    model_config = SettingsConfigDict(env_prefix="SYNTHD_", extra="ignore")

    home: Path = Field(default=Path.home() / ".synthd", description="Root of all synthd data.")
    dtype: str = Field(default="auto", description="auto | bfloat16 | float32")
    max_num_seqs: int = Field(default=64, ge=1, description="Most sequences decoded in one batch.")
    max_model_len: int | None = Field(
        default=None, ge=16, description="Context cap in tokens; default is the model's own."
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

    @model_validator(mode="after")
    def _default_models_dir(self) -> "Settings":
        if self.models_dir is None:
            self.models_dir = self.home / "models"
        return self


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
