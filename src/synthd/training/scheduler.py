"""The fine-tuning queue inside the API server: validates files, starts worker processes up to a
concurrency limit, notices crashed workers, enforces cancels, and recovers after a restart.

Job statuses: ``validating_files → queued → running → succeeded | failed | cancelled``.
"""

import asyncio
import logging
import sys
import time
from pathlib import Path

from synthd.environ import scrubbed_environ
from synthd.store.repository import Repository, now
from synthd.training.data import DataFormatError, load_jsonl
from synthd.training.runner import latest_checkpoint

log = logging.getLogger(__name__)
TICK_S = 0.5
CANCEL_GRACE_S = 20.0
STDERR_TAIL_CHARS = 2000
TRAINING_CREDENTIALS = ("WANDB_API_KEY",)
"""Secrets a worker itself uses (Weights & Biases logging); every other one is kept from workers."""


class JobScheduler:
    """Owns worker processes. They get the server's environment without its secrets (provider keys,
    tokens: ``synthd.environ``) but for ``TRAINING_CREDENTIALS``, plus ``env``."""

    def __init__(self, repo: Repository, work_dir: Path, *, max_concurrent: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.repo = repo
        self.work_dir = work_dir
        self.max_concurrent = max_concurrent
        self.env = {**scrubbed_environ(keep=TRAINING_CREDENTIALS), **(env or {})}
        self._workers: dict[str, asyncio.subprocess.Process] = {}
        self._stderr: dict[str, asyncio.Task[str]] = {}
        self._cancel_seen: dict[str, float] = {}

    def recover(self) -> None:
        """After a restart: a job left ``running`` resumes from its newest checkpoint, or fails."""
        for job in self.repo.jobs_with_status("running"):
            checkpoint = latest_checkpoint(self.work_dir / job.id)
            if checkpoint is not None:
                self.repo.update_job(job.id, f"Server restarted: job re-queued to resume from {checkpoint.name}",
                                     status="queued")
            else:
                self.repo.update_job(job.id, "Server restarted before the first checkpoint; the job cannot resume",
                                     status="failed", finished_at=now(), error={
                                         "code": "server_restarted", "param": None,
                                         "message": "The server restarted while the job was running and no checkpoint "
                                                    "had been saved yet; create the job again."})

    async def run_forever(self) -> None:
        """Tick until cancelled."""
        while True:
            try:
                await self.tick()
            except Exception:  # the queue must outlive any single bad job
                log.exception("scheduler tick failed")
            await asyncio.sleep(TICK_S)

    async def tick(self) -> None:
        """One pass: validate, reap finished workers, enforce cancels, start queued jobs."""
        for job in self.repo.jobs_with_status("validating_files"):
            await asyncio.to_thread(self._validate, job.id)
        for job_id, process in list(self._workers.items()):
            if process.returncode is not None:
                await self._reap(job_id, process)
        self._enforce_cancels()
        for job in self.repo.jobs_with_status("queued"):
            if len(self._workers) >= self.max_concurrent:
                break
            await self._start(job.id)

    async def shutdown(self) -> None:
        """Stop workers; their jobs stay ``running`` and are recovered at the next start."""
        for process in self._workers.values():
            if process.returncode is None:
                process.terminate()
        for process in self._workers.values():
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                process.kill()
        self._workers.clear()
        self._stderr.clear()

    def _validate(self, job_id: str) -> None:
        job = self.repo.get_job(job_id)
        if job is None or job.status != "validating_files":
            return
        method = job.method["type"]
        for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            if file_id is None:
                continue
            record = self.repo.get_file(file_id)
            if record is None:
                self._fail(job_id, "invalid_file", f"{param} {file_id} was deleted", param)
                return
            try:
                load_jsonl(self.repo.read_file(record), method)
            except DataFormatError as exc:
                self._fail(job_id, f"invalid_{param}", f"{param} {file_id} ({record.filename}): {exc}", param)
                return
        self.repo.update_job(job_id, "Files validated; job queued", status="queued")

    def _fail(self, job_id: str, code: str, message: str, param: str | None = None) -> None:
        self.repo.update_job(job_id, message, status="failed", finished_at=now(),
                             error={"code": code, "message": message, "param": param})

    async def _start(self, job_id: str) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "synthd.training.worker", job_id, env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self.repo.update_job(job_id, status="running", started_at=self.repo.get_job(job_id).started_at or now())
        self._workers[job_id] = process
        self._stderr[job_id] = asyncio.create_task(self._stderr_tail(process))

    @staticmethod
    async def _stderr_tail(process: asyncio.subprocess.Process) -> str:
        assert process.stderr is not None
        tail = b""
        async for line in process.stderr:
            tail = (tail + line)[-STDERR_TAIL_CHARS:]
        return tail.decode(errors="replace")

    async def _reap(self, job_id: str, process: asyncio.subprocess.Process) -> None:
        del self._workers[job_id]
        self._cancel_seen.pop(job_id, None)
        stderr = await self._stderr.pop(job_id)
        job = self.repo.get_job(job_id)
        if job is None or job.status in ("succeeded", "failed", "cancelled"):
            return
        if job.cancel_requested:
            self.repo.update_job(job_id, "Fine-tuning job cancelled", status="cancelled", finished_at=now())
            return
        tail = stderr.strip().splitlines()[-3:]
        reason = f"training worker exited with code {process.returncode}" + (f": {' | '.join(tail)}" if tail else "")
        self._fail(job_id, "worker_crashed", reason)

    def _enforce_cancels(self) -> None:
        for job_id, process in self._workers.items():
            job = self.repo.get_job(job_id)
            if job is None or not job.cancel_requested or process.returncode is not None:
                continue
            first_seen = self._cancel_seen.setdefault(job_id, time.monotonic())
            if time.monotonic() - first_seen > CANCEL_GRACE_S:
                process.kill()
