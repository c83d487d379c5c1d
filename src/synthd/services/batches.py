"""The Batch API: create, retrieve, list and cancel batches (platform.openai.com/docs/api-reference/batch).

Creating a batch checks the request (endpoint, window, input file) and stores it ``validating``;
the ``BatchRunner`` does the rest in the background. Cancelling moves an unfinished batch to
``cancelling``; the runner aborts its running lines and ends it ``cancelled``.
"""

import asyncio
import time

from synthd.errors import Conflict, InvalidRequest, NotFound
from synthd.protocol.batches import (
    BATCH_ENDPOINTS,
    Batch,
    BatchCreate,
    BatchErrorItem,
    BatchErrors,
    BatchList,
    BatchRequestCounts,
    BatchUsage,
)
from synthd.services.batch_runner import BatchRunner
from synthd.services.files import file_not_found
from synthd.services.projects import OPERATOR, Principal, visible_or_raise
from synthd.store.batches import BatchRecord, BatchStatus, BatchStore, new_batch_id
from synthd.store.repository import Repository

COMPLETION_WINDOW = "24h"
COMPLETION_WINDOW_S = 24 * 3600


def batch_object(record: BatchRecord) -> Batch:
    """Wire form of a stored batch (``usage`` once a line has been answered)."""
    tokens = record.input_tokens + record.output_tokens
    return Batch(
        id=record.id,
        endpoint=record.endpoint,
        input_file_id=record.input_file_id,
        completion_window=record.completion_window,
        status=record.status,
        errors=BatchErrors(data=[BatchErrorItem(**e) for e in record.errors]) if record.errors else None,
        output_file_id=record.output_file_id,
        error_file_id=record.error_file_id,
        created_at=record.created_at,
        in_progress_at=record.in_progress_at,
        expires_at=record.expires_at,
        finalizing_at=record.finalizing_at,
        completed_at=record.completed_at,
        failed_at=record.failed_at,
        expired_at=record.expired_at,
        cancelling_at=record.cancelling_at,
        cancelled_at=record.cancelled_at,
        request_counts=BatchRequestCounts(total=record.total, completed=record.completed, failed=record.failed),
        model=record.model,
        metadata=record.batch_metadata,
        usage=BatchUsage(input_tokens=record.input_tokens, output_tokens=record.output_tokens, total_tokens=tokens)
        if tokens
        else None,
    )


def batch_not_found(batch_id: str) -> NotFound:
    """An unknown batch id."""
    return NotFound(f"No batch found with id '{batch_id}'.", param="batch_id", code="batch_not_found")


class BatchService:
    """Batches for the routes.

    Args:
        store: the batch rows. repo: uploaded files (the input file is checked here).
        runner: the background runner, told about new and cancelled batches.
    """

    def __init__(self, store: BatchStore, repo: Repository, runner: BatchRunner) -> None:
        self.store = store
        self.repo = repo
        self.runner = runner

    async def create(self, body: BatchCreate, principal: Principal = OPERATOR) -> Batch:
        """Store a new batch (``validating``), owned by ``principal``'s project, and wake the runner.

        Raises:
            InvalidRequest: an endpoint synthd does not batch, a window other than ``24h``, an input
                file whose purpose is not ``batch``. NotFound: unknown input file, or one
                ``principal`` may not see.
        """
        if body.endpoint not in BATCH_ENDPOINTS:
            raise InvalidRequest(
                f"Invalid value for 'endpoint': '{body.endpoint}'; synthd batches run {' and '.join(BATCH_ENDPOINTS)}.",
                param="endpoint",
                code="invalid_value",
            )
        if body.completion_window != COMPLETION_WINDOW:
            raise InvalidRequest(
                f"Invalid value for 'completion_window': '{body.completion_window}'; only "
                f"'{COMPLETION_WINDOW}' is supported.",
                param="completion_window",
                code="invalid_value",
            )
        file = visible_or_raise(
            await asyncio.to_thread(self.repo.get_file, body.input_file_id),
            principal,
            file_not_found(body.input_file_id, "input_file_id"),
        )
        if file.purpose != "batch":
            raise InvalidRequest(
                f"The input file '{file.id}' has purpose '{file.purpose}'; upload it with purpose 'batch'.",
                param="input_file_id",
                code="invalid_value",
            )
        now = int(time.time())
        record = BatchRecord(
            id=new_batch_id(),
            endpoint=body.endpoint,
            input_file_id=file.id,
            completion_window=body.completion_window,
            status=BatchStatus.VALIDATING,
            batch_metadata=body.metadata,
            total=0,
            completed=0,
            failed=0,
            input_tokens=0,
            output_tokens=0,
            created_at=now,
            created_ns=time.time_ns(),
            expires_at=now + COMPLETION_WINDOW_S,
            project=principal.project,
        )
        await asyncio.to_thread(self.store.add, record)
        self.runner.wake()
        return batch_object(record)

    async def _get(self, batch_id: str, principal: Principal) -> BatchRecord:
        return visible_or_raise(await asyncio.to_thread(self.store.get, batch_id), principal, batch_not_found(batch_id))

    async def retrieve(self, batch_id: str, principal: Principal = OPERATOR) -> Batch:
        """One batch.

        Raises:
            NotFound: unknown id, or a batch ``principal`` may not see.
        """
        return batch_object(await self._get(batch_id, principal))

    async def list(self, after: str | None, limit: int, principal: Principal = OPERATOR) -> BatchList:
        """Batches ``principal`` may see, newest first, after the batch id ``after``."""
        records, more = await asyncio.to_thread(self.store.page, after, limit, principal.scope)
        data = [batch_object(r) for r in records]
        return BatchList(
            data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None, has_more=more
        )

    async def cancel(self, batch_id: str, principal: Principal = OPERATOR) -> Batch:
        """Cancel a batch that is ``validating`` or ``in_progress`` (one already ``cancelling`` or
        ``finalizing`` is returned as it is).

        Raises:
            NotFound: unknown id, or a batch ``principal`` may not see. Conflict: the batch has
                already ended.
        """
        await self._get(batch_id, principal)
        if await asyncio.to_thread(
            self.store.transition,
            batch_id,
            (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS),
            BatchStatus.CANCELLING,
            cancelling_at=int(time.time()),
        ):
            self.runner.cancel(batch_id)
        record = await asyncio.to_thread(self.store.get, batch_id)
        assert record is not None
        if record.status not in (BatchStatus.CANCELLING, BatchStatus.FINALIZING):
            raise Conflict(
                f"Cannot cancel a batch with status '{record.status}'.", param="batch_id", code="batch_not_cancellable"
            )
        return batch_object(record)
