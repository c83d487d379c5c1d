"""The fine-tuning queue inside the API server, and the only writer of a job's status.

Each change of status is a conditional update (``Repository.transition``) that says whether it won,
so a cancel racing a success has exactly one winner. The API only sets ``cancel_requested`` /
``pause_requested``; workers only report (events, checkpoints, ``result.json`` / ``error.json`` and
their exit code); this scheduler turns all of that into statuses:

- ``validating_files``: the files are checked (any exception fails that job alone, with its
  reason) and ``auto`` hyperparameters resolved → ``queued``.
- ``queued``: placed with ``select_placement`` (devices reserved by others count as busy), its
  devices reserved, claimed under this scheduler's lease → ``running``, and a worker started with
  ``CUDA_VISIBLE_DEVICES`` set to the reserved GPUs.
- ``running`` → ``succeeded`` (the ``ft:`` model, kept checkpoints and the result file registered in
  the same transaction), ``cancelled``, ``paused`` or ``failed`` when the worker ends.
- ``paused`` → ``queued`` once the pause is lifted.

One scheduler per ``$SYNTHD_HOME`` runs the queue: the one holding the home's lock file
(``scheduler.lock``; another server on the same home serves the API and waits for the lock). Each
running job also carries a lease in the database (``lease_owner`` = ``host:pid:nonce``, heartbeat
every ``HEARTBEAT_S``); a running job is recovered only when its owner is dead (its pid gone on
this host, or no heartbeat for ``LEASE_TTL_S``): it resumes from its newest checkpoint or fails
with the reason.
"""

import asyncio
import csv
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from synthd.environ import scrubbed_environ
from synthd.gpus.planner import PlacementPlanner
from synthd.gpus.selection import Placement
from synthd.gpus.spec import parse_gpu_preference
from synthd.models.ids import FineTuneId
from synthd.store.files import sweep_partial, write_atomic
from synthd.store.models import FileRecord, JobRecord, JobStatus
from synthd.store.repository import NewModel, Repository, new_id, now
from synthd.training.config import DEFAULT_N_CHECKPOINTS, Hyperparameters
from synthd.training.data import load_jsonl
from synthd.training.launcher import LocalLauncher, WorkerHandle, WorkerLauncher
from synthd.training.layout import JobLayout, latest_checkpoint
from synthd.training.tracking import tracking_env
from synthd.training.worker import EXIT_FOLDER_BUSY, PARENT_ENV, model_path

log = logging.getLogger(__name__)
S = JobStatus
TICK_S = 0.5
CANCEL_GRACE_S = 20.0
HEARTBEAT_S = 5.0
LEASE_TTL_S = 30.0
LOG_TAIL_BYTES = 4096
STANDBY_RETRY_S = 30.0
RESULT_PURPOSE = "fine-tune-results"
STEP_METRICS_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy")
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
    env: dict[str, str] = field(default_factory=dict)
    placement: Placement | None = None


def log_tail(path: Path, lines: int = 3, limit_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last ``lines`` non-empty lines of a log within its last ``limit_bytes`` bytes, each cut to
    300 characters (lines of any length are fine: the file is read from the end, never by line)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - limit_bytes))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    kept = [line.strip()[:300] for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


def exit_reason(returncode: int) -> str:
    """``exited with code 3`` or ``was killed by signal SIGKILL``."""
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def step_metrics_csv(events: list[dict]) -> bytes:
    """OpenAI's ``step_metrics.csv`` from metrics events' data (the newest value per step wins, so
    steps repeated after a resume are counted once)."""
    rows: dict[int, dict] = {}
    for data in events:
        if "step" not in data or not ({"train_loss", "valid_loss"} & data.keys()):
            continue
        row = rows.setdefault(int(data["step"]), {"step": int(data["step"])})
        for source, target in (
            ("train_loss", "train_loss"),
            ("train_mean_token_accuracy", "train_accuracy"),
            ("valid_loss", "valid_loss"),
            ("valid_mean_token_accuracy", "valid_accuracy"),
        ):
            if source in data:
                row[target] = data[source]
    out = io.StringIO()
    writer = csv.DictWriter(out, STEP_METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[step] for step in sorted(rows))
    return out.getvalue().encode()


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
        launcher: starts workers (default: local processes; ``synthd.cluster.jobs.RayLauncher`` on a
            Ray cluster).
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
        self.launcher = launcher or LocalLauncher()
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leader = False
        self._home_lock = FileLock(home / "scheduler.lock", thread_local=False)
        self._workers: dict[str, Worker] = {}
        self._waiting_for_devices: set[str] = set()
        self._heartbeat_at = 0.0
        self._standby: subprocess.Popen | None = None
        self._standby_started = -STANDBY_RETRY_S
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
        if self.leader and self._trained and isinstance(self.launcher, LocalLauncher):
            self._keep_standby()
        for start in starts:
            self._launch(start)

    async def shutdown(self) -> None:
        """Stop workers and give up the queue; running jobs keep their status and are recovered
        (resumed from their newest checkpoint) by the next scheduler of this home."""
        workers = list(self._workers.values())
        if self._standby is not None:
            workers.append(Worker("standby", self._standby))
            self._standby = None
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.terminate()
        await asyncio.to_thread(self._wait_for, workers)
        self._workers.clear()
        if self.leader:
            self._home_lock.release()
            self.leader = False

    @staticmethod
    def _wait_for(workers: list[Worker]) -> None:
        for worker in workers:
            try:
                worker.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()

    def _step(self, serving_busy: set[str]) -> list[Start]:
        if not self._lead():
            return []
        if time.monotonic() - self._heartbeat_at >= HEARTBEAT_S:
            self.repo.heartbeat(self.owner)
            self._heartbeat_at = time.monotonic()
            self._recover_orphans()
        for job in self.repo.jobs_with_status(S.VALIDATING_FILES):
            self._trained = True
            self._validate(job)
        for worker in list(self._workers.values()):
            if worker.process.poll() is not None:
                self._reap(worker)
        self._apply_requests()
        return self._claim(serving_busy)

    def _lead(self) -> bool:
        if not self.leader:
            try:
                self._home_lock.acquire(timeout=0)
            except Timeout:
                return False
            self.leader = True
            log.info("scheduler %s runs the job queue of %s", self.owner, self.home)
            self._recover_orphans()
        return True

    # --- recovery ------------------------------------------------------------------------------
    def _owner_dead(self, job: JobRecord) -> bool:
        if job.lease_owner is None or job.lease_heartbeat_at is None:
            return True
        if time.time() - job.lease_heartbeat_at > LEASE_TTL_S:
            return True
        host, _, rest = job.lease_owner.partition(":")
        pid = rest.partition(":")[0]
        if host != self.host or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _recover_orphans(self) -> None:
        for job in self.repo.jobs_with_status(S.RUNNING):
            if job.lease_owner == self.owner or not self._owner_dead(job):
                continue
            owner = job.lease_owner
            checkpoint = latest_checkpoint(JobLayout(self.home, job.id).trainer_dir)
            if job.cancel_requested:
                self.repo.transition(
                    job.id,
                    [S.RUNNING],
                    S.CANCELLED,
                    "Fine-tuning job cancelled",
                    owner=owner,
                    finished_at=now(),
                    lease_owner=None,
                )
            elif checkpoint is not None:
                target = S.PAUSED if job.pause_requested else S.QUEUED
                self.repo.transition(
                    job.id,
                    [S.RUNNING],
                    target,
                    f"Server restarted: job re-queued to resume from {checkpoint.name}",
                    owner=owner,
                    lease_owner=None,
                    worker_pid=None,
                )
            else:
                self._fail(
                    job.id,
                    "server_restarted",
                    "The server running this job stopped before its first "
                    "checkpoint was saved, so it cannot resume; create the job again.",
                    owner=owner,
                )

    # --- validation ----------------------------------------------------------------------------
    def _validate(self, job: JobRecord) -> None:
        if job.cancel_requested:
            self.repo.transition(
                job.id, [S.VALIDATING_FILES], S.CANCELLED, "Fine-tuning job cancelled", finished_at=now()
            )
            return
        method = job.method["type"]
        examples = 0
        for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
            if file_id is None:
                continue
            record = self.repo.get_file(file_id)
            if record is None:
                self._fail(
                    job.id, f"invalid_{param}", f"{param} {file_id} was deleted", param, source=S.VALIDATING_FILES
                )
                return
            try:
                rows = load_jsonl(self.repo.read_file(record), method).rows
            except Exception as exc:  # any fault in one file fails that job alone
                self._fail(
                    job.id,
                    f"invalid_{param}",
                    f"{param} {file_id} ({record.filename}): {exc}",
                    param,
                    source=S.VALIDATING_FILES,
                )
                return
            examples = examples or len(rows)
        raw = job.method.get(method, {}).get("hyperparameters", {})
        hyper = Hyperparameters.resolve(raw, method, examples)
        self.repo.transition(
            job.id,
            [S.VALIDATING_FILES],
            S.QUEUED,
            f"Files validated ({examples} training examples); job queued",
            method={**job.method, method: {"hyperparameters": hyper.to_dict()}},
        )

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
                placement = self._place(job, serving_busy)
            except Exception as exc:
                if getattr(exc, "code", None) == "gpu_busy":
                    if job.id not in self._waiting_for_devices:
                        self._waiting_for_devices.add(job.id)
                        self.repo.add_event(job.id, f"Waiting for devices: {getattr(exc, 'message', exc)}")
                    continue
                self._fail(
                    job.id,
                    getattr(exc, "code", None) or "placement_failed",
                    f"Cannot place the job: {getattr(exc, 'message', exc)}",
                    "gpu_preference",
                    source=S.QUEUED,
                )
                continue
            self._waiting_for_devices.discard(job.id)
            gpus = [d for d in placement.devices if d.gpu.name != "cpu"]
            self.reservations.reserve(job.id, {d.key for d in gpus})
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
            starts.append(
                Start(
                    job.id,
                    {
                        "CUDA_VISIBLE_DEVICES": ",".join(str(d.index) for d in gpus),
                        **tracking_env(layout, job.integrations),
                    },
                    placement,
                )
            )
        return starts

    def _place(self, job: JobRecord, serving_busy: set[str]) -> Placement:
        purpose = "dpo" if job.method["type"] == "dpo" else "sft"
        placement, _ = self.planner.plan(
            model_path(job, self.models_dir), parse_gpu_preference(job.gpu_preference), purpose, serving_busy
        )
        if placement.remote:
            raise RuntimeError(f"{placement.label} is in a declared pool; training runs on this host's devices only")
        return placement

    def _folder_busy(self, job_id: str) -> bool:
        lock = FileLock(JobLayout(self.home, job_id).lock)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    def _launch(self, start: Start) -> None:
        layout = JobLayout(self.home, start.job_id)
        local = isinstance(self.launcher, LocalLauncher)
        process = self._assign_standby(start, layout) if local and start.env.get("CUDA_VISIBLE_DEVICES") == "" else None
        try:
            if process is None:
                assert start.placement is not None
                process = self.launcher.launch(
                    start.job_id,
                    {**self.env, **start.env, PARENT_ENV: str(os.getpid())},
                    layout.log,
                    start.placement.label,
                    start.placement.node,
                )
        except OSError as exc:
            self.reservations.release(start.job_id)
            self._fail(
                start.job_id, "worker_start_failed", f"Could not start the training worker: {exc}", owner=self.owner
            )
            return
        self._workers[start.job_id] = Worker(start.job_id, process)
        self.repo.set_fields(start.job_id, worker_pid=process.pid)

    def _assign_standby(self, start: Start, layout: JobLayout) -> subprocess.Popen | None:
        """Hand a CPU job to the preloaded standby worker, if one is alive."""
        standby, self._standby = self._standby, None
        if standby is None or standby.poll() is not None or standby.stdin is None:
            return None
        assignment = {"job_id": start.job_id, "env": start.env, "log": str(layout.log)}
        try:
            standby.stdin.write((json.dumps(assignment) + "\n").encode())
            standby.stdin.close()
        except OSError:
            standby.kill()
            return None
        return standby

    def _keep_standby(self) -> None:
        """Keep one preloaded worker waiting once this server has seen a job (a server that never
        trains never pays for one); restarted at most every ``STANDBY_RETRY_S``."""
        if self._standby is not None and self._standby.poll() is None:
            return
        if time.monotonic() - self._standby_started < STANDBY_RETRY_S:
            return
        self._standby_started = time.monotonic()
        log_path = self.home / "training" / "standby.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            self._standby = subprocess.Popen(
                [sys.executable, "-m", "synthd.training.worker", "--standby"],
                env={**self.env, "CUDA_VISIBLE_DEVICES": "", PARENT_ENV: str(os.getpid())},
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )

    # --- ending --------------------------------------------------------------------------------
    def _reap(self, worker: Worker) -> None:
        job_id, code = worker.job_id, worker.process.returncode
        del self._workers[job_id]
        self.reservations.release(job_id)
        layout = JobLayout(self.home, job_id)
        job = self.repo.get_job(job_id)
        if job is None or job.status != S.RUNNING or job.lease_owner != self.owner:
            return
        result = _read_json(layout.result) if code == 0 else None
        outcome = result.get("outcome") if result else None
        if job.cancel_requested and outcome != "succeeded":
            self._end(job_id, S.CANCELLED, "Fine-tuning job cancelled")
        elif outcome == "succeeded":
            self._succeed(job, result)
        elif outcome == "paused":
            self.repo.transition(
                job_id,
                [S.RUNNING],
                S.PAUSED,
                f"Fine-tuning job paused at step {result['step']}",
                owner=self.owner,
                lease_owner=None,
                worker_pid=None,
            )
        elif outcome == "cancelled":
            self._end(job_id, S.CANCELLED, "Fine-tuning job cancelled")
        elif code == EXIT_FOLDER_BUSY:
            self.repo.transition(
                job_id,
                [S.RUNNING],
                S.QUEUED,
                "Another trainer still holds the job's folder; job re-queued",
                owner=self.owner,
                lease_owner=None,
                worker_pid=None,
            )
        elif code == 1 and (error := _read_json(layout.error)):
            self._fail(
                job_id,
                error.get("code", "training_error"),
                error.get("message", "training failed"),
                error.get("param"),
                owner=self.owner,
            )
        else:
            tail = log_tail(layout.log)
            self._fail(
                job_id,
                "worker_crashed",
                f"The training worker {exit_reason(code)}" + (f": {tail}" if tail else ""),
                owner=self.owner,
            )

    def _succeed(self, job: JobRecord, result: dict) -> None:
        layout = JobLayout(self.home, job.id)
        fine_tuned = str(FineTuneId(job.model, job.suffix or "", job.id))
        saved = self.repo.checkpoints(job.id)
        keep = job.n_checkpoints or DEFAULT_N_CHECKPOINTS
        kept, dropped = saved[:keep], saved[keep:]
        models = [NewModel(fine_tuned, job.model, str(layout.adapter))] + [
            NewModel(str(FineTuneId(job.model, job.suffix or "", job.id, c.step_number)), job.model, c.adapter_path)
            for c in kept
            if c.adapter_path
        ]
        result_file = self._result_file(job.id, job.project)
        won = self.repo.succeed(
            job.id,
            self.owner,
            "The job has successfully completed",
            models,
            result_file,
            fine_tuned_model=fine_tuned,
            trained_tokens=int(result.get("trained_tokens", 0)),
            finished_at=now(),
            estimated_finish=None,
            result_files=[result_file.id],
            lease_owner=None,
            worker_pid=None,
        )
        if not won:  # a cancel came first: nothing from this job is served
            Path(result_file.path).unlink(missing_ok=True)
            self._end(job.id, S.CANCELLED, "Fine-tuning job cancelled")
            return
        self.repo.delete_checkpoints(c.id for c in dropped)
        for checkpoint in dropped:
            if checkpoint.adapter_path:
                shutil.rmtree(checkpoint.adapter_path, ignore_errors=True)
        shutil.rmtree(layout.trainer_dir, ignore_errors=True)

    def _result_file(self, job_id: str, project: str | None) -> FileRecord:
        events = [e.data for e in self.repo.metric_events(job_id) if e.data]
        file_id = new_id("file")
        path = self.repo.files_dir / file_id
        content = step_metrics_csv(events)
        write_atomic(path, content)
        return FileRecord(
            id=file_id,
            filename="step_metrics.csv",
            purpose=RESULT_PURPOSE,
            bytes=len(content),
            created_at=now(),
            path=str(path),
            project=project,
        )

    def _end(self, job_id: str, status: JobStatus, message: str) -> None:
        if self.repo.transition(
            job_id,
            [S.RUNNING],
            status,
            message,
            owner=self.owner,
            finished_at=now(),
            estimated_finish=None,
            lease_owner=None,
            worker_pid=None,
        ):
            self._discard_outputs(job_id)

    def _fail(
        self,
        job_id: str,
        code: str,
        message: str,
        param: str | None = None,
        *,
        source: JobStatus = S.RUNNING,
        owner: str | None = None,
    ) -> None:
        if self.repo.transition(
            job_id,
            [source],
            S.FAILED,
            message,
            owner=owner,
            level="error",
            finished_at=now(),
            estimated_finish=None,
            error={"code": code, "message": message, "param": param},
            lease_owner=None,
            worker_pid=None,
        ):
            self._discard_outputs(job_id)

    def _discard_outputs(self, job_id: str) -> None:
        """A job that did not succeed serves nothing: drop its adapters and resumable state (its
        folder keeps the logs)."""
        layout = JobLayout(self.home, job_id)
        for checkpoint in self.repo.checkpoints(job_id):
            if checkpoint.adapter_path:
                shutil.rmtree(checkpoint.adapter_path, ignore_errors=True)
        shutil.rmtree(layout.adapter, ignore_errors=True)
        shutil.rmtree(layout.trainer_dir, ignore_errors=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
