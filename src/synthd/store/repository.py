"""Queries and updates of files, jobs, events, checkpoints and fine-tuned models.

One ``Repository`` wraps a session factory; every method opens its own short transaction so the API
server, the scheduler and training workers (other processes) can share the database.
"""

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from synthd.store.files import Upload, write_atomic
from synthd.store.models import Checkpoint, FileRecord, FineTunedModel, JobEvent, JobRecord, JobStatus
from synthd.store.pagination import newest_first


@dataclass(frozen=True)
class NewModel:
    """A fine-tune to register: its ``ft:`` id, base model id and adapter folder."""

    id: str
    base_model: str
    adapter_path: str


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

    # --- files --------------------------------------------------------------------------------
    def open_upload(self, limit_bytes: int) -> Upload:
        """A locked partial file under ``files_dir`` to stream an upload into (see ``commit_upload``)."""
        return Upload(self.files_dir, limit_bytes)

    def commit_upload(self, upload: Upload, filename: str, purpose: str, project: str | None = None) -> FileRecord:
        """Rename a finished upload into place, then record it, owned by ``project`` (a crash in
        between leaves an unlisted file, never a listed partial one)."""
        file_id = new_id("file")
        path = self.files_dir / file_id
        upload.commit(path)
        return self.add_file_record(file_id, filename, purpose, path, project)

    def add_file(self, filename: str, purpose: str, content: bytes, project: str | None = None) -> FileRecord:
        """Store bytes written by synthd itself (a batch's output) atomically, then record them,
        owned by ``project``."""
        file_id = new_id("file")
        path = self.files_dir / file_id
        write_atomic(path, content)
        return self.add_file_record(file_id, filename, purpose, path, project)

    def add_file_record(
        self, file_id: str, filename: str, purpose: str, path: Path, project: str | None = None
    ) -> FileRecord:
        """Record bytes already in place at ``path``, owned by ``project``."""
        record = FileRecord(
            id=file_id,
            filename=filename,
            purpose=purpose,
            bytes=path.stat().st_size,
            created_at=now(),
            path=str(path),
            project=project,
        )
        with self.sessions.begin() as session:
            session.add(record)
        return record

    def get_file(self, file_id: str) -> FileRecord | None:
        """A file record or None."""
        with self.sessions.begin() as session:
            return session.get(FileRecord, file_id)

    def list_files(
        self, after: str | None, limit: int, purpose: str | None = None, project: str | None = None
    ) -> tuple[list[FileRecord], bool]:
        """Files newest first, after the cursor ``after`` (only ``purpose``'s and ``project``'s when
        given); returns (page, has_more)."""
        query = select(FileRecord)
        if purpose:
            query = query.where(FileRecord.purpose == purpose)
        if project is not None:
            query = query.where(FileRecord.project == project)
        with self.sessions.begin() as session:
            return newest_first(session, query, (FileRecord.created_at, FileRecord.id), after, limit)

    def delete_file(self, file_id: str) -> bool:
        """Remove record and bytes; False if unknown."""
        with self.sessions.begin() as session:
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
        with self.sessions.begin() as session:
            session.add(job)
            session.flush()
            session.add(self._event(job.id, f"Created fine-tuning job: {job.id}"))
        return job

    def get_job(self, job_id: str) -> JobRecord | None:
        """A job or None."""
        with self.sessions.begin() as session:
            return session.get(JobRecord, job_id)

    def list_jobs(
        self, after: str | None, limit: int, status: str | None = None, project: str | None = None
    ) -> tuple[list[JobRecord], bool]:
        """Jobs newest first (by second, then nanosecond of creation, so jobs created in one second keep
        their order), after the cursor ``after`` (only ``project``'s when given); returns (page, has_more)."""
        query = select(JobRecord)
        if status:
            query = query.where(JobRecord.status == status)
        if project is not None:
            query = query.where(JobRecord.project == project)
        with self.sessions.begin() as session:
            return newest_first(
                session, query, (JobRecord.created_at, JobRecord.created_ns, JobRecord.id), after, limit
            )

    def job_projects(self) -> dict[str, str | None]:
        """Every job's project, by job id."""
        with self.sessions.begin() as session:
            return {job_id: project for job_id, project in session.execute(select(JobRecord.id, JobRecord.project))}

    def jobs_with_status(self, *statuses: str) -> list[JobRecord]:
        """Jobs in any of ``statuses``, oldest first (queue order)."""
        with self.sessions.begin() as session:
            query = select(JobRecord).where(JobRecord.status.in_(statuses)).order_by(JobRecord.created_ns)
            return list(session.scalars(query))

    def transition(
        self,
        job_id: str,
        source: Iterable[JobStatus],
        target: JobStatus,
        message: str | None = None,
        *,
        owner: str | None = None,
        level: str = "info",
        **fields,
    ) -> bool:
        """Move a job from any of ``source`` to ``target`` and set ``fields``, in one conditional
        ``UPDATE … WHERE id = … AND status IN (…)`` (and ``lease_owner = owner`` when given), adding
        the event ``message`` only if it applied. Returns whether this call won."""
        with self.sessions.begin() as session:
            won = self._conditional(session, job_id, source, owner, status=target, **fields)
            if won and message:
                session.add(self._event(job_id, message, level=level))
            return won

    def succeed(
        self, job_id: str, owner: str, message: str, models: list[NewModel], result_file: FileRecord | None, **fields
    ) -> bool:
        """``running → succeeded`` unless a cancel was asked first, registering ``models`` and the
        result file in the same transaction: a cancel that won leaves no model behind, and one that
        comes after finds the job ended. Returns whether it won."""
        with self.sessions.begin() as session:
            won = self._conditional(
                session,
                job_id,
                [JobStatus.RUNNING],
                owner,
                extra=[~JobRecord.cancel_requested],
                status=JobStatus.SUCCEEDED,
                **fields,
            )
            if not won:
                return False
            for model in models:
                session.merge(
                    FineTunedModel(
                        id=model.id,
                        base_model=model.base_model,
                        job_id=job_id,
                        adapter_path=model.adapter_path,
                        created_at=now(),
                    )
                )
            if result_file is not None:
                session.add(result_file)
            session.add(self._event(job_id, message))
            return True

    def request_flag(self, job_id: str, flag: str, value: bool, statuses: Iterable[JobStatus]) -> bool:
        """Set ``cancel_requested`` or ``pause_requested`` on a job in one of ``statuses`` (not
        cancelled before); returns whether it applied."""
        assert flag in ("cancel_requested", "pause_requested"), flag
        with self.sessions.begin() as session:
            return self._conditional(
                session, job_id, statuses, None, extra=[~JobRecord.cancel_requested], **{flag: value}
            )

    def claim(self, job_id: str, owner: str, **fields) -> bool:
        """``queued → running`` under ``owner``'s lease (heartbeat now); returns whether it won."""
        with self.sessions.begin() as session:
            return self._conditional(
                session,
                job_id,
                [JobStatus.QUEUED],
                None,
                extra=[~JobRecord.cancel_requested, ~JobRecord.pause_requested],
                status=JobStatus.RUNNING,
                lease_owner=owner,
                lease_heartbeat_at=time.time(),
                **fields,
            )

    def heartbeat(self, owner: str) -> None:
        """Renew ``owner``'s lease on every running job it holds."""
        with self.sessions.begin() as session:
            session.execute(
                update(JobRecord)
                .where(JobRecord.lease_owner == owner, JobRecord.status == JobStatus.RUNNING)
                .values(lease_heartbeat_at=time.time())
                .execution_options(synchronize_session=False)
            )

    def job_flags(self, job_id: str) -> tuple[bool, bool]:
        """``(cancel_requested, pause_requested)`` of a job (both False if unknown)."""
        with self.sessions.begin() as session:
            row = session.execute(
                select(JobRecord.cancel_requested, JobRecord.pause_requested).where(JobRecord.id == job_id)
            ).first()
        return (bool(row[0]), bool(row[1])) if row else (False, False)

    def set_fields(self, job_id: str, **fields) -> None:
        """Set non-status fields (``worker_pid``, ``estimated_finish``, resolved hyperparameters)."""
        with self.sessions.begin() as session:
            self._set_fields(session, job_id, fields)

    def add_event(self, job_id: str, message: str, data: dict | None = None, level: str = "info") -> None:
        """Append an event (``type`` ``metrics`` when ``data`` is given)."""
        with self.sessions.begin() as session:
            session.add(self._event(job_id, message, data, level))

    def add_events(self, job_id: str, events: list[tuple[str, dict | None]], **fields) -> None:
        """Append several ``(message, data)`` events and set non-status ``fields``, in one transaction."""
        with self.sessions.begin() as session:
            session.add_all(self._event(job_id, message, data) for message, data in events)
            if fields:
                self._set_fields(session, job_id, fields)

    def list_events(self, job_id: str, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
        """Events newest first (OpenAI's order), after the cursor ``after``; returns (page, has_more)."""
        with self.sessions.begin() as session:
            return newest_first(
                session, select(JobEvent).where(JobEvent.job_id == job_id), (JobEvent.seq,), after, limit
            )

    def add_checkpoint(self, job_id: str, step: int, metrics: dict, path: str, adapter_path: str) -> None:
        """Record a checkpoint (replacing one of the same step from an earlier attempt) and its event."""
        with self.sessions.begin() as session:
            for old in session.scalars(
                select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step_number == step)
            ):
                session.delete(old)
            session.add(
                Checkpoint(
                    id=new_id("ftckpt"),
                    job_id=job_id,
                    created_at=now(),
                    step_number=step,
                    metrics=metrics,
                    path=path,
                    adapter_path=adapter_path,
                )
            )
            session.add(self._event(job_id, f"Checkpoint saved at step {step}", {"step": step, **metrics}))

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        """Every checkpoint of a job, newest first."""
        with self.sessions.begin() as session:
            return list(
                session.scalars(
                    select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step_number.desc())
                )
            )

    def delete_checkpoints(self, ids: Iterable[str]) -> None:
        """Drop checkpoint records."""
        with self.sessions.begin() as session:
            session.execute(delete(Checkpoint).where(Checkpoint.id.in_(list(ids))))

    def metric_events(self, job_id: str) -> list[JobEvent]:
        """A job's ``metrics`` events, oldest first."""
        with self.sessions.begin() as session:
            return list(
                session.scalars(
                    select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metrics").order_by(JobEvent.seq)
                )
            )

    def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> tuple[list[Checkpoint], bool]:
        """Checkpoints newest first (highest step), after the cursor ``after``; returns (page, has_more)."""
        query = select(Checkpoint).where(Checkpoint.job_id == job_id)
        with self.sessions.begin() as session:
            return newest_first(session, query, (Checkpoint.step_number, Checkpoint.id), after, limit)

    # --- models -------------------------------------------------------------------------------
    def add_model(self, model_id: str, base: str, adapter_path: str, job_id: str | None) -> None:
        """Register a servable fine-tune."""
        with self.sessions.begin() as session:
            session.merge(
                FineTunedModel(id=model_id, base_model=base, job_id=job_id, adapter_path=adapter_path, created_at=now())
            )

    def get_model(self, model_id: str) -> FineTunedModel | None:
        """A fine-tuned model or None."""
        with self.sessions.begin() as session:
            return session.get(FineTunedModel, model_id)

    def list_models(self) -> list[FineTunedModel]:
        """Fine-tuned models, oldest first."""
        with self.sessions.begin() as session:
            return list(session.scalars(select(FineTunedModel).order_by(FineTunedModel.created_at)))

    def delete_model(self, model_id: str) -> FineTunedModel | None:
        """Remove a fine-tuned model's record; return it (None if unknown)."""
        with self.sessions.begin() as session:
            record = session.get(FineTunedModel, model_id)
            if record is not None:
                session.delete(record)
            return record

    @staticmethod
    def _conditional(
        session: Session,
        job_id: str,
        source: Iterable[JobStatus],
        owner: str | None,
        extra: list | None = None,
        **values,
    ) -> bool:
        query = update(JobRecord).where(JobRecord.id == job_id, JobRecord.status.in_(list(source)), *(extra or []))
        if owner is not None:
            query = query.where(JobRecord.lease_owner == owner)
        result = session.execute(query.values(**values).execution_options(synchronize_session=False))
        return result.rowcount == 1

    @staticmethod
    def _set_fields(session: Session, job_id: str, fields: dict) -> None:
        assert "status" not in fields, "status changes go through transition()"
        session.execute(
            update(JobRecord)
            .where(JobRecord.id == job_id)
            .values(**fields)
            .execution_options(synchronize_session=False)
        )

    @staticmethod
    def _event(job_id: str, message: str, data: dict | None = None, level: str = "info") -> JobEvent:
        """An event row: ``type`` ``metrics`` when it carries ``data``, else ``message``."""
        return JobEvent(
            id=new_id("ftevent"),
            job_id=job_id,
            created_at=now(),
            level=level,
            message=message,
            type="metrics" if data else "message",
            data=data,
        )
