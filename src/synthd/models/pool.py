"""The models this process serves: placement, warmup, lazy loading, idle unload and LRU eviction.

Every model has a slot with a warmup status: ``cold → warming → warmed`` (or ``failed`` with the
reason). Loads run in a worker thread; concurrent warmups or requests for one model share a single
load. Inference on a cold model loads it first (the request waits). A model idle for longer than
``idle_timeout_s`` is unloaded, and loading beyond ``max_loaded_models`` evicts the least recently
used idle model.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from synthd.engine.native.detokenize import TextAssembler
from synthd.engine.native.loaded import LoadedModel, load_model
from synthd.engine.native.sampling import SamplerState, SamplingParams
from synthd.engine.native.sequence import Sequence, SequenceEvent
from synthd.gpus.inventory import Device
from synthd.gpus.memory import MemoryEstimate, ModelShape, estimate_memory
from synthd.gpus.selection import Placement, SelectionError, select_placement
from synthd.gpus.spec import AUTO, GPUPreference
from synthd.models.adapters import AdapterRef
from synthd.models.resolve import (
    ModelNotFound,
    ModelSource,
    canonical_id,
    resolve_model,
)

COLD, WARMING, WARMED, FAILED = "cold", "warming", "warmed", "failed"
FT_PREFIX = "ft:"
AdapterLookup = Callable[[str], AdapterRef | None]


def is_fine_tune(model: str) -> bool:
    """True for ``ft:`` model ids."""
    return model.startswith(FT_PREFIX)


class ModelLoadError(RuntimeError):
    """Loading a model failed; the message says why."""


@dataclass
class ModelSlot:
    """One model's warmup state. Times are ``time.monotonic()`` seconds; ``load_seconds`` wall time."""

    model_id: str
    status: str = COLD
    placement: Placement | None = None
    loaded: LoadedModel | None = None
    load_seconds: float | None = None
    error: str | None = None
    last_used: float = 0.0
    task: asyncio.Task | None = None
    adapter: str | None = None

    @property
    def gpu(self) -> str | None:
        """The placement label (``cpu``, ``H100:2``) once chosen."""
        return self.placement.label if self.placement else None

    @property
    def in_flight(self) -> int:
        """Sequences running or waiting in its engine."""
        return self.loaded.engine.num_running + self.loaded.engine.num_waiting if self.loaded else 0


@dataclass(frozen=True)
class Served:
    """What a request runs on: the resident base, its placement, and the adapter (None: base)."""

    loaded: LoadedModel
    placement: Placement
    model_id: str
    adapter: str | None = None


class ModelManager:
    """Resolves, places, loads and unloads models.

    Args:
        models_dir: where converted models live (``$SYNTHD_HOME/models``).
        inventory: the deployment's devices (see ``synthd.gpus.inventory``).
        dtype, max_num_seqs, max_model_len: passed to ``load_model``.
        idle_timeout_s: unload a model unused for this long (None: never).
        max_loaded_models: most resident models; the least recently used idle one is evicted.
        on_finish: called with (model id, sequence) once per finished sequence (metrics).
        adapter_lookup: finds a fine-tune (``ft:`` id) → its base and adapter folder.
        max_loaded_adapters: resident LoRA adapters per base; the least recently used idle one goes.
    """

    def __init__(
        self,
        models_dir: Path,
        inventory: list[Device],
        *,
        dtype: str = "auto",
        max_num_seqs: int = 64,
        max_model_len: int | None = None,
        idle_timeout_s: float | None = None,
        max_loaded_models: int = 4,
        on_finish: Callable[[str, Sequence], None] | None = None,
        adapter_lookup: AdapterLookup | None = None,
        max_loaded_adapters: int = 8,
    ) -> None:
        self.models_dir = models_dir
        self.inventory = inventory
        self.dtype = dtype
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.idle_timeout_s = idle_timeout_s
        self.max_loaded_models = max_loaded_models
        self._on_finish = on_finish
        self.adapter_lookup = adapter_lookup
        self.max_loaded_adapters = max_loaded_adapters
        self._slots: dict[str, ModelSlot] = {}

    # --- lookups ---------------------------------------------------------------------------
    def adapter(self, model: str) -> AdapterRef:
        """The fine-tune ``model`` (an ``ft:`` id). Raises ModelNotFound."""
        ref = self.adapter_lookup(model) if self.adapter_lookup else None
        if ref is None:
            raise ModelNotFound(f"The model '{model}' does not exist.")
        return ref

    def resolve(self, model: str) -> ModelSource:
        """Local weights for ``model`` (a fine-tune's are its base's). Raises ModelNotFound."""
        if is_fine_tune(model):
            return resolve_model(self.adapter(model).base_model, self.models_dir)
        return resolve_model(model, self.models_dir)

    def slot(self, model: str) -> ModelSlot:
        """The model's slot (a fresh ``cold`` one if never seen). A fine-tune whose base or
        adapter has since been unloaded reads ``cold``."""
        model_id = canonical_id(model)
        slot = self._slots.get(model_id) or ModelSlot(model_id)
        if slot.adapter and slot.status == WARMED and (
                slot.loaded is None or slot.loaded not in self.resident() or slot.adapter not in slot.loaded.adapters):
            slot.status, slot.loaded, slot.adapter, slot.placement = COLD, None, None, None
        return slot

    def resident(self) -> list[LoadedModel]:
        """Loaded base models, in load order."""
        return [s.loaded for s in self._slots.values() if s.loaded is not None and s.adapter is None]

    def busy_devices(self, except_model: str | None = None) -> set[str]:
        """Keys of devices held by resident or loading models other than ``except_model``."""
        return {d.key for s in self._slots.values() if s.placement and s.model_id != except_model
                and s.adapter is None and s.status in (WARMING, WARMED) for d in s.placement.devices}

    def estimate(self, model: str, purpose: str = "inference") -> MemoryEstimate:
        """Memory ``model`` needs for ``purpose``, from its ``config.json``. Raises ModelNotFound."""
        source = self.resolve(model)
        config = json.loads((source.path / "config.json").read_text())
        shape = ModelShape.from_config(config)
        dtype_bytes = 4 if self.dtype == "float32" else 2
        context = min(shape.max_position_embeddings, self.max_model_len or shape.max_position_embeddings)
        return estimate_memory(shape, purpose, dtype_bytes=dtype_bytes, context=context if purpose == "inference" else None)

    def plan(self, model: str, preference: GPUPreference, purpose: str = "inference") -> tuple[Placement, MemoryEstimate]:
        """Where ``model`` would run for ``preference``, without loading anything.

        Raises:
            ModelNotFound: unknown model.
            SelectionError: the preference cannot be met (see ``synthd.gpus.selection``).
        """
        needed = self.estimate(model, purpose)
        base = self.adapter(model).base_model if is_fine_tune(model) else model
        busy = self.busy_devices(except_model=canonical_id(base))
        return select_placement(preference, needed.total_gib, self.inventory, busy), needed

    # --- warmup and use --------------------------------------------------------------------
    async def warmup(self, model: str, preference: GPUPreference = AUTO) -> tuple[str, ModelSlot]:
        """Start loading ``model`` in the background; returns (``warming`` | ``already_warming`` |
        ``already_warmed``, slot).

        Raises:
            ModelNotFound, SelectionError: recorded in the slot as ``failed`` and re-raised.
        """
        model_id = canonical_id(model)
        if is_fine_tune(model):
            return await self._warmup_fine_tune(model, preference)
        slot = self._slots.setdefault(model_id, ModelSlot(model_id))
        if slot.status == WARMING and self._satisfies(slot, preference):
            return "already_warming", slot
        if slot.status == WARMED and self._satisfies(slot, preference):
            return "already_warmed", slot
        try:
            placement, _ = self.plan(model, preference)
            if placement.remote:
                raise SelectionError(409, "gpu_remote",
                                     f"{placement.label} is a declared cluster device ({placement.devices[0].node}); "
                                     "this process runs models only on its local devices.")
        except ModelNotFound:
            if slot.status == COLD and slot.loaded is None:
                self._slots.pop(model_id, None)  # unknown ids leave nothing behind (answered 404)
            raise
        except SelectionError as exc:
            if slot.loaded is None:
                slot.status, slot.error = FAILED, str(exc)
            raise
        if slot.task is not None and not slot.task.done():
            await asyncio.shield(slot.task)
        previous, slot.status, slot.placement, slot.error, slot.load_seconds = slot.loaded, WARMING, placement, None, None
        slot.task = asyncio.create_task(self._load(slot, model, placement, previous))
        return "warming", slot

    async def acquire(self, model: str, preference: GPUPreference = AUTO) -> Served:
        """The model ready for inference on a placement meeting ``preference``, loading it if cold
        (for a fine-tune: its base, then its adapter).

        Raises:
            ModelNotFound, SelectionError: as for ``warmup``.
            AdapterMismatch: a fine-tune's adapter does not fit its base.
            ModelLoadError: the load failed.
        """
        if is_fine_tune(model):
            return await self._acquire_fine_tune(model, preference)
        slot = self.slot(model)
        if not (slot.status in (WARMING, WARMED) and self._satisfies(slot, preference)):
            _, slot = await self.warmup(model, preference)
        if slot.status == WARMING and slot.task is not None:
            await asyncio.shield(slot.task)
        if slot.status != WARMED or slot.loaded is None or slot.placement is None:
            raise ModelLoadError(f"model '{slot.model_id}' failed to load: {slot.error}")
        slot.last_used = time.monotonic()
        return Served(slot.loaded, slot.placement, slot.model_id)

    async def _acquire_fine_tune(self, model: str, preference: GPUPreference) -> Served:
        ref = self.adapter(model)
        slot = self._slots.setdefault(model, ModelSlot(model))
        if slot.task is not None and not slot.task.done() and asyncio.current_task() is not slot.task:
            await asyncio.shield(slot.task)
        base = await self.acquire(ref.base_model, preference)
        try:
            name = await asyncio.to_thread(base.loaded.ensure_adapter, ref)
        except Exception as exc:
            slot.status, slot.error, slot.loaded, slot.adapter = FAILED, str(exc), None, None
            raise
        slot.status, slot.error, slot.placement, slot.loaded, slot.adapter = WARMED, None, base.placement, base.loaded, name
        slot.last_used = time.monotonic()
        return Served(base.loaded, base.placement, model, name)

    async def _warmup_fine_tune(self, model: str, preference: GPUPreference) -> tuple[str, ModelSlot]:
        ref = self.adapter(model)
        slot = self.slot(model)
        self._slots[model] = slot
        if slot.status == WARMING:
            return "already_warming", slot
        if slot.status == WARMED and self._satisfies(slot, preference):
            return "already_warmed", slot
        placement, _ = self.plan(ref.base_model, preference)
        started = time.perf_counter()
        slot.status, slot.placement, slot.error = WARMING, placement, None

        async def load() -> None:
            try:
                await self._acquire_fine_tune(model, preference)
                slot.load_seconds = time.perf_counter() - started
            except Exception as exc:  # recorded as the slot's reason
                slot.status, slot.error = FAILED, f"{type(exc).__name__}: {exc}"

        slot.task = asyncio.create_task(load())
        return "warming", slot

    def forget_fine_tune(self, model: str) -> None:
        """Unload a fine-tune's adapter wherever it is resident and drop its slot.

        Raises:
            AdapterBusy: requests are using it.
        """
        for loaded in self.resident():
            loaded.remove_adapter(model)
        self._slots.pop(model, None)

    async def evict_idle(self) -> list[str]:
        """Unload models idle longer than ``idle_timeout_s``; return their ids."""
        if self.idle_timeout_s is None:
            return []
        now = time.monotonic()
        idle = [s for s in self._slots.values() if s.adapter is None and s.status == WARMED
                and s.in_flight == 0 and now - s.last_used > self.idle_timeout_s]
        for slot in idle:
            await self._unload(slot)
        return [s.model_id for s in idle]

    async def close(self) -> None:
        """Stop every engine."""
        for slot in list(self._slots.values()):
            if slot.task is not None and not slot.task.done():
                slot.task.cancel()
            await self._unload(slot)

    def _satisfies(self, slot: ModelSlot, preference: GPUPreference) -> bool:
        return preference.is_auto or slot.gpu in {str(o) for o in preference.options}

    async def _load(self, slot: ModelSlot, model: str, placement: Placement, previous: LoadedModel | None) -> None:
        if previous is not None:
            slot.loaded = None
            await asyncio.to_thread(previous.close)
        started = time.perf_counter()
        try:
            await self._make_room(slot.model_id)
            observer = partial(self._on_finish, slot.model_id) if self._on_finish else None
            devices = [d.index for d in placement.devices if d.gpu.name != "cpu"]
            slot.loaded = await asyncio.to_thread(
                load_model, self.resolve(model), dtype=self.dtype, max_num_seqs=self.max_num_seqs,
                max_model_len=self.max_model_len, on_finish=observer, gpu_indices=devices,
                max_adapters=self.max_loaded_adapters,
            )
        except Exception as exc:  # any load failure becomes the slot's reason
            slot.status, slot.error = FAILED, f"{type(exc).__name__}: {exc}"
            return
        slot.status, slot.load_seconds, slot.last_used = WARMED, time.perf_counter() - started, time.monotonic()

    async def _make_room(self, model_id: str) -> None:
        resident = [s for s in self._slots.values()
                    if s.loaded is not None and s.adapter is None and s.model_id != model_id]
        while len(resident) >= self.max_loaded_models:
            idle = [s for s in resident if s.in_flight == 0]
            if not idle:
                raise ModelLoadError(f"{len(resident)} models are resident (max {self.max_loaded_models}) and all are busy")
            victim = min(idle, key=lambda s: s.last_used)
            await self._unload(victim)
            resident.remove(victim)

    async def _unload(self, slot: ModelSlot) -> None:
        if slot.adapter is not None:  # a fine-tune shares its base's engine: only forget it
            slot.loaded, slot.adapter, slot.status, slot.placement = None, None, COLD, None
            return
        loaded, slot.loaded = slot.loaded, None
        if loaded is not None:
            await asyncio.to_thread(loaded.close)
        if slot.status == WARMED:
            slot.status, slot.placement = COLD, None


async def generate(loaded: LoadedModel, prompt_ids: list[int], params: SamplingParams,
                   adapter: str | None = None) -> AsyncIterator[SequenceEvent]:
    """Submit one sequence (on ``adapter``, or the base) and yield its events until the finishing one.

    Closing the iterator early (a client that went away) cancels the sequence in the engine.
    """
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[SequenceEvent] = asyncio.Queue()

    def emit(event: SequenceEvent) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(events.put_nowait, event)

    sequence = Sequence(
        prompt_ids=prompt_ids,
        sampler=SamplerState(params, guide=loaded.guided.guide(params.grammar) if params.grammar else None),
        assembler=TextAssembler(loaded.tokenizer, params.stop),
        emit=emit,
        adapter=adapter,
    )
    loaded.engine.submit(sequence)
    try:
        while True:
            event = await events.get()
            yield event
            if event.finish_reason is not None:
                return
    finally:
        sequence.cancel()
