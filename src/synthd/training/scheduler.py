"""The fine-tuning queue inside the API server: validates files, starts workers up to a
concurrency limit (through a ``WorkerLauncher``: local processes, or Ray actors on a cluster),
notices crashed workers, enforces cancels, and recovers after a restart.

Job statuses: ``validating_files → queued → running → succeeded | failed | cancelled``.
"""

import asyncio
import logging
import os
import subprocess
import time
from pathlib import Path

from synthd.store.repository import Repository, now
from synthd.training.data import DataFormatError, load_jsonl
from synthd.training.launcher import LocalLauncher, WorkerHandle, WorkerLauncher
from synthd.training.runner import latest_checkpoint

log = logging.getLogger(__name__)
TICK_S = 0.5
CANCEL_GRACE_S = 20.0
STDERR_TAIL_CHARS = 2000


class JobScheduler:
    """Owns workers. ``env`` is passed to them (``SYNTHD_HOME``, database URL, ...); ``launcher``
    starts them (default: local processes)."""

    def __init__(self, repo: Repository, work_dir: Path, *, max_concurrent: int = 1,
                 env: dict[str, str] | None = None, launcher: WorkerLauncher | None = None) -> None:
        self.repo = repo
        self.work_dir = work_dir
        self.max_concurrent = max_concurrent
        self.env = {**os.environ, **(env or {})}
        self.launcher = launcher or LocalLauncher()
        self._workers: dict[str, WorkerHandle] = {}
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
            if process.poll() is not None:
                await self._reap(job_id, process)
        self._enforce_cancels()
        for job in self.repo.jobs_with_status("queued"):
            if len(self._workers) >= self.max_concurrent:
                break
            await self._start(job.id)

    async def shutdown(self) -> None:
        """Stop workers; their jobs stay ``running`` and are recovered at the next start."""
        for process in self._workers.values():
            if process.poll() is None:
                process.terminate()
        for process in self._workers.values():
            try:
                await asyncio.to_thread(process.wait, 15)
            except subprocess.TimeoutExpired:
                process.kill()
        self._workers.clear()

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

    def _log_path(self, job_id: str) -> Path:
        return self.work_dir / "logs" / f"{job_id}.log"

    async def _start(self, job_id: str) -> None:
        job = self.repo.get_job(job_id)
        process = self.launcher.launch(job_id, self.env, self._log_path(job_id), job.gpu or "cpu")
        self.repo.update_job(job_id, status="running", started_at=job.started_at or now())
        self._workers[job_id] = process

    def _stderr_tail(self, job_id: str) -> str:
        try:
            with open(self._log_path(job_id), "rb") as log_file:
                log_file.seek(max(0, log_file.seek(0, os.SEEK_END) - STDERR_TAIL_CHARS))
                return log_file.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    async def _reap(self, job_id: str, process: WorkerHandle) -> None:
        del self._workers[job_id]
        self._cancel_seen.pop(job_id, None)
        stderr = self._stderr_tail(job_id)
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
            if job is None or not job.cancel_requested or process.poll() is not None:
                continue
            first_seen = self._cancel_seen.setdefault(job_id, time.monotonic())
            if time.monotonic() - first_seen > CANCEL_GRACE_S:
                process.kill()
