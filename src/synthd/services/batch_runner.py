"""The batch runner: runs batches' lines through ``OpenAIServing`` in the background, behind
interactive traffic.

One batch at a time, oldest first, each through ``validating → in_progress → finalizing →
completed``:

- **validating**: the input file is parsed line by line (``batch_lines``) and each model named is
  resolved; every bad line becomes a record of the error file at once. A batch fails only when its
  file cannot be read, has no request line, more than ``MAX_BATCH_REQUESTS``, or no runnable line.
- **in_progress**: runnable lines run in-process (no HTTP), at most ``max_in_flight`` at a time. A
  line is handed to the engine only once that engine has had no interactive sequence, waiting or
  running (its ``stats()`` less the runner's own lines), for ``quiet_s``, and with
  ``BATCH_PRIORITY``, so the scheduler admits interactive requests first: a batch fills idle
  capacity, never queues ahead of a user, and adds no line while users are being served (lines
  already running finish). The quiet period keeps lines from starting in the short gaps of a
  stream of requests, where their prefill would delay the next request's first token. Each answer
  (or error) is stored as the line's result in the same transaction as its count, so a batch
  ``in_progress`` at shutdown resumes after a restart with the lines that have no result yet. A transient refusal (``Overloaded``: a full
  queue, a full pool) is retried after its ``retry_after_s``.
- **cancel**: lines running are aborted, finished results are kept, and the batch ends
  ``cancelled`` with partial output and error files. Past ``expires_at`` the lines not yet run are
  written to the error file (``batch_expired``) and the batch ends ``expired``, as OpenAI does.
- **finalizing**: the results become the output file (every answered line, in input order) and
  the error file (if any line failed), stored like uploads with purpose ``batch_output``.

Output records follow OpenAI's batch output format: ``{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}``; a line that is not a well-formed request has
``response: null`` and ``error: {"code", "message"}``. Status codes and error bodies come from the
API's one mapper (``error_reply``, injected), so a line fails exactly as the endpoint would.
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import replace

from synthd.engine.protocol import BATCH_PRIORITY, Engine
from synthd.errors import InvalidRequest, Overloaded, SynthdError
from synthd.models.resolve import ModelNotFound
from synthd.protocol.openai import ChatCompletionRequest
from synthd.services.batch_lines import MAX_BATCH_REQUESTS, BatchLine, MalformedLine, parse_lines
from synthd.services.chat import OpenAIServing
from synthd.services.projects import Principal
from synthd.store.batches import BatchRecord, BatchStatus, BatchStore
from synthd.store.repository import Repository

log = logging.getLogger(__name__)

ErrorReply = Callable[[Exception], tuple[int, dict]]
"""The HTTP status and JSON body the API answers for an exception (``api.errors.error_reply``)."""

SUCCESS_STATUS = 200
"""``response.status_code`` of an answered line in OpenAI's batch output format."""
MAX_ATTEMPTS = 5
IDLE_POLL_S = 2.0
MAX_LISTED_ERRORS = 100


def _now() -> int:
    return int(time.time())


def _reap(running: set[asyncio.Task]) -> None:
    """Drop finished line tasks from ``running``, re-raising a fault of the runner's own (a line's
    failure is already its result)."""
    for task in [t for t in running if t.done()]:
        running.discard(task)
        task.result()


def batch_principal(batch: BatchRecord) -> Principal:
    """Who a batch's lines run as: its project (the models that project may use), or the operator
    for a batch created without a project (the server's ``--api-key``, auth off)."""
    return Principal(key_id=None, project=batch.project, is_admin=batch.project is None)


def _jsonl(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)


class BatchRunner:
    """Runs unfinished batches (see the module docstring).

    Args:
        store: the batches' rows and results. repo: input files in, output files out.
        serving: runs each line. error_reply: status and body for a failed line.
        max_in_flight: most lines running at once, over all batches.
        quiet_s: how long an engine must have been free of interactive requests before a line starts.
        gate_poll_s: how often a line waiting for that looks again (seconds).
    """

    def __init__(
        self,
        store: BatchStore,
        repo: Repository,
        serving: OpenAIServing,
        error_reply: ErrorReply,
        *,
        max_in_flight: int = 2,
        quiet_s: float = 2.0,
        gate_poll_s: float = 0.02,
    ) -> None:
        self.store = store
        self.repo = repo
        self.serving = serving
        self.error_reply = error_reply
        self.max_in_flight = max_in_flight
        self.quiet_s = quiet_s
        self.gate_poll_s = gate_poll_s
        self._wake = asyncio.Event()
        self._cancels: dict[str, asyncio.Event] = {}
        self._own: dict[Engine, int] = {}
        self._interactive_seen: weakref.WeakKeyDictionary[Engine, float] = weakref.WeakKeyDictionary()
        self._task: asyncio.Task | None = None

    # --- control, from the service and the app -----------------------------------------------------
    def start(self) -> None:
        """Start the background loop (resuming unfinished batches first)."""
        self._task = asyncio.create_task(self._run_forever())

    async def shutdown(self) -> None:
        """Stop the loop; running lines are aborted and keep no result, so they run again after a restart."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        """A batch was created: look for work now."""
        self._wake.set()

    def cancel(self, batch_id: str) -> None:
        """The batch was moved to ``cancelling``: abort its running lines now."""
        if (event := self._cancels.get(batch_id)) is not None:
            event.set()
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------------------
    async def _run_forever(self) -> None:
        while True:
            self._wake.clear()
            batches = await asyncio.to_thread(self.store.unfinished)
            for batch in batches:
                try:
                    await self._process(batch.id)
                except Exception as exc:  # a fault in one batch fails it, never the loop
                    log.exception("batch %s failed", batch.id)
                    await self._fail(batch.id, [{"code": "server_error", "message": f"{type(exc).__name__}: {exc}"}])
            if not batches:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)

    async def _process(self, batch_id: str) -> None:
        if (await self._get(batch_id)).status == BatchStatus.VALIDATING:
            await self._validate(await self._get(batch_id))
        if (batch := await self._get(batch_id)).status == BatchStatus.IN_PROGRESS:
            await self._run(batch)
        batch = await self._get(batch_id)
        if batch.status == BatchStatus.FINALIZING:
            await self._finish(batch, BatchStatus.FINALIZING, BatchStatus.COMPLETED, "completed_at")
        elif batch.status == BatchStatus.CANCELLING:
            await self._finish(batch, BatchStatus.CANCELLING, BatchStatus.CANCELLED, "cancelled_at")

    async def _get(self, batch_id: str) -> BatchRecord:
        batch = await asyncio.to_thread(self.store.get, batch_id)
        assert batch is not None, batch_id
        return batch

    # --- validating ----------------------------------------------------------------------------------
    async def _lines(self, batch: BatchRecord) -> list[BatchLine] | None:
        """The batch's parsed input, or None when the file is gone (the batch is failed)."""
        record = await asyncio.to_thread(self.repo.get_file, batch.input_file_id)
        if record is None:
            await self._fail(
                batch.id,
                [
                    {
                        "code": "file_not_found",
                        "param": "input_file_id",
                        "message": f"The input file '{batch.input_file_id}' was deleted.",
                    }
                ],
            )
            return None
        content = await asyncio.to_thread(self.repo.read_file, record)
        return await asyncio.to_thread(parse_lines, content, batch.endpoint)

    async def _validate(self, batch: BatchRecord) -> None:
        lines = await self._lines(batch)
        if lines is None:
            return
        if not lines:
            await self._fail(batch.id, [{"code": "empty_file", "message": "The input file has no request lines."}])
            return
        if len(lines) > MAX_BATCH_REQUESTS:
            await self._fail(
                batch.id,
                [
                    {
                        "code": "too_many_requests",
                        "message": f"The input file has {len(lines)} requests; a batch holds at most "
                        f"{MAX_BATCH_REQUESTS}.",
                    }
                ],
            )
            return
        missing = await self._missing_models(
            {line.request.model for line in lines if line.request is not None}, batch_principal(batch)
        )
        problems = [
            (line, line.problem or missing[line.request.model])
            for line in lines
            if line.problem is not None or line.request.model in missing
        ]
        if len(problems) == len(lines):
            await self._fail(
                batch.id, [self._error_item(line, problem) for line, problem in problems[:MAX_LISTED_ERRORS]]
            )
            return
        await asyncio.to_thread(self.store.delete_results, batch.id)  # a validation cut short by a restart
        model = next(line.request.model for line in lines if line.request is not None)
        await asyncio.to_thread(
            self.store.update,
            batch.id,
            total=len(lines),
            completed=0,
            failed=0,
            input_tokens=0,
            output_tokens=0,
            model=model,
        )
        await asyncio.to_thread(
            self.store.add_errors,
            batch.id,
            [(line.number, self._error_record(line, problem)) for line, problem in problems],
        )
        await asyncio.to_thread(
            self.store.transition, batch.id, (BatchStatus.VALIDATING,), BatchStatus.IN_PROGRESS, in_progress_at=_now()
        )

    async def _missing_models(self, models: set[str], principal: Principal) -> dict[str, Exception]:
        """The models among ``models`` this server cannot serve or ``principal`` may not use, with
        the error a request would get."""
        missing: dict[str, Exception] = {}
        for model in models:
            try:
                if self.serving.access is not None:
                    await self.serving.access.check(principal, model)
                await self.serving.pool.resolve(model)
            except (ModelNotFound, InvalidRequest) as exc:
                missing[model] = exc
        return missing

    def _error_item(self, line: BatchLine, problem: Exception) -> dict:
        """An entry of a failed batch's ``errors``."""
        _, body = self.error_reply(problem)
        error = body["error"]
        return {
            "code": error.get("code") or "invalid_request",
            "line": line.number,
            "message": error["message"],
            "param": error.get("param"),
        }

    # --- in progress ---------------------------------------------------------------------------------
    async def _run(self, batch: BatchRecord) -> None:
        cancelled = self._cancels.setdefault(batch.id, asyncio.Event())
        if (await self._get(batch.id)).status != BatchStatus.IN_PROGRESS:  # cancelled before the event existed
            cancelled.set()
        lines = await self._lines(batch)
        if lines is None:
            self._cancels.pop(batch.id, None)
            return
        done = await asyncio.to_thread(self.store.done_lines, batch.id)
        todo = [line for line in lines if line.request is not None and line.number not in done]
        principal = batch_principal(batch)
        cancel_waiter = asyncio.create_task(cancelled.wait())
        running: set[asyncio.Task] = set()
        expired = False
        try:
            for line in todo:
                while len(running) >= self.max_in_flight and not cancelled.is_set():
                    await asyncio.wait({*running, cancel_waiter}, return_when=asyncio.FIRST_COMPLETED)
                    _reap(running)
                if cancelled.is_set():
                    break
                if _now() >= batch.expires_at:
                    expired = True
                    break
                running.add(asyncio.create_task(self._run_line(batch.id, line, principal)))
            while running and not cancelled.is_set():
                await asyncio.wait({*running, cancel_waiter}, return_when=asyncio.FIRST_COMPLETED)
                _reap(running)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            cancel_waiter.cancel()
            self._cancels.pop(batch.id, None)
        if cancelled.is_set():
            return
        if expired:
            await self._expire(batch)
        else:
            await asyncio.to_thread(
                self.store.transition,
                batch.id,
                (BatchStatus.IN_PROGRESS,),
                BatchStatus.FINALIZING,
                finalizing_at=_now(),
            )

    async def _run_line(self, batch_id: str, line: BatchLine, principal: Principal) -> None:
        """Answer one line as ``principal`` and store its result (the error the endpoint would
        answer, when it fails)."""
        try:
            body, usage = await self._answer_with_retries(line, principal)
        except Exception as exc:  # a failure answering one line fails that line only
            if not isinstance(exc, SynthdError):
                log.exception("batch %s line %d failed", batch_id, line.number)
            await asyncio.to_thread(self.store.add_result, batch_id, line.number, False, self._error_record(line, exc))
            return
        await asyncio.to_thread(
            self.store.add_result,
            batch_id,
            line.number,
            True,
            self._record(line, SUCCESS_STATUS, body),
            usage["prompt_tokens"],
            usage["completion_tokens"],
        )

    async def _answer_with_retries(self, line: BatchLine, principal: Principal) -> tuple[dict, dict]:
        """``_answer``, again after ``retry_after_s`` while the server is transiently overloaded."""
        for _ in range(MAX_ATTEMPTS - 1):
            try:
                return await self._answer(line, principal)
            except Overloaded as exc:
                await asyncio.sleep(exc.retry_after_s)
        return await self._answer(line, principal)

    async def _answer(self, line: BatchLine, principal: Principal) -> tuple[dict, dict]:
        """The endpoint's JSON body for the line, and its usage."""
        request = line.request
        assert request is not None
        chat = isinstance(request, ChatCompletionRequest)
        prepared = await (
            self.serving.prepare_chat(request, principal=principal)
            if chat
            else self.serving.prepare_completion(request, principal=principal)
        )
        try:
            prepared.params = [replace(params, priority=BATCH_PRIORITY) for params in prepared.params]
            engine = prepared.lease.engine
            await self._gate(engine)
            self._own[engine] = self._own.get(engine, 0) + len(prepared.params)
            try:
                result = await (self.serving.chat(prepared) if chat else self.serving.completion(prepared))
            finally:
                self._own[engine] -= len(prepared.params)
                if not self._own[engine]:
                    del self._own[engine]
        finally:
            prepared.close()
        body = result.model_dump()
        return body, body["usage"]

    async def _gate(self, engine: Engine) -> None:
        """Wait until ``engine`` has run and queued no sequence but the runner's own for ``quiet_s``."""
        while True:
            now = time.monotonic()
            stats = engine.stats()
            if stats.waiting + stats.running > self._own.get(engine, 0):
                self._interactive_seen[engine] = now
            elif now - self._interactive_seen.get(engine, -self.quiet_s) >= self.quiet_s:
                return
            await asyncio.sleep(self.gate_poll_s)

    async def _expire(self, batch: BatchRecord) -> None:
        lines = await self._lines(batch)
        if lines is None:
            return
        done = await asyncio.to_thread(self.store.done_lines, batch.id)
        for line in lines:
            if line.number not in done:
                record = self._record(
                    line,
                    error={
                        "code": "batch_expired",
                        "message": "This request could not be executed before the completion window expired.",
                    },
                )
                await asyncio.to_thread(self.store.add_result, batch.id, line.number, False, record)
        await self._finish(await self._get(batch.id), BatchStatus.IN_PROGRESS, BatchStatus.EXPIRED, "expired_at")

    # --- records and endings -------------------------------------------------------------------------
    def _record(
        self, line: BatchLine, status_code: int | None = None, body: dict | None = None, error: dict | None = None
    ) -> dict:
        """One line of the output or error file, in OpenAI's batch output format."""
        response = (
            None
            if status_code is None
            else {"status_code": status_code, "request_id": f"req_{uuid.uuid4().hex}", "body": body}
        )
        return {
            "id": f"batch_req_{uuid.uuid4().hex[:24]}",
            "custom_id": line.custom_id,
            "response": response,
            "error": error,
        }

    def _error_record(self, line: BatchLine, problem: Exception) -> dict:
        if isinstance(problem, MalformedLine):
            return self._record(line, error={"code": problem.code, "message": problem.message})
        status, body = self.error_reply(problem)
        return self._record(line, status, body)

    async def _finish(self, batch: BatchRecord, source: BatchStatus, target: BatchStatus, time_field: str) -> None:
        """Write the output file (always) and the error file (when a line failed), then end the batch."""
        files = {}
        if batch.output_file_id is None:
            outputs = await asyncio.to_thread(self.store.results, batch.id, True)
            record = await asyncio.to_thread(
                self.repo.add_file, f"{batch.id}_output.jsonl", "batch_output", _jsonl(outputs), batch.project
            )
            files["output_file_id"] = record.id
        if batch.error_file_id is None and (errors := await asyncio.to_thread(self.store.results, batch.id, False)):
            record = await asyncio.to_thread(
                self.repo.add_file, f"{batch.id}_error.jsonl", "batch_output", _jsonl(errors), batch.project
            )
            files["error_file_id"] = record.id
        if files:
            await asyncio.to_thread(self.store.update, batch.id, **files)
        if await asyncio.to_thread(self.store.transition, batch.id, (source,), target, **{time_field: _now()}):
            await asyncio.to_thread(self.store.delete_results, batch.id)

    async def _fail(self, batch_id: str, errors: list[dict]) -> None:
        await asyncio.to_thread(
            self.store.transition,
            batch_id,
            (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING),
            BatchStatus.FAILED,
            failed_at=_now(),
            errors=errors,
        )
