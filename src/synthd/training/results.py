"""How a job ends: a worker's exit read into its final status, the outputs of a success registered
(the ``ft:`` model, kept checkpoints, ``step_metrics.csv``), those of any other end discarded, and
the jobs of a dead scheduler recovered.

A worker only reports (``result.json`` / ``error.json`` and its exit code); each status written
here is a conditional ``Repository.transition`` from ``running`` (or the status named), so a cancel
racing a success has exactly one winner.
"""

import csv
import io
import json
import shutil
import signal
from pathlib import Path

from synthd.models.ids import FineTuneId
from synthd.store.files import write_atomic
from synthd.store.models import FileRecord, JobRecord, JobStatus
from synthd.store.repository import NewModel, Repository, new_id, now
from synthd.training.config import DEFAULT_N_CHECKPOINTS
from synthd.training.layout import JobLayout, latest_checkpoint
from synthd.training.worker import EXIT_FOLDER_BUSY

S = JobStatus
LOG_TAIL_BYTES = 4096
RESULT_PURPOSE = "fine-tune-results"
STEP_METRICS_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy")


def log_tail(path: Path, lines: int = 3, limit_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last ``lines`` non-empty lines of a log within its last ``limit_bytes`` bytes, each cut to
    300 characters (lines of any length are fine: the file is read from the end, never by line)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, io.SEEK_END) - limit_bytes))
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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class JobResults:
    """Ends jobs (see the module docstring).

    Args:
        repo: the database. home: ``$SYNTHD_HOME`` (job folders). owner: the scheduler's lease owner.
    """

    def __init__(self, repo: Repository, home: Path, owner: str) -> None:
        self.repo = repo
        self.home = home
        self.owner = owner

    def reap(self, job_id: str, code: int) -> None:
        """Turn the exit ``code`` of this scheduler's worker for ``job_id`` (and what it wrote)
        into the job's status: succeeded, cancelled, paused, re-queued (``EXIT_FOLDER_BUSY``) or
        failed with the worker's error or the tail of its log."""
        layout = JobLayout(self.home, job_id)
        job = self.repo.get_job(job_id)
        if job is None or job.status != S.RUNNING or job.lease_owner != self.owner:
            return
        result = _read_json(layout.result) if code == 0 else None
        outcome = result.get("outcome") if result else None
        if job.cancel_requested and outcome != "succeeded":
            self.end(job_id, S.CANCELLED, "Fine-tuning job cancelled")
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
            self.end(job_id, S.CANCELLED, "Fine-tuning job cancelled")
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
            self.fail(
                job_id,
                error.get("code", "training_error"),
                error.get("message", "training failed"),
                error.get("param"),
                owner=self.owner,
            )
        else:
            tail = log_tail(layout.log)
            self.fail(
                job_id,
                "worker_crashed",
                f"The training worker {exit_reason(code)}" + (f": {tail}" if tail else ""),
                owner=self.owner,
            )

    def recover_orphan(self, job: JobRecord) -> None:
        """A running job whose lease owner died: cancelled if asked, re-queued (or paused) to
        resume from its newest checkpoint, else failed (nothing to resume from)."""
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
            self.fail(
                job.id,
                "server_restarted",
                "The server running this job stopped before its first "
                "checkpoint was saved, so it cannot resume; create the job again.",
                owner=owner,
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
            self.end(job.id, S.CANCELLED, "Fine-tuning job cancelled")
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

    def end(self, job_id: str, status: JobStatus, message: str) -> None:
        """``running → status`` (cancelled) under this scheduler's lease; its outputs discarded."""
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

    def fail(
        self,
        job_id: str,
        code: str,
        message: str,
        param: str | None = None,
        *,
        source: JobStatus = S.RUNNING,
        owner: str | None = None,
    ) -> None:
        """``source → failed`` with the error ``{code, message, param}`` (under ``owner``'s lease
        when given); its outputs discarded."""
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
