"""Worker process entry point: ``python -m synthd.training.worker JOB_ID`` (or ``--standby``).

Reads settings from the environment (``SYNTHD_HOME``, ``SYNTHD_DATABASE_URL``); the scheduler sets
``CUDA_VISIBLE_DEVICES`` to the devices it reserved and ``SYNTHD_PARENT_PID`` to its own pid.

The worker dies with its server: it asks the kernel for SIGKILL when its parent exits
(``prctl(PR_SET_PDEATHSIG)``, Linux), then checks the parent is still the one that started it (it
may have died before the call). It holds the lock of the job's folder while it trains, so a second
worker for the same job exits at once (``EXIT_FOLDER_BUSY``) instead of sharing the output folder.

It never writes the job's status. It ends by writing ``result.json`` (exit 0) or ``error.json``
(exit 1) in the job's folder; the scheduler reads them with the exit code.

``--standby`` starts a worker ahead of time: it imports torch, transformers, TRL, PEFT and datasets
(most of a worker's start-up), then waits for one assignment on stdin, a JSON line
``{"job_id", "env", "log"}``, and trains that job. It is started with no visible GPU
(``CUDA_VISIBLE_DEVICES=""``, since CUDA reads the variable once) and only takes jobs placed on the
CPU; jobs on GPUs get a fresh worker with their devices.
"""

import ctypes
import json
import logging
import os
import signal
import sys
from pathlib import Path

from filelock import FileLock, Timeout

from synthd.config import get_settings
from synthd.models.resolve import resolve_model
from synthd.store import failpoints
from synthd.store.db import open_database
from synthd.store.files import write_atomic
from synthd.store.models import JobRecord
from synthd.store.repository import Repository
from synthd.training.data import DataFormatError
from synthd.training.layout import JobLayout

log = logging.getLogger(__name__)
EXIT_OK, EXIT_FAILED, EXIT_FOLDER_BUSY, EXIT_ORPHANED = 0, 1, 75, 76
PR_SET_PDEATHSIG = 1
PARENT_ENV = "SYNTHD_PARENT_PID"
WORKER_ENV = {
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "OMP_WAIT_POLICY": "PASSIVE",
}
"""Set (unless given) before torch is imported: no progress bars in ``worker.log`` (it keeps warnings
and tracebacks), and OpenMP threads that sleep instead of spinning when they wait. Measured on this
2-core machine under load (load average 15): a forward and backward pass of the embedded model on
3×60 tokens took 50 s with torch's 2 threads spinning, 8 s with ``PASSIVE``; training shares its
cores with the server's own engine, so spinning threads only burn the time others need."""


def model_path(job: JobRecord, models_dir: Path) -> Path:
    """The folder of a job's base model (recorded at creation; resolved by id for older jobs)."""
    return Path(job.model_path) if job.model_path else resolve_model(job.model, models_dir).path


def die_with_parent() -> bool:
    """Ask for SIGKILL when the parent exits; False if the parent is already gone."""
    expected = os.environ.get(PARENT_ENV)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return expected is None or os.getppid() == int(expected)


def error_record(exc: BaseException) -> dict:
    """The job error the scheduler records for ``exc``."""
    if isinstance(exc, DataFormatError):
        return {"code": "invalid_training_file", "message": f"training_file: {exc}", "param": "training_file"}
    return {"code": "training_error", "message": f"{type(exc).__name__}: {exc}", "param": None}


def main(job_id: str) -> int:
    """Run the job; return the process exit code."""
    if not die_with_parent():
        return EXIT_ORPHANED
    for name, value in WORKER_ENV.items():
        os.environ.setdefault(name, value)
    logging.basicConfig(level=logging.WARNING)
    settings = get_settings()
    layout = JobLayout(settings.home, job_id)
    layout.folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(layout.lock)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return EXIT_FOLDER_BUSY
    try:
        if failpoints.active().get("worker_start") == "long_stderr_line":
            sys.stderr.write("x" * 100_000 + "\n")
            sys.stderr.flush()
            os._exit(3)
        from synthd.training.runner import run_job

        repo = Repository(open_database(settings.home, settings.database_url), settings.home / "files")
        job = repo.get_job(job_id)
        assert job is not None, f"no job {job_id}"
        outcome = run_job(repo, job_id, model_path(job, settings.models_dir), layout)
        write_atomic(layout.result, json.dumps(outcome.__dict__).encode())
        return EXIT_OK
    except Exception as exc:  # reported to the scheduler; the server stays up
        log.exception("job %s failed", job_id)
        write_atomic(layout.error, json.dumps(error_record(exc)).encode())
        return EXIT_FAILED
    finally:
        lock.release()


def preload() -> None:
    """Import what training needs, without touching a device."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import trl  # noqa: F401
    from trl import DPOTrainer, SFTTrainer  # noqa: F401

    import synthd.training.runner  # noqa: F401


def standby() -> int:
    """Preload, wait for an assignment, then train it; exit 0 without one (stdin closed)."""
    if not die_with_parent():
        return EXIT_ORPHANED
    for name, value in WORKER_ENV.items():
        os.environ.setdefault(name, value)
    preload()
    line = sys.stdin.readline()
    if not line.strip():
        return EXIT_OK
    assignment = json.loads(line)
    os.environ.update(assignment["env"])
    log = os.open(assignment["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 2)
    os.close(log)
    return main(assignment["job_id"])


if __name__ == "__main__":
    sys.exit(standby() if sys.argv[1] == "--standby" else main(sys.argv[1]))
