"""SQLAlchemy 2 ORM models for files, fine-tuning jobs, their events and checkpoints, and models.

Times are Unix seconds (int), as in OpenAI's objects. JSON columns hold OpenAI-shaped sub-objects
(hyperparameters, method, metadata, error, metrics).
"""

import time
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from synthd.store.base import Base


class JobStatus(StrEnum):
    """A fine-tuning job's status: OpenAI's values plus ``paused`` (``jobs.pause`` / ``jobs.resume``).

    ``validating_files → queued → running → succeeded``; ``running → paused → queued``; any active
    status → ``failed`` or ``cancelled``. Only the job scheduler writes it, each change a conditional
    update (``Repository.transition``).
    """

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """True for ``succeeded``, ``failed`` and ``cancelled``."""
        return self in ENDED


ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
ACTIVE = (JobStatus.VALIDATING_FILES, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)


class FileRecord(Base):
    """An uploaded file (``file-…``); the bytes live at ``path`` under ``$SYNTHD_HOME/files``.
    ``project``: the creating key's project (``synthd.services.projects``)."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer, index=True)
    path: Mapped[str] = mapped_column(Text)
    project: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class JobRecord(Base):
    """A fine-tuning job (``ftjob-…``) in OpenAI's shape plus synthd's LoRA and GPU fields.

    ``cancel_requested`` / ``pause_requested`` are what the API asks for; the scheduler acts on them.
    ``lease_owner`` (``host:pid:nonce`` of the scheduler running it) and ``lease_heartbeat_at`` (Unix
    seconds) say who holds a running job; ``init_adapter`` is the adapter a ``from_checkpoint`` job
    starts from. ``project``: the creating key's project; its ``ft:`` models, checkpoints and result
    files belong to it too. The ``server_default`` values are what the migrations that added those
    columns gave the rows already there (``0002``, ``0003``).
    """

    __tablename__ = "fine_tuning_jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(512))
    model_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    method: Mapped[dict] = mapped_column(JSON)
    lora: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    job_metadata: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    gpu_preference: Mapped[str | None] = mapped_column(String(128), nullable=True)
    gpu: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, index=True)
    created_ns: Mapped[int] = mapped_column(BigInteger, index=True, default=time.time_ns, server_default="0")
    started_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    project: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    pause_requested: Mapped[bool] = mapped_column(default=False, server_default=false())
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    integrations: Mapped[list | None] = mapped_column(JSON, nullable=True)
    result_files: Mapped[list | None] = mapped_column(JSON, nullable=True)
    from_checkpoint: Mapped[str | None] = mapped_column(String(512), nullable=True)
    init_adapter: Mapped[str | None] = mapped_column(Text, nullable=True)
    n_checkpoints: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    n_evals: Mapped[int | None] = mapped_column(Integer, nullable=True)


class JobEvent(Base):
    """One event of a job (``ftevent-…``): a message and optional metrics data."""

    __tablename__ = "fine_tuning_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Checkpoint(Base):
    """A saved training checkpoint (``ftckpt-…``) with OpenAI's metrics names.

    ``path`` is the trainer's resumable folder (removed once the job ends), ``adapter_path`` the kept
    copy of its LoRA adapter, served as ``ft:…:ckpt-step-N`` once the job succeeded.
    """

    __tablename__ = "fine_tuning_checkpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(Text)
    adapter_path: Mapped[str | None] = mapped_column(Text, nullable=True)


class FineTunedModel(Base):
    """A servable fine-tune: an adapter folder on a base model."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(512), primary_key=True)
    base_model: Mapped[str] = mapped_column(String(512))
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    adapter_path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(Integer)
