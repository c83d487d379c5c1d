"""Adapter tracking: which fine-tunes (``ft:`` ids and runtime adapters) requests hold, their
retirement, their checks against their base, and the outcome of their warmups.

A request holds an adapter from acquire to its last token (``hold`` / ``release``). Retiring an
adapter (a deleted fine-tune, an unloaded runtime adapter) hides it at once — new requests get 404
— and unloads it from every engine once the requests holding it have finished, then calls the
retirer's ``on_unloaded`` (e.g. to delete its folder). This is the one place that rule lives: the
services only call ``ModelPool.retire_adapter``, and engines unload when told.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from synthd.engine.protocol import Engine
from synthd.models.adapters import AdapterRef, check_adapter
from synthd.models.replicas import ModelLoadFailed
from synthd.models.resolve import ModelSource
from synthd.models.warmup import WarmupState

log = logging.getLogger(__name__)


class AdapterTracker:
    """Leases, retirement, checks and warmups of adapters (see the module docstring).

    Args:
        engines: the engines an adapter may be resident in (those of the loaded replicas).
    """

    def __init__(self, engines: Callable[[], list[Engine]]) -> None:
        self._engines = engines
        self._leases: dict[str, int] = {}
        self._retired: dict[str, Callable[[], None] | None] = {}
        self._checked: set[tuple[str, str, str]] = set()
        self._warmups: dict[str, asyncio.Task] = {}
        self._errors: dict[str, str] = {}

    # --- leases and retirement ---------------------------------------------------------------------
    def is_retired(self, model_id: str) -> bool:
        """True from ``retire`` until the adapter is unloaded (requests still holding it run on)."""
        return model_id in self._retired

    def hold(self, model_id: str) -> None:
        """A request takes the adapter (with no await since its ``is_retired`` check)."""
        self._leases[model_id] = self._leases.get(model_id, 0) + 1

    def release(self, model_id: str) -> None:
        """A request gives the adapter back; the last one out of a retired adapter unloads it (in
        the background)."""
        self._leases[model_id] -= 1
        if self._leases[model_id] == 0:
            del self._leases[model_id]
            if model_id in self._retired:
                asyncio.get_running_loop().create_task(self._drop(model_id))

    async def retire(self, model_id: str, on_unloaded: Callable[[], None] | None = None) -> None:
        """Hide ``model_id`` now; unload it (then call ``on_unloaded``, in a thread) once unheld."""
        self._retired[model_id] = on_unloaded
        self._errors.pop(model_id, None)
        if self._leases.get(model_id, 0) == 0:
            await self._drop(model_id)

    async def _drop(self, model_id: str) -> None:
        for engine in self._engines():
            await engine.remove_lora(model_id)
        on_unloaded = self._retired.pop(model_id, None)
        self._checked = {k for k in self._checked if k[0] != model_id}
        if on_unloaded is not None:
            await asyncio.to_thread(on_unloaded)

    # --- checks ------------------------------------------------------------------------------------
    async def check(self, adapter: AdapterRef, source: ModelSource) -> None:
        """``check_adapter`` once per (adapter, its folder, the base's folder), off the loop.

        Raises:
            ModelLoadFailed: the folder went away or is unreadable. AdapterMismatch,
            UnsupportedAdapter: as ``check_adapter``.
        """
        key = (adapter.model_id, str(adapter.path), str(source.path))
        if key not in self._checked:
            try:
                await asyncio.to_thread(check_adapter, adapter.path, source.path)
            except OSError as exc:
                raise ModelLoadFailed(adapter.model_id, f"its adapter folder cannot be read ({exc})") from None
            self._checked.add(key)

    # --- warmups -----------------------------------------------------------------------------------
    def warmup_state(self, model_id: str) -> tuple[WarmupState, str | None]:
        """Of the adapter's last warmup: ``warming`` while it runs, ``failed`` with its reason,
        else ``cold`` (whether it is resident is the replicas' to say)."""
        task = self._warmups.get(model_id)
        if task is not None and not task.done():
            return WarmupState.WARMING, None
        if (error := self._errors.get(model_id)) is not None:
            return WarmupState.FAILED, error
        return WarmupState.COLD, None

    def start_warmup(self, model_id: str, load: Callable[[], Awaitable[None]]) -> None:
        """Run ``load`` in the background as the adapter's warmup; an exception it raises becomes
        the adapter's warmup error (its message, or its type and text)."""

        async def run() -> None:
            try:
                await load()
                self._errors.pop(model_id, None)
            except Exception as exc:  # noqa: BLE001  recorded as the fine-tune's warmup error
                self._errors[model_id] = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"

        self._warmups[model_id] = asyncio.create_task(run())

    def close(self) -> None:
        """Cancel warmups in progress."""
        for task in self._warmups.values():
            task.cancel()
