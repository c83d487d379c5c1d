"""How the job scheduler starts a training worker: the seam between "which job, with which
environment" (the scheduler's business) and "as what kind of process, where" (the launcher's).

``WorkerHandle`` is the part of ``subprocess.Popen`` the scheduler uses, so a local worker is a
plain ``Popen``; ``synthd.cluster.jobs.RayLauncher`` returns a handle over a Ray actor running the
same ``python -m synthd.training.worker JOB_ID`` on the node that has the job's GPUs.

``LocalLauncher`` also keeps a **standby** worker once jobs are seen (``prepare``): a
``python -m synthd.training.worker --standby`` that has imported the training libraries and waits
for one job on its stdin. A job placed on the CPU (``CUDA_VISIBLE_DEVICES`` empty) is handed to it
instead of paying for a fresh start; jobs on GPUs get a fresh worker with their devices.
"""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

STANDBY_RETRY_S = 30.0
STOP_WAIT_S = 15.0


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


def stop_workers(handles: list[WorkerHandle]) -> None:
    """Terminate the running ones, wait ``STOP_WAIT_S`` each, then kill what is left. Blocking."""
    for handle in handles:
        if handle.poll() is None:
            handle.terminate()
    for handle in handles:
        try:
            handle.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            handle.kill()
            handle.wait()


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

    def prepare(self, env: dict[str, str]) -> None:
        """Called each scheduler tick once this server has seen a job: keep ready whatever makes
        the next ``launch`` faster (workers would get ``env``). A no-op where nothing can be."""
        ...

    def close(self) -> None:
        """Stop what ``prepare`` started (workers from ``launch`` are the scheduler's). Blocking."""
        ...


class LocalLauncher:
    """Workers as child processes of this server (the devices come from ``env``'s
    ``CUDA_VISIBLE_DEVICES``), with a standby worker for CPU jobs (see the module docstring).

    Args:
        standby_log: where the standby worker's stderr goes until it gets a job.
    """

    def __init__(self, standby_log: Path) -> None:
        self.standby_log = standby_log
        self._standby: subprocess.Popen | None = None
        self._standby_started = -STANDBY_RETRY_S

    def launch(
        self, job_id: str, env: dict[str, str], log_path: Path, gpu: str, node: str | None = None
    ) -> subprocess.Popen:
        """See ``WorkerLauncher.launch``: a CPU job goes to the standby worker when one is alive."""
        if env.get("CUDA_VISIBLE_DEVICES") == "" and (standby := self._assign_standby(job_id, env, log_path)):
            return standby
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", "synthd.training.worker", job_id],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )

    def prepare(self, env: dict[str, str]) -> None:
        """See ``WorkerLauncher.prepare``: keep one standby worker waiting (a server that never
        trains never pays for one); restarted at most every ``STANDBY_RETRY_S``."""
        if self._standby is not None and self._standby.poll() is None:
            return
        if time.monotonic() - self._standby_started < STANDBY_RETRY_S:
            return
        self._standby_started = time.monotonic()
        self.standby_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.standby_log, "ab") as log_file:
            self._standby = subprocess.Popen(
                [sys.executable, "-m", "synthd.training.worker", "--standby"],
                env={**env, "CUDA_VISIBLE_DEVICES": ""},
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )

    def close(self) -> None:
        """See ``WorkerLauncher.close``: stop the standby worker."""
        standby, self._standby = self._standby, None
        if standby is not None:
            stop_workers([standby])

    def _assign_standby(self, job_id: str, env: dict[str, str], log_path: Path) -> subprocess.Popen | None:
        """Hand the job to the standby worker, if one is alive (it then is the job's worker)."""
        standby, self._standby = self._standby, None
        if standby is None or standby.poll() is not None or standby.stdin is None:
            return None
        assignment = {"job_id": job_id, "env": env, "log": str(log_path)}
        try:
            standby.stdin.write((json.dumps(assignment) + "\n").encode())
            standby.stdin.close()
        except OSError:
            standby.kill()
            return None
        return standby
