"""The fine-tuning queue inside the API server, and the only writer of a job's status.

Each change of status is a conditional update (``Repository.transition``) that says whether it won,
so a cancel racing a success has exactly one winner. The API only sets ``cancel_requested`` /
``pause_requested``; workers only report (events, checkpoints, ``result.json`` / ``error.json`` and
their exit code); this scheduler turns all of that into statuses, through its rooms:

- ``validating_files``: the files are checked and ``auto`` hyperparameters resolved → ``queued``
  (``synthd.training.validation``).
- ``queued``: placed (``synthd.training.placement``; devices reserved by others count as busy), its
  devices reserved, claimed under this scheduler's lease → ``running``, and a worker started by the
  launcher (``synthd.training.launcher``) with ``CUDA_VISIBLE_DEVICES`` set to the reserved GPUs.
- ``running`` → ``succeeded``, ``cancelled``, ``paused`` or ``failed`` when the worker ends
  (``synthd.training.results``).
- ``paused`` → ``queued`` once the pause is lifted.

Only the scheduler holding the home's lock runs the queue, and a running job whose lease owner
died is recovered: it resumes from its newest checkpoint or fails with the reason
(``synthd.training.leader``).
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from synthd.environ import scrubbed_environ
from synthd.gpus.planner import PlacementPlanner
from synthd.gpus.selection import Placement
from synthd.store.files import sweep_partial
from synthd.store.models import JobStatus
from synthd.store.repository import Repository, now
from synthd.training.launcher import LocalLauncher, WorkerHandle, WorkerLauncher, stop_workers
from synthd.training.layout import JobLayout, latest_checkpoint
from synthd.training.leader import QueueLeader
from synthd.training.placement import place_job, visible_devices
from synthd.training.results import JobResults
from synthd.training.tracking import tracking_env
from synthd.training.validation import validate_job
from synthd.training.worker import PARENT_ENV

log = logging.getLogger(__name__)
S = JobStatus
TICK_S = 0.5
CANCEL_GRACE_S = 20.0
TRAINING_CREDENTIALS = ("WANDB_API_KEY",)
"""Secrets a worker itself uses (Weights & Biases logging); every other one is kept from workers."""


@dataclass
class Worker:
    """A running worker (a local process, or a Ray actor's on a cluster)."""

    job_id: str
    process: WorkerHandle
    cancel_seen_at: float | None = None


@dataclass
class Start:
    """A claimed job to launch: its environment for the worker and where it was placed."""

    job_id: str
    placement: Placement
    env: dict[str, str] = field(default_factory=dict)


class JobScheduler:
    """Runs the job queue of one ``$SYNTHD_HOME``.

    Args:
        repo: the database.
        home: ``$SYNTHD_HOME`` (job folders, adapters, files, the scheduler lock).
        models_dir: where base models are resolved (jobs record their base model's folder).
        planner: places jobs; its ``reservations`` hold the devices of running jobs.
        serving_busy: devices serving holds (the model pool's ``busy_devices``), read on the loop.
        max_concurrent: jobs trained at once.
        env: extra environment for workers, on top of the server's without its secrets (provider
            keys, tokens: ``synthd.environ``) but for ``TRAINING_CREDENTIALS``.
        launcher: starts workers (default: local processes with a standby worker;
            ``synthd.cluster.jobs.RayLauncher`` on a Ray cluster).
    """

    def __init__(
        self,
        repo: Repository,
        home: Path,
        *,
        models_dir: Path,
        planner: PlacementPlanner,
        serving_busy: Callable[[], set[str]] = set,
        max_concurrent: int = 1,
        env: dict[str, str] | None = None,
        launcher: WorkerLauncher | None = None,
    ) -> None:
        self.repo = repo
        self.home = home
        self.models_dir = models_dir
        self.planner = planner
        self.reservations = planner.reservations
        self.serving_busy = serving_busy
        self.max_concurrent = max_concurrent
        self.env = {**scrubbed_environ(keep=TRAINING_CREDENTIALS), **(env or {})}
        self.launcher = launcher or LocalLauncher(home / "training" / "standby.log")
        self.leader = QueueLeader(repo, home)
        self.owner = self.leader.owner
        self.results = JobResults(repo, home, self.owner)
        self._workers: dict[str, Worker] = {}
        self._waiting_for_devices: set[str] = set()
        self._trained = False

    # --- the loop ------------------------------------------------------------------------------
    def recover(self) -> None:
        """At start-up: remove uploads left half-written by a dead process, take the home's queue if
        no other live server holds it, and recover jobs whose owner died."""
        for path in sweep_partial(self.repo.files_dir):
            log.info("removed partial upload %s", path.name)
        self._lead()

    async def run_forever(self) -> None:
        """Tick until cancelled."""
        while True:
            try:
                await self.tick()
            except Exception:  # the queue outlives any single bad job
                log.exception("scheduler tick failed")
            await asyncio.sleep(TICK_S)

    async def tick(self) -> None:
        """One pass: database work in a thread, worker launches on the loop's thread (a worker's
        parent-death signal is tied to the thread that started it)."""
        starts = await asyncio.to_thread(self._step, set(self.serving_busy()))
        if self.leader.leading and self._trained:
            self.launcher.prepare(self._worker_env())
        for start in starts:
            self._launch(start)

    async def shutdown(self) -> None:
        """Stop workers and give up the queue; running jobs keep their status and are recovered
        (resumed from their newest checkpoint) by the next scheduler of this home."""
        handles = [worker.process for worker in self._workers.values()]
        await asyncio.gather(asyncio.to_thread(stop_workers, handles), asyncio.to_thread(self.launcher.close))
        self._workers.clear()
        self.leader.resign()

    def _step(self, serving_busy: set[str]) -> list[Start]:
        if not self._lead():
            return []
        if self.leader.renew_leases():
            self._recover_orphans()
        for job in self.repo.jobs_with_status(S.VALIDATING_FILES):
            self._trained = True
            validate_job(self.repo, self.results, job)
        for worker in list(self._workers.values()):
            if worker.process.poll() is not None:
                self._reap(worker)
        self._apply_requests()
        return self._claim(serving_busy)

    def _lead(self) -> bool:
        """Whether this scheduler runs the queue; orphans are recovered when it just took it."""
        was_leading = self.leader.leading
        if not self.leader.lead():
            return False
        if not was_leading:
            self._recover_orphans()
        return True

    def _recover_orphans(self) -> None:
        for job in self.leader.orphans():
            self.results.recover_orphan(job)

    # --- requests (cancel, pause, resume) ------------------------------------------------------
    def _apply_requests(self) -> None:
        for job in self.repo.jobs_with_status(S.QUEUED, S.PAUSED):
            if job.cancel_requested:
                self.repo.transition(job.id, [job.status], S.CANCELLED, "Fine-tuning job cancelled", finished_at=now())
            elif job.status == S.QUEUED and job.pause_requested:
                self.repo.transition(job.id, [S.QUEUED], S.PAUSED, "Fine-tuning job paused")
            elif job.status == S.PAUSED and not job.pause_requested:
                self.repo.transition(job.id, [S.PAUSED], S.QUEUED, "Fine-tuning job resumed; queued")
        for worker in self._workers.values():
            cancel, _ = self.repo.job_flags(worker.job_id)
            if not cancel:
                continue
            worker.cancel_seen_at = worker.cancel_seen_at or time.monotonic()
            if time.monotonic() - worker.cancel_seen_at > CANCEL_GRACE_S:
                worker.process.kill()

    # --- starting ------------------------------------------------------------------------------
    def _claim(self, serving_busy: set[str]) -> list[Start]:
        starts: list[Start] = []
        for job in self.repo.jobs_with_status(S.QUEUED):
            if len(self._workers) + len(starts) >= self.max_concurrent:
                break
            if job.cancel_requested or job.pause_requested or self._folder_busy(job.id):
                continue
            try:
                placement = place_job(self.planner, job, self.models_dir, serving_busy)
            except Exception as exc:  # noqa: BLE001  any fault in placing one job fails that job alone
                if getattr(exc, "code", None) == "gpu_busy":
                    if job.id not in self._waiting_for_devices:
                        self._waiting_for_devices.add(job.id)
                        self.repo.add_event(job.id, f"Waiting for devices: {getattr(exc, 'message', exc)}")
                    continue
                self.results.fail(
                    job.id,
                    getattr(exc, "code", None) or "placement_failed",
                    f"Cannot place the job: {getattr(exc, 'message', exc)}",
                    "gpu_preference",
                    source=S.QUEUED,
                )
                continue
            self._waiting_for_devices.discard(job.id)
            self.reservations.reserve(job.id, {d.key for d in placement.gpus})
            layout = JobLayout(self.home, job.id)
            resume = latest_checkpoint(layout.trainer_dir)
            message = f"Resuming from {resume.name}" if resume else "Fine-tuning job started"
            if not self.repo.claim(
                job.id, self.owner, started_at=job.started_at or now(), attempts=job.attempts + 1, gpu=placement.label
            ):
                self.reservations.release(job.id)
                continue
            self.repo.add_event(job.id, f"{message} on {placement.label}")
            layout.folder.mkdir(parents=True, exist_ok=True)
            layout.result.unlink(missing_ok=True)
            layout.error.unlink(missing_ok=True)
            env = {"CUDA_VISIBLE_DEVICES": visible_devices(placement), **tracking_env(layout, job.integrations)}
            starts.append(Start(job.id, placement, env))
        return starts

    def _folder_busy(self, job_id: str) -> bool:
        lock = FileLock(JobLayout(self.home, job_id).lock)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    def _worker_env(self) -> dict[str, str]:
        """The environment every worker starts from: the server's without its secrets, and this
        process's pid (so a worker dies with it)."""
        return {**self.env, PARENT_ENV: str(os.getpid())}

    def _launch(self, start: Start) -> None:
        layout = JobLayout(self.home, start.job_id)
        try:
            process = self.launcher.launch(
                start.job_id,
                {**self._worker_env(), **start.env},
                layout.log,
                start.placement.label,
                start.placement.node,
            )
        except OSError as exc:
            self.reservations.release(start.job_id)
            self.results.fail(
                start.job_id, "worker_start_failed", f"Could not start the training worker: {exc}", owner=self.owner
            )
            return
        self._workers[start.job_id] = Worker(start.job_id, process)
        self.repo.set_fields(start.job_id, worker_pid=process.pid)

    # --- ending --------------------------------------------------------------------------------
    def _reap(self, worker: Worker) -> None:
        del self._workers[worker.job_id]
        self.reservations.release(worker.job_id)
        code = worker.process.returncode
        assert code is not None
        self.results.reap(worker.job_id, code)
