"""Batches (OpenAI's Batch API) in the database: the batch rows and the per-line results.

A batch's results are rows of ``batch_results`` until it ends: one per input line (``line``, its
1-based number in the input file), holding the line's OpenAI output record and whether it goes to
the output file (``ok``) or the error file. A restart resumes a batch by skipping the lines that
have a row. When the batch ends, the rows become the output and error files and are deleted.

Status changes are conditional updates (``transition``): the batch runner is the only writer of
``status`` except ``cancel``, which moves an unfinished batch to ``cancelling``. Times are Unix
seconds, as in OpenAI's objects.
"""

import time
import uuid
from enum import StrEnum

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String, UniqueConstraint, delete, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from synthd.store.base import Base
from synthd.store.pagination import newest_first


class BatchStatus(StrEnum):
    """OpenAI's batch statuses. ``validating → in_progress → finalizing → completed``; ``failed``
    (the input is unusable), ``expired`` (past ``expires_at``), ``cancelling → cancelled``."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


UNFINISHED = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING)
"""Statuses the runner still has work in (resumed after a restart)."""


class BatchRecord(Base):
    """A batch (``batch_…``) in OpenAI's shape; ``total``/``completed``/``failed`` are its
    ``request_counts`` and ``input_tokens``/``output_tokens`` its ``usage``."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    model: Mapped[str | None] = mapped_column(String(512), nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    errors: Mapped[list | None] = mapped_column(JSON, nullable=True)
    batch_metadata: Mapped[dict | None] = mapped_column("metadata", JSON, nullable=True)
    project: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[int] = mapped_column(Integer)
    created_ns: Mapped[int] = mapped_column(BigInteger, index=True, default=time.time_ns)
    expires_at: Mapped[int] = mapped_column(Integer)
    in_progress_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finalizing_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completed_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failed_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    expired_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancelling_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cancelled_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class BatchResult(Base):
    """The outcome of one input line: its output record (OpenAI's batch output line) and whether
    it belongs in the output file (``ok``) or the error file."""

    __tablename__ = "batch_results"
    __table_args__ = (UniqueConstraint("batch_id", "line"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    line: Mapped[int] = mapped_column(Integer)
    ok: Mapped[bool] = mapped_column(Boolean)
    record: Mapped[dict] = mapped_column(JSON)


def new_batch_id() -> str:
    """``batch_`` + 24 hex characters, like OpenAI's batch ids."""
    return f"batch_{uuid.uuid4().hex[:24]}"


class BatchStore:
    """Data access for batches; every method is one short transaction (see the module docstring)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def add(self, batch: BatchRecord) -> BatchRecord:
        """Insert a new batch."""
        with self.sessions.begin() as session:
            session.add(batch)
        return batch

    def get(self, batch_id: str) -> BatchRecord | None:
        """A batch or None."""
        with self.sessions.begin() as session:
            return session.get(BatchRecord, batch_id)

    def page(self, after: str | None, limit: int, project: str | None = None) -> tuple[list[BatchRecord], bool]:
        """Batches newest first, after the cursor ``after`` (a batch id), only ``project``'s when
        given; returns (page, has_more)."""
        query = select(BatchRecord)
        if project is not None:
            query = query.where(BatchRecord.project == project)
        with self.sessions.begin() as session:
            return newest_first(session, query, (BatchRecord.created_ns, BatchRecord.id), after, limit)

    def unfinished(self) -> list[BatchRecord]:
        """Batches the runner still has work in, oldest first (the order they run in)."""
        with self.sessions.begin() as session:
            query = select(BatchRecord).where(BatchRecord.status.in_(UNFINISHED)).order_by(BatchRecord.created_ns)
            return list(session.scalars(query))

    def transition(self, batch_id: str, sources: tuple[BatchStatus, ...], target: BatchStatus, **fields) -> bool:
        """Set ``status`` to ``target`` (and ``fields``) only if it is one of ``sources``; True if it was."""
        with self.sessions.begin() as session:
            result = session.execute(
                update(BatchRecord)
                .where(BatchRecord.id == batch_id, BatchRecord.status.in_(sources))
                .values(status=target, **fields)
            )
            return result.rowcount == 1

    def update(self, batch_id: str, **fields) -> None:
        """Set fields that are not the status (counts, file ids, errors)."""
        with self.sessions.begin() as session:
            session.execute(update(BatchRecord).where(BatchRecord.id == batch_id).values(**fields))

    def add_result(
        self, batch_id: str, line: int, ok: bool, record: dict, input_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        """Record one line's outcome and count it (``completed`` or ``failed``, and its tokens) in
        the same transaction."""
        counter = BatchRecord.completed if ok else BatchRecord.failed
        with self.sessions.begin() as session:
            session.add(BatchResult(batch_id=batch_id, line=line, ok=ok, record=record))
            session.execute(
                update(BatchRecord)
                .where(BatchRecord.id == batch_id)
                .values(
                    {
                        counter: counter + 1,
                        BatchRecord.input_tokens: BatchRecord.input_tokens + input_tokens,
                        BatchRecord.output_tokens: BatchRecord.output_tokens + output_tokens,
                    }
                )
            )

    def add_errors(self, batch_id: str, records: list[tuple[int, dict]]) -> None:
        """Record many failed lines (``(line, record)`` pairs) and count them, in one transaction."""
        with self.sessions.begin() as session:
            session.add_all(
                [BatchResult(batch_id=batch_id, line=line, ok=False, record=record) for line, record in records]
            )
            session.execute(
                update(BatchRecord).where(BatchRecord.id == batch_id).values(failed=BatchRecord.failed + len(records))
            )

    def done_lines(self, batch_id: str) -> set[int]:
        """Line numbers that already have a result."""
        with self.sessions.begin() as session:
            return set(session.scalars(select(BatchResult.line).where(BatchResult.batch_id == batch_id)))

    def results(self, batch_id: str, ok: bool) -> list[dict]:
        """Output records (``ok``) or error records, in input order."""
        with self.sessions.begin() as session:
            query = (
                select(BatchResult.record)
                .where(BatchResult.batch_id == batch_id, BatchResult.ok == ok)
                .order_by(BatchResult.line)
            )
            return list(session.scalars(query))

    def delete_results(self, batch_id: str) -> None:
        """Drop a finished batch's result rows (its files hold them now)."""
        with self.sessions.begin() as session:
            session.execute(delete(BatchResult).where(BatchResult.batch_id == batch_id))
