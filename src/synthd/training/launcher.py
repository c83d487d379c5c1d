"""How the job scheduler starts a training worker: the seam between "which job, with which
environment" (the scheduler's business) and "as what kind of process, where" (the launcher's).

``WorkerHandle`` is the part of ``subprocess.Popen`` the scheduler uses, so a local worker is a
plain ``Popen``; ``synthd.cluster.jobs.RayLauncher`` returns a handle over a Ray actor running the
same ``python -m synthd.training.worker JOB_ID`` on the node that has the job's GPUs.
"""

import subprocess
import sys
from pathlib import Path
from typing import Protocol


class WorkerHandle(Protocol):
    """A started worker, as ``subprocess.Popen`` exposes one. ``returncode`` is None while it runs."""

    pid: int | None
    returncode: int | None

    def poll(self) -> int | None:
        """The exit code once it ended, else None (never blocks)."""
        ...

    def wait(self, timeout: float | None = None) -> int:
        """Block until it ends; raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        ...

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM)."""
        ...

    def kill(self) -> None:
        """End it now (SIGKILL)."""
        ...


class WorkerLauncher(Protocol):
    """Starts ``python -m synthd.training.worker JOB_ID``."""

    def launch(
        self, job_id: str, env: dict[str, str], log_path: Path, gpu: str, node: str | None = None
    ) -> WorkerHandle:
        """Start the worker for ``job_id`` with ``env``, its stderr appended to ``log_path``, on the
        devices ``gpu`` names (a placement label: ``cpu``, ``A100-40GB:2``), on ``node`` when given.

        Raises:
            OSError: the worker could not be started.
        """
        ...


class LocalLauncher:
    """Workers as child processes of this server (the devices come from ``env``'s
    ``CUDA_VISIBLE_DEVICES``)."""

    def launch(
        self, job_id: str, env: dict[str, str], log_path: Path, gpu: str, node: str | None = None
    ) -> subprocess.Popen:
        """See ``WorkerLauncher.launch``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", "synthd.training.worker", job_id],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
