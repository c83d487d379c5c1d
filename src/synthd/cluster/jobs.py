"""Fine-tuning workers on a Ray cluster: the job scheduler's ``WorkerLauncher`` when serving with
``--ray-address``.

Each job runs in a ``TrainingWorker`` actor pinned to a node that has the job's GPU type
(``NodeAffinitySchedulingStrategy``, hard), asking Ray for ``num_gpus`` = the placement's count and
a sliver of the node's ``accelerator_type:<TYPE>`` resource, so Ray keeps training and serving off
each other's GPUs. The actor starts the same ``python -m synthd.training.worker JOB_ID`` as a local
launch, with ``CUDA_VISIBLE_DEVICES`` set to the GPUs Ray gave it, its stderr appended to the job's
log, and a parent-death signal so the worker never outlives the actor. The worker reaches the
database and the job's folder as it does locally: through ``SYNTHD_DATABASE_URL`` /
``SYNTHD_HOME`` (on a real cluster, a database server and a shared folder; see docs/guides/cluster.md).

Cancelling ends the worker within seconds: the worker stops at its next step when it sees the
cancel flag, and the scheduler's ``kill`` kills the actor (and so the worker). When the node dies
mid-job, the handle starts the worker again on another node of that type, which resumes from the
newest checkpoint in the job's folder; with no checkpoint yet, or no other such node, the worker
ends with exit code 1 and the reason as the last line of its log.
"""

import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from synthd.cluster.inventory import ClusterNode
from synthd.cluster.remote_engine import ACCELERATOR_SLIVER
from synthd.cluster.runtime import RayCluster
from synthd.environ import scrubbed_environ
from synthd.gpus.inventory import Device
from synthd.gpus.planner import Reservations
from synthd.gpus.spec import GPUOption, parse_gpu_preference
from synthd.training.layout import latest_checkpoint
from synthd.training.worker import PARENT_ENV

log = logging.getLogger(__name__)
FORWARDED_ENV_PREFIXES = ("SYNTHD_", "SYNTH_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "WANDB_")
"""Variables of the server's environment a worker on another node gets (the rest is the node's own)."""
KILLED = -signal.SIGKILL
POLL_S = 0.2
NODE_DEATH_GRACE_S = 30.0
"""After the actor dies, how long its node may still look alive before the death counts as the
worker's own crash (Ray marks a node dead only once its health checks fail)."""
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked worker: ask the kernel for SIGKILL when the actor process exits (Linux)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class TrainingWorker:
    """Actor body: runs one training worker process on its node with the GPUs Ray gave the actor."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None

    async def where(self) -> tuple[str, list[int], int]:
        """(Ray node id, GPU ids, pid of this actor)."""
        return ray.get_runtime_context().get_node_id(), [int(i) for i in ray.get_gpu_ids()], os.getpid()

    async def run(self, job_id: str, env: dict[str, str], log_path: str) -> int:
        """Run ``python -m synthd.training.worker job_id``; return its exit code. Its environment is
        this node's without secrets (``synthd.environ``) plus ``env``, which carries the credentials
        the server lets workers have."""
        gpu_ids = ",".join(str(int(i)) for i in ray.get_gpu_ids())
        full_env = {**scrubbed_environ(), **env, "CUDA_VISIBLE_DEVICES": gpu_ids, PARENT_ENV: str(os.getpid())}
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = await asyncio.to_thread(open, log_path, "ab")
        with log_file:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "synthd.training.worker",
                job_id,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                preexec_fn=_die_with_parent,
            )
        return await self._process.wait()

    async def stop(self) -> None:
        """SIGTERM the worker (it ends at its next step)."""
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()


class RayWorkerHandle:
    """A ``WorkerHandle`` over a ``TrainingWorker`` actor (see the module docstring).

    ``node`` is where the worker runs now, ``gpu_ids`` the GPUs Ray gave it (known once it
    started), ``reason`` why it ended when synthd ended it (node lost, no fitting node).
    """

    def __init__(
        self,
        launcher: "RayLauncher",
        job_id: str,
        env: dict[str, str],
        log_path: Path,
        option: GPUOption,
        node: str | None,
    ) -> None:
        self.pid: int | None = None
        self.returncode: int | None = None
        self.reason: str | None = None
        self.node: ClusterNode | None = None
        self.gpu_ids: tuple[int, ...] = ()
        self._launcher = launcher
        self._job_id = job_id
        self._env = env
        self._log_path = log_path
        self._option = option
        self._lost: set[str] = set()
        self._attempt = 0
        self._killed = False
        self._started = False
        self._died_at: float | None = None
        self._actor: Any = None
        self._submit(node)

    def _submit(self, preferred: str | None) -> None:
        node = self._launcher.pick_node(self._option, preferred, self._lost)
        if node is None:
            where = f" other than {', '.join(sorted(self._lost))}" if self._lost else ""
            self._finish(1, f"no node of the Ray cluster{where} has {self._option}")
            return
        self.node, self._started, self._died_at, self._attempt = node, False, None, self._attempt + 1
        count = self._option.gpu_count
        resources = (
            {f"accelerator_type:{node.ray_accelerator}": ACCELERATOR_SLIVER} if count and node.ray_accelerator else {}
        )
        self._actor = (
            ray.remote(TrainingWorker)
            .options(
                name=f"synthd-job-{self._job_id}-{self._attempt}",
                num_cpus=1,
                num_gpus=count,
                resources=resources,
                max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            )
            .remote()
        )
        self._where = self._actor.where.remote()
        self._run = self._actor.run.remote(self._job_id, self._env, str(self._log_path))

    def poll(self) -> int | None:
        """See ``WorkerHandle.poll``; notices a lost node and starts the worker again elsewhere."""
        if self.returncode is not None:
            return self.returncode
        self._note_start()
        ready, _ = ray.wait([self._run], timeout=0)
        if not ready:
            return None
        try:
            code = int(ray.get(self._run))
        except RayError as exc:
            if self._killed:
                return self._finish(KILLED)
            if not self._launcher.alive(self.node):
                return self._resume_elsewhere()
            self._died_at = self._died_at or time.monotonic()
            if time.monotonic() - self._died_at < NODE_DEATH_GRACE_S:
                return None
            return self._finish(1, f"the Ray actor running the worker on {self.node.name} died: {type(exc).__name__}")
        return self._finish(code)

    def _note_start(self) -> None:
        if self._started or not ray.wait([self._where], timeout=0)[0]:
            return
        self._started = True
        try:
            _, gpu_ids, self.pid = ray.get(self._where)
        except RayError:
            return
        self.gpu_ids = tuple(gpu_ids)
        self._launcher.started(self._job_id, self.node, self._option, self.gpu_ids)

    def _resume_elsewhere(self) -> int | None:
        lost = self.node.name
        self._lost.add(lost)
        self._launcher.ended(self._job_id)
        self._actor = None
        checkpoint = latest_checkpoint(self._launcher.checkpoints_of(self._job_id))
        if checkpoint is None:
            return self._finish(
                1,
                f"node {lost} running the job left the Ray cluster before the job saved its "
                "first checkpoint, so it cannot resume",
            )
        self._launcher.event(
            self._job_id,
            f"Node {lost} left the Ray cluster; resuming from {checkpoint.name} on another {self._option} node",
        )
        self._submit(None)
        return self.returncode

    def _finish(self, code: int, reason: str | None = None) -> int:
        self.returncode, self.reason = code, reason
        if self._actor is not None:
            ray.kill(self._actor, no_restart=True)  # an actor holds its GPUs until it ends
        self._launcher.ended(self._job_id)
        if reason is not None:
            log.warning("job %s: %s", self._job_id, reason)
            with open(self._log_path, "a") as log_file:
                log_file.write(f"synthd: {reason}\n")
        return code

    def wait(self, timeout: float | None = None) -> int:
        """See ``WorkerHandle.wait``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"synthd.training.worker {self._job_id}", timeout)
            time.sleep(POLL_S)
        return code

    def terminate(self) -> None:
        """See ``WorkerHandle.terminate``: SIGTERM to the worker through its actor."""
        if self.returncode is None and self._actor is not None:
            self._actor.stop.remote()

    def kill(self) -> None:
        """See ``WorkerHandle.kill``: kill the actor (the worker dies with it)."""
        if self.returncode is None and self._actor is not None:
            self._killed = True
            ray.kill(self._actor, no_restart=True)


class RayLauncher:
    """The ``WorkerLauncher`` of a server on a Ray cluster.

    Args:
        cluster: the connected cluster. checkpoints_of: a job's checkpoint folder (where
        ``checkpoint-N`` folders appear). reservations: where the GPUs a worker got are recorded
        while it runs, so serving's placement counts them busy (None: the scheduler reserves).
        events: adds a message to a job's events.
    """

    def __init__(
        self,
        cluster: RayCluster,
        checkpoints_of: Callable[[str], Path],
        reservations: Reservations | None = None,
        events: Callable[[str, str], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.checkpoints_of = checkpoints_of
        self.reservations = reservations
        self._events = events

    def launch(
        self, job_id: str, env: dict[str, str], log_path: Path, gpu: str, node: str | None = None
    ) -> RayWorkerHandle:
        """See ``WorkerLauncher.launch``: ``gpu`` is one option (``A100-40GB:2``, ``cpu``)."""
        option = parse_gpu_preference(gpu).options[0]
        forwarded = {k: v for k, v in env.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return RayWorkerHandle(self, job_id, forwarded, log_path, option, node)

    def prepare(self, env: dict[str, str]) -> None:
        """See ``WorkerLauncher.prepare``: nothing (each job gets a fresh actor on its node)."""

    def close(self) -> None:
        """See ``WorkerLauncher.close``: nothing to stop (job actors are the scheduler's handles)."""

    def pick_node(self, option: GPUOption, preferred: str | None, exclude: set[str]) -> ClusterNode | None:
        """An alive node for ``option`` (``preferred`` first, then those with the most free GPUs),
        not in ``exclude``; None when the cluster has none."""
        self.cluster.refresh()
        if option.is_cpu:
            fitting = [n for n in self.cluster.nodes.values() if not n.gpus]
        else:
            fitting = [
                n
                for n in self.cluster.nodes.values()
                if n.gpu is not None and n.gpu.name == option.gpu_name and n.gpus >= option.count
            ]
        fitting = [n for n in fitting if n.name not in exclude]
        free = self.cluster.free_gpus()
        fitting.sort(key=lambda n: (n.name != preferred, -free.get(n.name, 0)))
        return fitting[0] if fitting else None

    def alive(self, node: ClusterNode) -> bool:
        """True when ``node`` is still in the cluster."""
        self.cluster.refresh()
        current = self.cluster.nodes.get(node.name)
        return current is not None and current.node_id == node.node_id

    def started(self, job_id: str, node: ClusterNode, option: GPUOption, gpu_ids: tuple[int, ...]) -> None:
        """Record where a worker runs: an event, and its GPUs reserved."""
        if self.reservations is not None and node.gpu is not None:
            self.reservations.reserve(job_id, {Device(node.gpu, i, node.name).key for i in gpu_ids})
        gpus = f" (GPUs {', '.join(map(str, gpu_ids))})" if gpu_ids else ""
        self.event(job_id, f"Training worker running on Ray node {node.name}{gpus}")

    def ended(self, job_id: str) -> None:
        """Free what ``started`` reserved."""
        if self.reservations is not None:
            self.reservations.release(job_id)

    def event(self, job_id: str, message: str) -> None:
        """Add ``message`` to the job's events."""
        log.info("job %s: %s", job_id, message)
        if self._events is not None:
            self._events(job_id, message)
