"""Replica lifecycle: the engines of base models, each on one placement — start (plan, load),
find, scale out, evict (idle timeout, the ``max_loaded_models`` LRU cap), drop when lost, close.

A base model runs as one or more **replicas**, each an engine on one placement (``cpu``, ``H100:2``):
a request for the same model with another GPU preference gets (or starts) a replica there and never
tears down one that streams are using. Each replica's state is a ``WarmupState``: ``cold →
warming → warmed`` (or ``failed`` with the reason); a replica is warmed once its engine has loaded
and generated a first token (``first_generation``). Loads run in a worker thread; concurrent
warmups or requests for one model share one load. A replica with leases (``Replica.leases``, kept by
``synthd.models.pool``) is never evicted.

Replicas of one model on one placement label scale between ``AutoscalingConfig.min_replicas`` and
``max_replicas`` with the requests in flight (``synthd.models.autoscaling``): a request that finds
its group below the desired size starts another replica in the background and is served by a
warmed one meanwhile. Engines are built by an ``EngineFactory``: in this process by default, or as
Ray actors on a cluster's nodes (``synthd.cluster``); a replica whose engine is lost (its process or
node died) is dropped with ``lost`` and the next request starts a new one.
"""

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from synthd.engine.config import EngineConfig
from synthd.engine.factory import create_engine
from synthd.engine.protocol import Engine, SamplingParams
from synthd.errors import InvalidRequest, Overloaded, SynthdError
from synthd.gpus.planner import PlacementPlanner
from synthd.gpus.selection import GPUUnavailable, Placement
from synthd.gpus.spec import GPUPreference
from synthd.models.autoscaling import AutoscalingConfig
from synthd.models.resolve import ModelSource
from synthd.models.warmup import ModelStatus, WarmupState

log = logging.getLogger(__name__)
POOL_FULL_RETRY_AFTER_S = 5


class ModelLoadFailed(InvalidRequest):
    """The model could not be loaded (a broken folder, an unloadable adapter); the message says why."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"The model '{model}' failed to load: {reason}", param="model", code="model_load_failed")


class PoolFull(Overloaded):
    """``max_loaded_models`` replicas are resident and every one is serving requests."""

    def __init__(self, resident: int) -> None:
        super().__init__(
            f"{resident} models are loaded (the server's maximum) and all are serving requests; retry shortly.",
            retry_after_s=POOL_FULL_RETRY_AFTER_S,
            param="model",
            code="pool_full",
        )


class EngineFactory(Protocol):
    """Builds the engine of one replica. Blocking: the pool calls it in a worker thread."""

    def __call__(self, model_id: str, path: Path, placement: Placement) -> tuple[Engine, Placement]:
        """Load ``path`` on ``placement``; return the engine and the placement it really got (a
        cluster may hand out other device ids than planned).

        Raises:
            Exception: the model cannot be loaded there (the message becomes the replica's error).
        """
        ...


DEFAULT_ENGINE_CONFIG = EngineConfig()


@dataclass(frozen=True)
class LocalEngineFactory:
    """Engines in this process (``create_engine``) on the placement's CUDA ordinals (none: CPU)."""

    kind: str = "native"
    config: EngineConfig = DEFAULT_ENGINE_CONFIG

    def __call__(self, model_id: str, path: Path, placement: Placement) -> tuple[Engine, Placement]:
        """See ``EngineFactory``."""
        devices = [d.index for d in placement.gpus]
        engine = create_engine(self.kind, model_id, path, self.config, devices, placement.offered_gib * 1024**3)
        return engine, placement


@dataclass(eq=False)
class Replica:
    """One engine of one base model on one placement. Times: ``time.monotonic()`` seconds, except
    ``created`` (Unix seconds) and ``load_seconds`` (wall time of the load)."""

    model_id: str
    source: ModelSource
    placement: Placement
    memory_gib: float = 0.0
    """What the planner estimated it needs (weights, KV cache at full context, overhead)."""
    state: WarmupState = WarmupState.WARMING
    engine: Engine | None = None
    load_seconds: float | None = None
    error: str | None = None
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)
    created: int = field(default_factory=lambda: int(time.time()))
    task: asyncio.Task | None = None
    evicted: list[Engine] = field(default_factory=list)
    """Engines of replicas unloaded to make room for this one, stopped by its load before it loads
    (so their memory is free first, and the request that started it need not wait)."""

    def status(self) -> ModelStatus:
        """Its state and where it runs, as its model's status."""
        return ModelStatus(
            self.model_id,
            self.state,
            self.placement.label,
            self.placement.node,
            self.load_seconds,
            self.error,
        )

    async def ready(self) -> None:
        """Wait for its load (shielded: a cancelled waiter does not cancel the load).

        Raises:
            ModelLoadFailed: the load failed.
        """
        if self.task is not None and not self.task.done():
            await asyncio.shield(self.task)
        if self.state != WarmupState.WARMED:
            raise ModelLoadFailed(self.model_id, self.error or "unknown error")


def _fits(replica: Replica, preference: GPUPreference) -> bool:
    """True when ``replica``'s placement is one ``preference`` names (any for ``auto``)."""
    return preference.is_auto or replica.placement.label in {str(o) for o in preference.options}


class ReplicaSet:
    """The replicas of this process (see the module docstring).

    Args:
        planner: where a replica may go. engine_factory: builds engines.
        max_loaded_models: most replicas resident; the least recently used idle one is unloaded.
        idle_timeout_s: unload a replica unused this long (None: never).
        autoscaling: replica bounds per model and placement label.
    """

    def __init__(
        self,
        planner: PlacementPlanner,
        engine_factory: EngineFactory,
        *,
        max_loaded_models: int,
        idle_timeout_s: float | None,
        autoscaling: AutoscalingConfig,
    ) -> None:
        self.planner = planner
        self.engine_factory = engine_factory
        self.max_loaded_models = max_loaded_models
        self.idle_timeout_s = idle_timeout_s
        self.autoscaling = autoscaling
        self._replicas: list[Replica] = []
        self._failed: dict[str, str] = {}
        self._scaling: set[tuple[str, str]] = set()

    # --- lookups ---------------------------------------------------------------------------------
    def all(self, model: str | None = None) -> list[Replica]:
        """Resident or loading replicas (of ``model``'s base id when given), oldest first."""
        return [r for r in self._replicas if model is None or r.model_id == model]

    def engines(self) -> list[Engine]:
        """The engines of loaded replicas, oldest first."""
        return [r.engine for r in self._replicas if r.engine is not None]

    def busy_devices(self) -> set[str]:
        """Keys of GPUs held by replicas (the CPU is shared: see ``cpu_held_gib``)."""
        return {d.key for r in self._replicas for d in r.placement.gpus}

    def cpu_held_gib(self) -> float:
        """The planner's memory estimates of the replicas loaded or loading on the CPU, summed."""
        return sum(r.memory_gib for r in self._replicas if r.placement.option.is_cpu)

    def status(self, model_id: str, preference: GPUPreference) -> ModelStatus:
        """The state of base model ``model_id`` over its replicas meeting ``preference``: the best
        of warmed, warming, failed; else ``failed`` with its last load error, or ``cold``."""
        replicas = [r for r in self.all(model_id) if _fits(r, preference)]
        best = next(
            (
                r
                for state in (WarmupState.WARMED, WarmupState.WARMING, WarmupState.FAILED)
                for r in replicas
                if r.state == state
            ),
            None,
        )
        if best is None:
            error = self._failed.get(model_id)
            return ModelStatus(model_id, WarmupState.FAILED if error else WarmupState.COLD, error=error)
        return best.status()

    def holding(self, lora: str) -> Replica | None:
        """The oldest replica whose engine has the adapter ``lora`` resident."""
        return next((r for r in self._replicas if r.engine is not None and lora in r.engine.list_loras()), None)

    def find(self, model_id: str, preference: GPUPreference) -> Replica | None:
        """A loading or warmed replica meeting ``preference``, least leased first."""
        fitting = [
            r
            for r in self.all(model_id)
            if r.state in (WarmupState.WARMING, WarmupState.WARMED) and _fits(r, preference)
        ]
        return min(fitting, key=lambda r: (r.state != WarmupState.WARMED, r.leases), default=None)

    def _group(self, replica: Replica) -> list[Replica]:
        """Loading or warmed replicas of ``replica``'s model on its placement label."""
        return [
            r
            for r in self.all(replica.model_id)
            if r.placement.label == replica.placement.label and r.state in (WarmupState.WARMING, WarmupState.WARMED)
        ]

    # --- start -----------------------------------------------------------------------------------
    def scale_out(self, source: ModelSource, replica: Replica) -> None:
        """Start another replica of ``replica``'s group in the background when the requests in
        flight (one more included) call for more than the group has."""
        group = self._group(replica)
        key = (replica.model_id, replica.placement.label)
        wanted = self.autoscaling.desired_replicas(sum(r.leases for r in group) + 1)
        if len(group) >= wanted or key in self._scaling:
            return
        self._scaling.add(key)

        async def start() -> None:
            try:
                added, _ = await self.start(source, GPUPreference((replica.placement.option,)), another=True)
                log.info(
                    "scaling %s on %s out to %d replicas (%s)", key[0], key[1], len(group) + 1, added.placement.where
                )
            except SynthdError as exc:
                log.info("cannot scale %s on %s out: %s", key[0], key[1], exc.message)
            finally:
                self._scaling.discard(key)

        asyncio.get_running_loop().create_task(start())

    async def find_or_start(self, source: ModelSource, preference: GPUPreference) -> Replica:
        """A replica meeting ``preference``: an existing one, else one ``start`` started or joined."""
        return self.find(source.model_id, preference) or (await self.start(source, preference))[0]

    async def start(
        self, source: ModelSource, preference: GPUPreference, another: bool = False
    ) -> tuple[Replica, bool]:
        """Plan a placement and start loading a replica there; returns it and whether this call
        started it. Planning runs in a thread; the result is checked again afterwards, so two
        concurrent starts never share a GPU or load one model twice (the later one joins the
        earlier's replica, unless ``another`` asks for one more replica of a group).

        Raises:
            ModelLoadFailed: its config.json is unreadable or of the wrong shape. SelectionError, GPUSpecError: the
            preference cannot be met (GPUUnavailable: only by a declared remote device).
            PoolFull: no room for another replica.
        """
        for _ in range(3):
            try:
                placement, estimate = await asyncio.to_thread(
                    self.planner.plan, source.path, preference, "inference", self.busy_devices(), self.cpu_held_gib()
                )
            except SynthdError:
                raise
            except Exception as exc:  # noqa: BLE001 -- a config.json of any shape is the model's failure, not the server's
                self._failed[source.model_id] = f"cannot read its config.json: {type(exc).__name__}: {exc}"
                raise ModelLoadFailed(source.model_id, self._failed[source.model_id]) from None
            if placement.remote:
                raise GPUUnavailable(
                    f"{placement.label} is a declared cluster device ({placement.devices[0].node}); "
                    "this process runs models only on its local devices."
                )
            existing = None if another else self.find(source.model_id, preference)
            if existing is not None:  # another request started one while we planned
                return existing, False
            if not {d.key for d in placement.devices} & self.busy_devices():
                break
        replica = Replica(source.model_id, source, placement, estimate.total_gib)
        self._replicas.append(replica)
        try:
            self._make_room(keep=replica)
        except PoolFull:
            self._replicas.remove(replica)
            await self._stop_evicted(replica)
            raise
        self._failed.pop(source.model_id, None)
        replica.task = asyncio.create_task(self._load(replica))
        return replica, True

    async def _load(self, replica: Replica) -> None:
        await self._stop_evicted(replica)
        started = time.perf_counter()
        try:
            engine, replica.placement = await asyncio.to_thread(
                self.engine_factory, replica.model_id, replica.source.path, replica.placement
            )
        except Exception as exc:  # noqa: BLE001  any load failure becomes the replica's (and the model's) reason
            self._load_failed(replica, exc)
            return
        try:
            await first_generation(engine)
        except BaseException as exc:  # a failed probe, or the load cancelled (the pool closing): stop the engine
            await engine.shutdown()
            if not isinstance(exc, Exception):
                raise
            self._load_failed(replica, exc)
            return
        replica.engine = engine
        replica.state, replica.load_seconds = WarmupState.WARMED, time.perf_counter() - started
        replica.last_used = time.monotonic()

    def _load_failed(self, replica: Replica, exc: Exception) -> None:
        log.warning("loading %s failed: %s", replica.model_id, exc)
        replica.state, replica.error = WarmupState.FAILED, f"{type(exc).__name__}: {exc}"
        self._failed[replica.model_id] = replica.error
        self._replicas.remove(replica)

    # --- evict, lose, close ------------------------------------------------------------------------
    async def evict_idle(self) -> list[str]:
        """Unload warmed replicas unleased for longer than ``idle_timeout_s``, least recently used
        first, keeping ``min_replicas`` of each group; return their model ids."""
        if self.idle_timeout_s is None:
            return []
        now = time.monotonic()
        idle = sorted(
            (
                r
                for r in self._replicas
                if r.state == WarmupState.WARMED and r.leases == 0 and now - r.last_used > self.idle_timeout_s
            ),
            key=lambda r: r.last_used,
        )
        unloaded = []
        for replica in idle:
            if len(self._group(replica)) > self.autoscaling.min_replicas:
                await self._unload(replica)
                unloaded.append(replica.model_id)
        return unloaded

    def lost(self, engine: Engine, reason: str) -> None:
        """Forget the replica running ``engine``, whose process or node is gone: requests on it
        have failed, the next one starts a new replica. Its engine is shut down in the background
        (freeing what it held). Call from the event loop's thread."""
        replica = next((r for r in self._replicas if r.engine is engine), None)
        if replica is None:
            return
        self._replicas.remove(replica)
        replica.state, replica.error = WarmupState.FAILED, reason
        log.warning("replica of %s on %s lost: %s", replica.model_id, replica.placement.where, reason)
        asyncio.get_running_loop().create_task(engine.shutdown())

    def _make_room(self, keep: Replica) -> None:
        """Unload least recently used idle replicas until ``keep`` fits; their engines go to
        ``keep.evicted`` to be stopped before it loads.

        Raises:
            PoolFull: every other replica is loading or leased.
        """
        while len(self._replicas) > self.max_loaded_models:
            idle = [r for r in self._replicas if r is not keep and r.state == WarmupState.WARMED and r.leases == 0]
            if not idle:
                raise PoolFull(len(self._replicas) - 1)
            if (engine := self._detach(min(idle, key=lambda r: r.last_used))) is not None:
                keep.evicted.append(engine)

    async def _unload(self, replica: Replica) -> None:
        if (engine := self._detach(replica)) is not None:
            await engine.shutdown()

    async def _stop_evicted(self, replica: Replica) -> None:
        while replica.evicted:
            engine = replica.evicted.pop()
            try:
                await engine.shutdown()
            except Exception:  # a failed stop must not fail the load that follows
                log.exception("stopping the engine of %s failed", engine.model_id)

    def _detach(self, replica: Replica) -> Engine | None:
        """Take ``replica`` out of service; return its engine, still to be shut down."""
        if replica in self._replicas:
            self._replicas.remove(replica)
        engine, replica.engine, replica.state = replica.engine, None, WarmupState.COLD
        log.info("unloaded %s from %s", replica.model_id, replica.placement.label)
        return engine

    async def close(self) -> None:
        """Stop every engine (loads in progress are cancelled)."""
        for replica in list(self._replicas):
            if replica.task is not None and not replica.task.done():
                replica.task.cancel()
            await self._stop_evicted(replica)
            await self._unload(replica)


PROBE_PROMPT = "Hello"


async def first_generation(engine: Engine) -> None:
    """Generate one greedy token of ``PROBE_PROMPT``: a replica is warmed only once its engine has
    produced a token, so a model the engine loads but cannot run (an attention shape vLLM-CPU has no
    kernel for, say) fails its warmup with the reason instead of failing every request.

    Raises:
        GenerationError (or what the engine raises): the engine cannot generate.
    """
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    prompt = await asyncio.to_thread(engine.encode, PROBE_PROMPT)  # a remote engine's encode blocks
    async for _output in engine.generate(f"probe-{uuid.uuid4().hex}", prompt, params):
        pass
