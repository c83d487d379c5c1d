"""Devices held by running work (a training job, and for serving whatever the model pool reserves),
so placement never hands one device to two owners.

One ``Reservations`` object per server process, shared by the job scheduler and the model pool:
``busy()`` is what ``select_placement(busy=...)`` takes. Keys are ``Device.key`` strings
(``local/H100#0``). The host CPU is never reserved: training and serving share it.
"""

import threading
from collections.abc import Iterable

from synthd.errors import Conflict


class ReservationConflict(Conflict):
    """A device asked for is already held by another owner."""


class Reservations:
    """Thread-safe registry ``owner → device keys``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, frozenset[str]] = {}

    def reserve(self, owner: str, keys: Iterable[str]) -> None:
        """Hold ``keys`` for ``owner`` (adding to what it holds already).

        Raises:
            ReservationConflict: a key is held by another owner; nothing is reserved then.
        """
        wanted = frozenset(keys)
        with self._lock:
            taken = {key for other, held in self._held.items() if other != owner for key in held} & wanted
            if taken:
                raise ReservationConflict(f"Devices {', '.join(sorted(taken))} are reserved by other work.",
                                          param="gpu_preference", code="gpu_busy")
            self._held[owner] = self._held.get(owner, frozenset()) | wanted

    def release(self, owner: str) -> frozenset[str]:
        """Free everything ``owner`` holds; returns those keys (empty if none)."""
        with self._lock:
            return self._held.pop(owner, frozenset())

    def held(self, owner: str) -> frozenset[str]:
        """Keys ``owner`` holds."""
        with self._lock:
            return self._held.get(owner, frozenset())

    def busy(self, except_owner: str | None = None) -> set[str]:
        """Every reserved key, except those of ``except_owner``."""
        with self._lock:
            return {key for owner, held in self._held.items() if owner != except_owner for key in held}
