"""Queries and updates of files, jobs, events, checkpoints and fine-tuned models.

One ``Repository`` wraps a session factory; every method opens its own short transaction so the API
server, the scheduler and training workers (other processes) can share the database.
"""

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from synthd.store.files import write_atomic
from synthd.store.models import Checkpoint, FileRecord, FineTunedModel, JobEvent, JobRecord

TERMINAL = ("succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    """``prefix-`` + 24 hex characters, like OpenAI's ids."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    """Unix seconds."""
    return int(time.time())


class Repository:
    """Data access for synthd's persistent objects. ``files_dir`` holds uploaded bytes."""

    def __init__(self, sessions: sessionmaker[Session], files_dir: Path) -> None:
        self.sessions = sessions
        self.files_dir = files_dir

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed on success, rolled back on error."""
        with self.sessions.begin() as session:
            yield session

    # --- files --------------------------------------------------------------------------------
    def add_file(self, filename: str, purpose: str, content: bytes, project: str | None = None) -> FileRecord:
        """Store bytes atomically, then record them (owned by ``project``)."""
        file_id = new_id("file")
        path = self.files_dir / file_id
        write_atomic(path, content)
        record = FileRecord(id=file_id, filename=filename, purpose=purpose, bytes=len(content),
                            created_at=now(), path=str(path), project=project)
        with self.session() as session:
            session.add(record)
        return record

    def get_file(self, file_id: str) -> FileRecord | None:
        """A file record or None."""
        with self.session() as session:
            return session.get(FileRecord, file_id)

    def list_files(self, purpose: str | None = None, project: str | None = None) -> list[FileRecord]:
        """Files, newest first (only ``project``'s when given)."""
        with self.session() as session:
            query = select(FileRecord).order_by(FileRecord.created_at.desc(), FileRecord.id.desc())
            if purpose:
                query = query.where(FileRecord.purpose == purpose)
            if project is not None:
                query = query.where(FileRecord.project == project)
            return list(session.scalars(query))

    def delete_file(self, file_id: str) -> bool:
        """Remove record and bytes; False if unknown."""
        with self.session() as session:
            record = session.get(FileRecord, file_id)
            if record is None:
                return False
            session.delete(record)
        Path(record.path).unlink(missing_ok=True)
        return True

    def read_file(self, record: FileRecord) -> bytes:
        """The stored bytes."""
        return Path(record.path).read_bytes()

    # --- jobs ---------------------------------------------------------------------------------
    def add_job(self, job: JobRecord) -> JobRecord:
        """Insert a job and its 'created' event."""
        with self.session() as session:
            session.add(job)
            session.flush()
            session.add(self._event(job.id, f"Created fine-tuning job: {job.id}"))
        return job

    def get_job(self, job_id: str) -> JobRecord | None:
        """A job or None."""
        with self.session() as session:
            return session.get(JobRecord, job_id)

    def list_jobs(self, after: str | None, limit: int, status: str | None = None,
                  project: str | None = None) -> tuple[list[JobRecord], bool]:
        """Jobs newest first, after the cursor ``after`` (only ``project``'s when given); returns (page, has_more)."""
        with self.session() as session:
            query = select(JobRecord).order_by(JobRecord.created_at.desc(), JobRecord.id.desc())
            if status:
                query = query.where(JobRecord.status == status)
            if project is not None:
                query = query.where(JobRecord.project == project)
            jobs = list(session.scalars(query))
        if after:
            ids = [j.id for j in jobs]
            jobs = jobs[ids.index(after) + 1:] if after in ids else []
        return jobs[:limit], len(jobs) > limit

    def job_projects(self) -> dict[str, str | None]:
        """Every job's project, by job id."""
        with self.session() as session:
            return {job_id: project for job_id, project in session.execute(select(JobRecord.id, JobRecord.project))}

    def jobs_with_status(self, *statuses: str) -> list[JobRecord]:
        """Jobs in any of ``statuses``, oldest first (queue order)."""
        with self.session() as session:
            query = select(JobRecord).where(JobRecord.status.in_(statuses)).order_by(JobRecord.created_ns)
            return list(session.scalars(query))

    def update_job(self, job_id: str, message: str | None = None, data: dict | None = None, **fields) -> JobRecord:
        """Set ``fields`` on a job and optionally add an event, in one transaction."""
        with self.session() as session:
            job = session.get(JobRecord, job_id)
            assert job is not None, job_id
            for name, value in fields.items():
                setattr(job, name, value)
            if message:
                session.add(self._event(job_id, message, data, "metrics" if data else "message"))
            return job

    def add_event(self, job_id: str, message: str, data: dict | None = None, level: str = "info") -> None:
        """Append an event (``type`` ``metrics`` when ``data`` is given)."""
        with self.session() as session:
            session.add(self._event(job_id, message, data, "metrics" if data else "message", level))

    def list_events(self, job_id: str, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
        """Events newest first (OpenAI's order), after the cursor ``after``; returns (page, has_more)."""
        with self.session() as session:
            query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq.desc())
            if after:
                cursor = session.scalar(select(JobEvent.seq).where(JobEvent.id == after))
                if cursor is None:
                    return [], False
                query = query.where(JobEvent.seq < cursor)
            events = list(session.scalars(query.limit(limit + 1)))
        return events[:limit], len(events) > limit

    def add_checkpoint(self, job_id: str, step: int, metrics: dict, path: str) -> None:
        """Record a checkpoint and its event."""
        with self.session() as session:
            session.add(Checkpoint(id=new_id("ftckpt"), job_id=job_id, created_at=now(), step_number=step,
                                   metrics=metrics, path=path))
            session.add(self._event(job_id, f"Checkpoint saved at step {step}", {"step": step, **metrics}, "metrics"))

    def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> tuple[list[Checkpoint], bool]:
        """Checkpoints newest first; returns (page, has_more)."""
        with self.session() as session:
            rows = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                                        .order_by(Checkpoint.step_number.desc())))
        if after:
            ids = [c.id for c in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        return rows[:limit], len(rows) > limit

    # --- models -------------------------------------------------------------------------------
    def add_model(self, model_id: str, base: str, adapter_path: str, job_id: str | None) -> None:
        """Register a servable fine-tune."""
        with self.session() as session:
            session.merge(FineTunedModel(id=model_id, base_model=base, job_id=job_id, adapter_path=adapter_path,
                                         created_at=now()))

    def get_model(self, model_id: str) -> FineTunedModel | None:
        """A fine-tuned model or None."""
        with self.session() as session:
            return session.get(FineTunedModel, model_id)

    def list_models(self) -> list[FineTunedModel]:
        """Fine-tuned models, oldest first."""
        with self.session() as session:
            return list(session.scalars(select(FineTunedModel).order_by(FineTunedModel.created_at)))

    def delete_model(self, model_id: str) -> FineTunedModel | None:
        """Remove a fine-tuned model's record; return it (None if unknown)."""
        with self.session() as session:
            record = session.get(FineTunedModel, model_id)
            if record is not None:
                session.delete(record)
            return record

    @staticmethod
    def _event(job_id: str, message: str, data: dict | None = None, type: str = "message", level: str = "info") -> JobEvent:
        return JobEvent(id=new_id("ftevent"), job_id=job_id, created_at=now(), level=level, message=message,
                        type=type, data=data)
