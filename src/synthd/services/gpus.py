"""GPU report, preference validation and warmup, between the routes and the manager."""

from synthd.gpus.catalog import CATALOG
from synthd.gpus.selection import SelectionError
from synthd.gpus.spec import GPUSpecError, parse_gpu_preference
from synthd.models.pool import ModelManager
from synthd.models.resolve import canonical_id
from synthd.protocol.gpus import (
    CatalogEntry,
    DeviceEntry,
    GPUReport,
    GPUValidateRequest,
    GPUValidateResponse,
    WarmupResponse,
    WarmupStatus,
)


def gpu_report(manager: ModelManager) -> GPUReport:
    """Catalog, inventory, and which model holds which device."""
    holders: dict[str, list[str]] = {}
    for loaded in manager.resident():
        slot = manager.slot(loaded.model_id)
        for device in slot.placement.devices if slot.placement else ():
            holders.setdefault(device.key, []).append(loaded.model_id)
    return GPUReport(
        catalog=[CatalogEntry(name=g.name, memory_gib=g.memory_gib, price_per_hour=g.price_per_hour, aliases=list(g.aliases))
                 for g in CATALOG],
        inventory=[DeviceEntry(key=d.key, type=d.gpu.name, memory_gib=d.gpu.memory_gib, node=d.node, remote=d.remote,
                               in_use_by=holders.get(d.key, [])) for d in manager.inventory],
        in_use={m.model_id: manager.slot(m.model_id).gpu or "" for m in manager.resident()},
    )


def validate_preference(manager: ModelManager, request: GPUValidateRequest) -> GPUValidateResponse:
    """What selection would do for ``request``, without loading anything.

    Raises:
        ModelNotFound: unknown model (answered as 404).
    """
    answer = {"model": request.model, "purpose": request.purpose, "gpu_preference": request.gpu_preference or "auto"}
    try:
        preference = parse_gpu_preference(request.gpu_preference)
    except GPUSpecError as exc:
        return GPUValidateResponse(valid=False, fits=False, available=False, selected=None, required_gib=None,
                                   offered_gib=None, reason=str(exc), **answer)
    try:
        placement, needed = manager.plan(request.model, preference, request.purpose)
    except SelectionError as exc:
        fits = exc.code != "gpu_not_supported"
        return GPUValidateResponse(valid=True, fits=fits, available=False, selected=None,
                                   required_gib=_round(exc.required_gib), offered_gib=_round(exc.offered_gib),
                                   reason=exc.message, **answer)
    return GPUValidateResponse(valid=True, fits=True, available=True, selected=placement.label,
                               required_gib=_round(needed.total_gib), offered_gib=_round(placement.offered_gib),
                               reason=None, **answer)


async def start_warmup(manager: ModelManager, model: str, body_preference: str | None,
                       header_preference: str | None) -> WarmupResponse:
    """Begin (or join) the background load of ``model``.

    Raises:
        GPUSpecError, ModelNotFound, SelectionError: the status then reads ``failed`` with the reason.
    """
    preference = parse_gpu_preference(body_preference if body_preference is not None else header_preference)
    status, slot = await manager.warmup(model, preference)
    return WarmupResponse(status=status, model=slot.model_id, gpu=slot.gpu)


def warmup_status(manager: ModelManager, model: str) -> WarmupStatus:
    """The model's warmup state; an unknown model is a 404.

    Raises:
        ModelNotFound: never seen and not resolvable.
    """
    slot = manager.slot(model)
    if slot.status == "cold":
        manager.resolve(model)
    return WarmupStatus(model=canonical_id(model), status=slot.status, gpu=slot.gpu,
                        load_seconds=_round(slot.load_seconds), error=slot.error)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
