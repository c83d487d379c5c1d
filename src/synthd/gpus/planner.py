"""Placement planning: a model's memory need, in the dtype it would really load in, against the
inventory minus the devices serving and training already hold.

Pure apart from reading ``config.json``: the planner decides, the model pool and the job scheduler
act. Serving holds devices through loaded replicas; training through reservations
(``Reservations``); both count as busy for every new placement.
"""

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from synthd.gpus.inventory import Device
from synthd.gpus.memory import DTYPE_BYTES, MemoryEstimate, ModelShape, estimate_memory
from synthd.gpus.selection import Placement, select_placement
from synthd.gpus.spec import GPUOption, GPUPreference


@dataclass
class Reservations:
    """Devices held by work other than serving (fine-tuning jobs): owner → device keys. Thread-safe."""

    _held: dict[str, frozenset[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reserve(self, owner: str, device_keys: set[str] | frozenset[str]) -> None:
        """Hold ``device_keys`` for ``owner`` (replacing what it held)."""
        with self._lock:
            self._held[owner] = frozenset(device_keys)

    def release(self, owner: str) -> None:
        """Free what ``owner`` held (no-op if nothing)."""
        with self._lock:
            self._held.pop(owner, None)

    def busy(self) -> set[str]:
        """Keys of every reserved device."""
        with self._lock:
            return set().union(*self._held.values()) if self._held else set()

    def holders(self) -> dict[str, frozenset[str]]:
        """A copy of owner → device keys."""
        with self._lock:
            return dict(self._held)


class PlacementPlanner:
    """Plans placements for inference and training.

    Args:
        inventory: the deployment's devices.
        dtype_for: the dtype weights would load in on a device type (``cpu`` or ``cuda``), as the
            engine decides it (``synthd.engine.config.pick_dtype``).
        max_model_len: the serving context cap (None: the model's own), for the KV part of inference.
        reservations: devices held by training.
    """

    def __init__(
        self,
        inventory: list[Device],
        dtype_for: Callable[[str], str],
        max_model_len: int | None = None,
        reservations: Reservations | None = None,
    ) -> None:
        self.inventory = inventory
        self.dtype_for = dtype_for
        self.max_model_len = max_model_len
        self.reservations = reservations or Reservations()

    def estimate(self, model_path: Path, purpose: str, option: GPUOption) -> MemoryEstimate:
        """Memory ``purpose`` needs on ``option``'s device type, from the model's ``config.json``.

        Raises:
            OSError, ValueError: the config cannot be read.
        """
        shape = ModelShape.from_config(json.loads((model_path / "config.json").read_text()))
        dtype = self.dtype_for("cpu" if option.is_cpu else "cuda")
        context = min(shape.max_position_embeddings, self.max_model_len or shape.max_position_embeddings)
        return estimate_memory(
            shape, purpose, dtype_bytes=DTYPE_BYTES.get(dtype, 2), context=context if purpose == "inference" else None
        )

    def plan(
        self,
        model_path: Path,
        preference: GPUPreference,
        purpose: str = "inference",
        serving_busy: set[str] | frozenset[str] = frozenset(),
        cpu_held_gib: float = 0.0,
    ) -> tuple[Placement, MemoryEstimate]:
        """Where the model at ``model_path`` would run for ``preference``; devices in ``serving_busy``
        and those reserved for training are not free, nor the ``cpu_held_gib`` that models loaded on the
        (shared) CPU hold.

        Raises:
            SelectionError: the preference cannot be met (see ``synthd.gpus.selection``).
            OSError, ValueError: the model's config cannot be read.
        """
        busy = set(serving_busy) | self.reservations.busy()
        placement = select_placement(
            preference, lambda o: self.estimate(model_path, purpose, o).total_gib, self.inventory, busy, cpu_held_gib
        )
        return placement, self.estimate(model_path, purpose, placement.option)
