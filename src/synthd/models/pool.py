"""The models this process serves: resolve a name, lease a replica (and adapter), warm up, retire.

``ModelPool`` is the front of three rooms: ``synthd.models.replicas`` (the replicas of base models:
load, find, scale out, evict), ``synthd.models.adapter_tracker`` (adapter leases, retirement once
unleased, checks, warmups) and ``synthd.models.warmup`` (states and warmup outcomes).

A request holds a **lease** from acquire to its last token: a leased replica is never evicted (idle
timeout or the ``max_loaded_models`` LRU cap), and a leased fine-tune's adapter is never unloaded.
Deleting a fine-tune (or unloading a runtime adapter) retires it at once (new requests get 404)
and unloads its adapter once the requests holding it have finished. Fine-tunes share their base's
replica; the engine loads their LoRA adapters on demand (``engine.generate(..., lora=...)``).
"""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from synthd.config import setting_default
from synthd.engine.config import EngineConfig
from synthd.engine.protocol import Engine, EngineStats, LoRARef
from synthd.gpus.planner import PlacementPlanner
from synthd.gpus.selection import Placement
from synthd.gpus.spec import AUTO, GPUPreference
from synthd.models.adapter_tracker import AdapterTracker
from synthd.models.adapters import AdapterRef
from synthd.models.autoscaling import AutoscalingConfig
from synthd.models.registry import ModelRegistry
from synthd.models.replicas import EngineFactory, LocalEngineFactory, Replica, ReplicaSet
from synthd.models.resolve import ModelNotFound, ModelSource
from synthd.models.warmup import ModelStatus, WarmupOutcome, WarmupState

DEFAULT_AUTOSCALING = AutoscalingConfig()


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
    """Replicas of base models, adapters, and the leases on them (see the module docstring).

    Args:
        registry: what may be served. planner: where a replica may go.
        engine_kind: ``native`` or ``vllm`` (already chosen). engine_config: how engines are built
            (default: ``EngineConfig()``).
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
        engine_config: EngineConfig | None = None,
        max_loaded_models: int = setting_default("max_loaded_models"),
        idle_timeout_s: float | None = setting_default("model_idle_timeout_s"),
        engine_factory: EngineFactory | None = None,
        autoscaling: AutoscalingConfig = DEFAULT_AUTOSCALING,
    ) -> None:
        self.registry = registry
        self.planner = planner
        self._replicas = ReplicaSet(
            planner,
            engine_factory or LocalEngineFactory(engine_kind, engine_config or EngineConfig()),
            max_loaded_models=max_loaded_models,
            idle_timeout_s=idle_timeout_s,
            autoscaling=autoscaling,
        )
        self._adapters = AdapterTracker(self._replicas.engines)

    # --- what services and the API ask -----------------------------------------------------------
    def replicas(self, model: str | None = None) -> list[Replica]:
        """Resident or loading replicas (of ``model``'s base id when given), oldest first."""
        return self._replicas.all(model)

    def busy_devices(self) -> set[str]:
        """Keys of GPUs held by replicas (the CPU is shared: see ``cpu_held_gib``)."""
        return self._replicas.busy_devices()

    def cpu_held_gib(self) -> float:
        """Memory (GiB) the replicas on the CPU hold, by the planner's estimates."""
        return self._replicas.cpu_held_gib()

    def loaded_models(self) -> list[str]:
        """Ids of the base models with at least one loaded replica, sorted (``/ready``)."""
        return sorted({r.model_id for r in self._replicas.all() if r.engine is not None})

    def engine_stats(self) -> list[tuple[str, EngineStats]]:
        """(model id, stats) of every loaded replica, oldest first (``/metrics``)."""
        return [(r.model_id, r.engine.stats()) for r in self._replicas.all() if r.engine is not None]

    async def resolve(self, model: str) -> tuple[ModelSource, AdapterRef | None]:
        """The base weights (and the adapter, for an ``ft:`` id or a runtime adapter) ``model`` names.

        Raises:
            InvalidRequest: malformed id. ModelNotFound: unknown, or a fine-tune being retired.
        """
        if self.registry.is_adapter(model):
            ref = await asyncio.to_thread(self.registry.fine_tune, model)
            if self._adapters.is_retired(ref.model_id):
                raise ModelNotFound.hidden(model)
            return await asyncio.to_thread(self.registry.base, ref.base_model), ref
        return await asyncio.to_thread(self.registry.base, model), None

    def status(self, model_id: str, preference: GPUPreference = AUTO) -> ModelStatus:
        """The warmup state of a canonical model id (``cold`` when nothing is known of it), over its
        replicas on placements ``preference`` names (all of them for ``auto``)."""
        if self.registry.is_adapter(model_id):
            return self._adapter_status(model_id)
        return self._replicas.status(model_id, preference)

    def _adapter_status(self, model_id: str) -> ModelStatus:
        """``warmed`` where a replica has it resident, else its last warmup's state."""
        holder = self._replicas.holding(model_id)
        if holder is not None:
            placement = holder.placement
            return ModelStatus(model_id, WarmupState.WARMED, placement.label, placement.node, holder.load_seconds)
        state, error = self._adapters.warmup_state(model_id)
        return ModelStatus(model_id, state, error=error)

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
        replica = await self._replicas.find_or_start(source, preference)
        if adapter is not None and self._adapters.is_retired(adapter.model_id):
            raise ModelNotFound.hidden(adapter.model_id)
        # Both leases are taken here, with no await since the retired check: a retirement from now
        # on waits for this request before its adapter is unloaded and its folder removed.
        self._replicas.scale_out(source, replica)
        lease = self._lease(replica, adapter.model_id if adapter else source.model_id, adapter)
        try:
            await replica.ready()
            if adapter is not None:
                await self._adapters.check(adapter, source)
        except BaseException:
            lease.release()
            raise
        return lease

    def _lease(self, replica: Replica, model_id: str, adapter: AdapterRef | None) -> Lease:
        replica.leases += 1
        if adapter is not None:
            self._adapters.hold(adapter.model_id)
        return Lease(replica, model_id, LoRARef(adapter.model_id, adapter.path) if adapter else None, self._release)

    def _release(self, lease: Lease) -> None:
        lease.replica.leases -= 1
        lease.replica.last_used = time.monotonic()
        if lease.lora is not None:
            self._adapters.release(lease.lora.name)

    async def warmup(self, model: str, preference: GPUPreference = AUTO) -> tuple[WarmupOutcome, ModelStatus]:
        """Start loading ``model`` (a fine-tune: its base, then its adapter) in the background;
        returns what this call did and the model's status.

        Raises:
            as ``acquire``'s first steps: unknown model, unmet preference, no room.
        """
        source, adapter = await self.resolve(model)
        if adapter is not None:
            return await self._warmup_adapter(adapter, source, preference)
        replica = self._replicas.find(source.model_id, preference)
        if replica is not None:
            return WarmupOutcome.found(replica.state), self.status(source.model_id, preference)
        replica, created = await self._replicas.start(source, preference)
        outcome = WarmupOutcome.WARMING if created else WarmupOutcome.found(replica.state)
        return outcome, self.status(source.model_id, preference)

    async def _warmup_adapter(
        self, adapter: AdapterRef, source: ModelSource, preference: GPUPreference
    ) -> tuple[WarmupOutcome, ModelStatus]:
        current = self._adapter_status(adapter.model_id)
        if current.state == WarmupState.WARMED and self._replicas.find(source.model_id, preference) is not None:
            return WarmupOutcome.ALREADY_WARMED, current
        if current.state == WarmupState.WARMING:
            return WarmupOutcome.ALREADY_WARMING, current
        replica = await self._replicas.find_or_start(source, preference)
        lease = self._lease(replica, adapter.model_id, None)

        async def load() -> None:
            try:
                await replica.ready()
                await self._adapters.check(adapter, source)
                await lease.engine.add_lora(LoRARef(adapter.model_id, adapter.path))
            finally:
                lease.release()

        self._adapters.start_warmup(adapter.model_id, load)
        placement = replica.placement
        return WarmupOutcome.WARMING, ModelStatus(
            adapter.model_id, WarmupState.WARMING, placement.label, placement.node
        )

    # --- retire, evict, close --------------------------------------------------------------------
    def is_retiring(self, model_id: str) -> bool:
        """True while a retired adapter waits for the requests holding it to end."""
        return self._adapters.is_retired(model_id)

    async def retire_adapter(self, model_id: str, on_unloaded: Callable[[], None] | None = None) -> None:
        """Stop serving a fine-tune or runtime adapter: new requests get 404 at once; its adapter is
        unloaded (and then ``on_unloaded`` called, e.g. to delete its folder) when the requests
        holding it end."""
        await self._adapters.retire(model_id, on_unloaded)

    async def evict_idle(self) -> list[str]:
        """See ``ReplicaSet.evict_idle``."""
        return await self._replicas.evict_idle()

    def lost(self, engine: Engine, reason: str) -> None:
        """See ``ReplicaSet.lost``."""
        self._replicas.lost(engine, reason)

    async def close(self) -> None:
        """Stop every engine (loads and adapter warmups in progress are cancelled)."""
        self._adapters.close()
        await self._replicas.close()
