"""The models this process serves: replicas, warmup state, leases, idle unload and LRU eviction.

A base model runs as one or more **replicas**, each an engine on one placement (``cpu``, ``H100:2``):
a request for the same model with another GPU preference gets (or starts) a replica there and never
tears down one that streams are using. Each replica's state is a ``WarmupState``: ``cold →
warming → warmed`` (or ``failed`` with the reason). Loads run in a worker thread; concurrent
warmups or requests for one model share one load.

A request holds a **lease** from acquire to its last token: a leased replica is never evicted (idle
timeout or the ``max_loaded_models`` LRU cap), and a leased fine-tune's adapter is never unloaded.
Deleting a fine-tune (or unloading a runtime adapter) retires it at once (new requests get 404)
and unloads its adapter once the requests holding it have finished. Fine-tunes share their base's replica; the engine loads their
LoRA adapters on demand (``engine.generate(..., lora=...)``).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from synthd.engine.config import EngineConfig
from synthd.engine.factory import create_engine
from synthd.engine.protocol import Engine, LoRARef
from synthd.errors import InvalidRequest, Overloaded, SynthdError
from synthd.gpus.catalog import CPU_NAME
from synthd.gpus.planner import PlacementPlanner
from synthd.gpus.selection import GPUUnavailable, Placement
from synthd.gpus.spec import AUTO, GPUPreference
from synthd.models.adapters import AdapterRef, check_adapter
from synthd.models.autoscaling import AutoscalingConfig
from synthd.models.registry import ModelRegistry
from synthd.models.resolve import ModelNotFound, ModelSource

log = logging.getLogger(__name__)
POOL_FULL_RETRY_AFTER_S = 5


class WarmupState(StrEnum):
    """A model's readiness, as ``/warmup/status`` reports it."""

    COLD = "cold"
    WARMING = "warming"
    WARMED = "warmed"
    FAILED = "failed"


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


@dataclass(frozen=True)
class LocalEngineFactory:
    """Engines in this process (``create_engine``) on the placement's CUDA ordinals (none: CPU)."""

    kind: str = "native"
    config: EngineConfig = EngineConfig()

    def __call__(self, model_id: str, path: Path, placement: Placement) -> tuple[Engine, Placement]:
        """See ``EngineFactory``."""
        devices = [d.index for d in placement.devices if d.gpu.name != CPU_NAME]
        engine = create_engine(self.kind, model_id, path, self.config, devices, placement.offered_gib * 1024**3)
        return engine, placement


@dataclass(eq=False)
class Replica:
    """One engine of one base model on one placement. Times: ``time.monotonic()`` seconds, except
    ``created`` (Unix seconds) and ``load_seconds`` (wall time of the load)."""

    model_id: str
    source: ModelSource
    placement: Placement
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


@dataclass(frozen=True)
class ModelStatus:
    """What ``/warmup/status`` and ``/v1/models`` say of a model."""

    model: str
    state: WarmupState
    gpu: str | None = None
    node: str | None = None
    load_seconds: float | None = None
    error: str | None = None


@dataclass(eq=False)
class Lease:
    """A request's hold on a replica (and, for a fine-tune, its adapter) until ``release``."""

    replica: Replica
    model_id: str
    lora: LoRARef | None
    _release: Callable[["Lease"], None]
    released: bool = False

    @property
    def engine(self) -> Engine:
        """The engine to generate with."""
        assert self.replica.engine is not None
        return self.replica.engine

    @property
    def placement(self) -> Placement:
        """Where it runs."""
        return self.replica.placement

    def release(self) -> None:
        """Give the lease back (idempotent)."""
        if not self.released:
            self.released = True
            self._release(self)


class ModelPool:
    """Replicas of base models and the leases on them (see the module docstring).

    Args:
        registry: what may be served. planner: where a replica may go.
        engine_kind: ``native`` or ``vllm`` (already chosen). engine_config: how engines are built.
        max_loaded_models: most replicas resident; the least recently used idle one is unloaded.
        idle_timeout_s: unload a replica unused this long (None: never).
        engine_factory: builds engines (default: ``LocalEngineFactory(engine_kind, engine_config)``).
        autoscaling: replica bounds per model and placement label.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        planner: PlacementPlanner,
        *,
        engine_kind: str = "native",
        engine_config: EngineConfig = EngineConfig(),
        max_loaded_models: int = 4,
        idle_timeout_s: float | None = None,
        engine_factory: EngineFactory | None = None,
        autoscaling: AutoscalingConfig = AutoscalingConfig(),
    ) -> None:
        self.registry = registry
        self.planner = planner
        self.engine_kind = engine_kind
        self.engine_config = engine_config
        self.engine_factory = engine_factory or LocalEngineFactory(engine_kind, engine_config)
        self.autoscaling = autoscaling
        self.max_loaded_models = max_loaded_models
        self.idle_timeout_s = idle_timeout_s
        self._scaling: set[tuple[str, str]] = set()
        self._replicas: list[Replica] = []
        self._failed: dict[str, str] = {}
        self._adapter_leases: dict[str, int] = {}
        self._retired: dict[str, Callable[[], None] | None] = {}
        self._checked_adapters: set[tuple[str, str, str]] = set()
        self._fine_tune_warmups: dict[str, asyncio.Task] = {}
        self._fine_tune_errors: dict[str, str] = {}

    # --- lookups ---------------------------------------------------------------------------------
    def replicas(self, model: str | None = None) -> list[Replica]:
        """Resident or loading replicas (of ``model``'s base id when given), oldest first."""
        return [r for r in self._replicas if model is None or r.model_id == model]

    def busy_devices(self) -> set[str]:
        """Keys of GPUs held by replicas (the CPU is shared, never busy)."""
        return {d.key for r in self._replicas for d in r.placement.devices if d.gpu.name != CPU_NAME}

    async def resolve(self, model: str) -> tuple[ModelSource, AdapterRef | None]:
        """The base weights (and the adapter, for an ``ft:`` id or a runtime adapter) ``model`` names.

        Raises:
            InvalidRequest: malformed id. ModelNotFound: unknown, or a fine-tune being deleted.
        """
        if self.registry.is_adapter(model):
            ref = await asyncio.to_thread(self.registry.fine_tune, model)
            if ref.model_id in self._retired:
                raise ModelNotFound.hidden(model)
            return await asyncio.to_thread(self.registry.base, ref.base_model), ref
        return await asyncio.to_thread(self.registry.base, model), None

    def status(self, model_id: str, preference: GPUPreference = AUTO) -> ModelStatus:
        """The warmup state of a canonical model id (``cold`` when nothing is known of it), over its
        replicas on placements ``preference`` names (all of them for ``auto``)."""
        if self.registry.is_adapter(model_id):
            return self._fine_tune_status(model_id)
        labels = {str(o) for o in preference.options}
        replicas = [r for r in self.replicas(model_id) if preference.is_auto or r.placement.label in labels]
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
        return ModelStatus(
            model_id, best.state, best.placement.label, best.placement.devices[0].node, best.load_seconds, best.error
        )

    def _fine_tune_status(self, model_id: str) -> ModelStatus:
        task = self._fine_tune_warmups.get(model_id)
        holders = [r for r in self._replicas if r.engine is not None and model_id in r.engine.list_loras()]
        if holders:
            replica = holders[0]
            return ModelStatus(
                model_id,
                WarmupState.WARMED,
                replica.placement.label,
                replica.placement.devices[0].node,
                replica.load_seconds,
            )
        if task is not None and not task.done():
            return ModelStatus(model_id, WarmupState.WARMING)
        if (error := self._fine_tune_errors.get(model_id)) is not None:
            return ModelStatus(model_id, WarmupState.FAILED, error=error)
        return ModelStatus(model_id, WarmupState.COLD)

    # --- acquire and warm up ---------------------------------------------------------------------
    async def acquire(self, model: str, preference: GPUPreference = AUTO) -> Lease:
        """A lease on a warmed replica of ``model`` (a fine-tune: of its base, with its adapter)
        meeting ``preference``, starting and awaiting a load when none exists.

        Raises:
            InvalidRequest, ModelNotFound: unknown or malformed model. ModelLoadFailed: the load or
            the adapter check failed. SelectionError, GPUSpecError: the preference cannot be met.
            PoolFull: no room for another replica.
        """
        source, adapter = await self.resolve(model)
        replica = self._find(source.model_id, preference) or await self._start(source, preference)
        if adapter is not None and adapter.model_id in self._retired:
            raise ModelNotFound.hidden(adapter.model_id)
        # Both leases are taken here, with no await since the retired check: a delete from now on
        # waits for this request before its adapter is unloaded and its folder removed.
        self._scale_out(source, replica)
        replica.leases += 1
        if adapter is not None:
            self._adapter_leases[adapter.model_id] = self._adapter_leases.get(adapter.model_id, 0) + 1
        lease = Lease(
            replica,
            adapter.model_id if adapter else source.model_id,
            LoRARef(adapter.model_id, adapter.path) if adapter else None,
            self._release,
        )
        try:
            if replica.task is not None and not replica.task.done():
                await asyncio.shield(replica.task)
            if replica.state != WarmupState.WARMED:
                raise ModelLoadFailed(source.model_id, replica.error or "unknown error")
            if adapter is not None:
                await self._check_adapter(adapter, source)
        except BaseException:
            lease.release()
            raise
        return lease

    async def warmup(self, model: str, preference: GPUPreference = AUTO) -> tuple[str, ModelStatus]:
        """Start loading ``model`` (a fine-tune: its base, then its adapter) in the background;
        returns (``warming`` | ``already_warming`` | ``already_warmed``, status).

        Raises:
            as ``acquire``'s first steps: unknown model, unmet preference, no room.
        """
        source, adapter = await self.resolve(model)
        if adapter is not None:
            return await self._warmup_fine_tune(adapter, source, preference)
        replica = self._find(source.model_id, preference)
        if replica is not None:
            outcome = "already_warmed" if replica.state == WarmupState.WARMED else "already_warming"
            return outcome, self.status(source.model_id, preference)
        replica, created = await self._start_or_join(source, preference)
        if created:
            return "warming", self.status(source.model_id, preference)
        outcome = "already_warmed" if replica.state == WarmupState.WARMED else "already_warming"
        return outcome, self.status(source.model_id, preference)

    async def _warmup_fine_tune(
        self, adapter: AdapterRef, source: ModelSource, preference: GPUPreference
    ) -> tuple[str, ModelStatus]:
        current = self._fine_tune_status(adapter.model_id)
        if current.state == WarmupState.WARMED and self._find(source.model_id, preference) is not None:
            return "already_warmed", current
        if current.state == WarmupState.WARMING:
            return "already_warming", current
        replica = self._find(source.model_id, preference) or await self._start(source, preference)
        replica.leases += 1

        async def load() -> None:
            lease = Lease(replica, adapter.model_id, None, self._release)
            try:
                if replica.task is not None:
                    await asyncio.shield(replica.task)
                if replica.state != WarmupState.WARMED:
                    raise ModelLoadFailed(source.model_id, replica.error or "unknown error")
                await self._check_adapter(adapter, source)
                await lease.engine.add_lora(LoRARef(adapter.model_id, adapter.path))
                self._fine_tune_errors.pop(adapter.model_id, None)
            except Exception as exc:  # recorded as the fine-tune's warmup error
                self._fine_tune_errors[adapter.model_id] = (
                    getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                )
            finally:
                lease.release()

        self._fine_tune_warmups[adapter.model_id] = asyncio.create_task(load())
        return "warming", ModelStatus(
            adapter.model_id, WarmupState.WARMING, replica.placement.label, replica.placement.node
        )

    def _find(self, model_id: str, preference: GPUPreference) -> Replica | None:
        """A loading or warmed replica meeting ``preference``, least leased first."""
        labels = {str(o) for o in preference.options}
        fitting = [
            r
            for r in self.replicas(model_id)
            if r.state in (WarmupState.WARMING, WarmupState.WARMED)
            and (preference.is_auto or r.placement.label in labels)
        ]
        return min(fitting, key=lambda r: (r.state != WarmupState.WARMED, r.leases), default=None)

    def _group(self, replica: Replica) -> list[Replica]:
        """Loading or warmed replicas of ``replica``'s model on its placement label."""
        return [
            r
            for r in self.replicas(replica.model_id)
            if r.placement.label == replica.placement.label and r.state in (WarmupState.WARMING, WarmupState.WARMED)
        ]

    def _scale_out(self, source: ModelSource, replica: Replica) -> None:
        """Start another replica of ``replica``'s group in the background when the requests in
        flight (this one included) call for more than the group has."""
        group = self._group(replica)
        key = (replica.model_id, replica.placement.label)
        wanted = self.autoscaling.desired_replicas(sum(r.leases for r in group) + 1)
        if len(group) >= wanted or key in self._scaling:
            return
        self._scaling.add(key)

        async def start() -> None:
            try:
                added = await self._start(source, GPUPreference((replica.placement.option,)), another=True)
                log.info(
                    "scaling %s on %s out to %d replicas (%s)", key[0], key[1], len(group) + 1, added.placement.where
                )
            except SynthdError as exc:
                log.info("cannot scale %s on %s out: %s", key[0], key[1], exc.message)
            finally:
                self._scaling.discard(key)

        asyncio.get_running_loop().create_task(start())

    async def _start(self, source: ModelSource, preference: GPUPreference, another: bool = False) -> Replica:
        """The replica ``_start_or_join`` started or joined."""
        return (await self._start_or_join(source, preference, another))[0]

    async def _start_or_join(
        self, source: ModelSource, preference: GPUPreference, another: bool = False
    ) -> tuple[Replica, bool]:
        """Plan a placement and start loading a replica there; returns it and whether this call
        started it. Planning runs in a thread; the result is checked again afterwards, so two
        concurrent starts never share a GPU or load one model twice (the later one joins the
        earlier's replica, unless ``another`` asks for one more replica of a group)."""
        for _ in range(3):
            try:
                placement, _ = await asyncio.to_thread(
                    self.planner.plan, source.path, preference, "inference", self.busy_devices()
                )
            except (OSError, ValueError) as exc:
                self._failed[source.model_id] = f"cannot read its config.json: {exc}"
                raise ModelLoadFailed(source.model_id, self._failed[source.model_id]) from None
            if placement.remote:
                raise GPUUnavailable(
                    f"{placement.label} is a declared cluster device ({placement.devices[0].node}); "
                    "this process runs models only on its local devices."
                )
            existing = None if another else self._find(source.model_id, preference)
            if existing is not None:  # another request started one while we planned
                return existing, False
            if not {d.key for d in placement.devices} & self.busy_devices():
                break
        replica = Replica(source.model_id, source, placement)
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
            replica.engine, replica.placement = await asyncio.to_thread(
                self.engine_factory, replica.model_id, replica.source.path, replica.placement
            )
        except Exception as exc:  # any load failure becomes the replica's (and the model's) reason
            log.warning("loading %s failed: %s", replica.model_id, exc)
            replica.state, replica.error = WarmupState.FAILED, f"{type(exc).__name__}: {exc}"
            self._failed[replica.model_id] = replica.error
            self._replicas.remove(replica)
            return
        replica.state, replica.load_seconds = WarmupState.WARMED, time.perf_counter() - started
        replica.last_used = time.monotonic()

    async def _check_adapter(self, adapter: AdapterRef, source: ModelSource) -> None:
        key = (adapter.model_id, str(adapter.path), str(source.path))
        if key not in self._checked_adapters:
            try:
                await asyncio.to_thread(check_adapter, adapter.path, source.path)
            except OSError as exc:  # the folder went away or is unreadable
                raise ModelLoadFailed(adapter.model_id, f"its adapter folder cannot be read ({exc})") from None
            self._checked_adapters.add(key)

    # --- release, retire, evict --------------------------------------------------------------------
    def _release(self, lease: Lease) -> None:
        lease.replica.leases -= 1
        lease.replica.last_used = time.monotonic()
        if lease.lora is None:
            return
        name = lease.lora.name
        self._adapter_leases[name] -= 1
        if self._adapter_leases[name] == 0:
            del self._adapter_leases[name]
            if name in self._retired:
                asyncio.get_running_loop().create_task(self._drop_adapter(name))

    def is_retiring(self, model_id: str) -> bool:
        """True while a retired adapter waits for the requests holding it to end."""
        return model_id in self._retired

    async def retire_fine_tune(self, model_id: str, on_unloaded: Callable[[], None] | None = None) -> None:
        """Stop serving a fine-tune or runtime adapter: new requests get 404 at once; its adapter is
        unloaded (and then ``on_unloaded`` called, e.g. to delete its folder) when the requests
        holding it end."""
        self._retired[model_id] = on_unloaded
        self._fine_tune_errors.pop(model_id, None)
        if self._adapter_leases.get(model_id, 0) == 0:
            await self._drop_adapter(model_id)

    async def _drop_adapter(self, model_id: str) -> None:
        for replica in list(self._replicas):
            if replica.engine is not None:
                await replica.engine.remove_lora(model_id)
        on_unloaded = self._retired.pop(model_id, None)
        self._checked_adapters = {k for k in self._checked_adapters if k[0] != model_id}
        if on_unloaded is not None:
            await asyncio.to_thread(on_unloaded)

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
        for task in self._fine_tune_warmups.values():
            task.cancel()
        for replica in list(self._replicas):
            if replica.task is not None and not replica.task.done():
                replica.task.cancel()
            await self._stop_evicted(replica)
            await self._unload(replica)
