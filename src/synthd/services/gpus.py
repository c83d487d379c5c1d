"""GPU report, preference validation and warmup, between the routes and the model pool."""

import asyncio

from synthd.gpus.catalog import CATALOG
from synthd.gpus.inventory import Device
from synthd.gpus.planner import PlacementPlanner
from synthd.gpus.selection import GPUNotSupported, SelectionError
from synthd.gpus.spec import GPUSpecError, parse_gpu_preference
from synthd.models.pool import ModelPool
from synthd.models.registry import ModelRegistry
from synthd.protocol.gpus import (
    CatalogEntry,
    DeviceEntry,
    GPUReport,
    GPUValidateRequest,
    GPUValidateResponse,
    NodeEntry,
    WarmupResponse,
    WarmupStatus,
)


def gpu_report(pool: ModelPool) -> GPUReport:
    """Catalog, inventory, and which model (or training job) holds which device."""
    holders: dict[str, list[str]] = {}
    for replica in pool.replicas():
        for device in replica.placement.devices:
            holders.setdefault(device.key, []).append(replica.model_id)
    for owner, keys in pool.planner.reservations.holders().items():
        for key in keys:
            holders.setdefault(key, []).append(owner)
    inventory = list(pool.planner.inventory)
    replicas: dict[str, list[str]] = {}
    for replica in pool.replicas():
        replicas.setdefault(replica.model_id, []).append(f"{replica.placement.where} ({replica.state.value})")
    return GPUReport(
        catalog=[
            CatalogEntry(name=g.name, memory_gib=g.memory_gib, price_per_hour=g.price_per_hour, aliases=list(g.aliases))
            for g in CATALOG
        ],
        inventory=[
            DeviceEntry(
                key=d.key,
                type=d.gpu.name,
                memory_gib=d.gpu.memory_gib,
                node=d.node,
                remote=d.remote,
                in_use_by=holders.get(d.key, []),
            )
            for d in inventory
        ],
        nodes=_nodes(inventory, holders),
        in_use={r.model_id: r.placement.label for r in pool.replicas()},
        replicas=replicas,
    )


def _nodes(inventory: list[Device], holders: dict[str, list[str]]) -> list[NodeEntry]:
    """Per node and device type: how many devices, how many free (the CPU is shared: never held
    whole), and who uses them."""
    by_node: dict[tuple[str, str], list[Device]] = {}
    for device in inventory:
        by_node.setdefault((device.node, device.gpu.name), []).append(device)
    entries = []
    for (node, gpu), devices in by_node.items():
        held = [d for d in devices if holders.get(d.key) and not d.gpu.is_cpu]
        users = sorted({owner for d in devices for owner in holders.get(d.key, [])})
        entries.append(
            NodeEntry(node=node, type=gpu, devices=len(devices), free=len(devices) - len(held), in_use_by=users)
        )
    return entries


def validate_preference(
    planner: PlacementPlanner,
    registry: ModelRegistry,
    request: GPUValidateRequest,
    serving_busy: set[str] | frozenset[str] = frozenset(),
    cpu_held_gib: float = 0.0,
) -> GPUValidateResponse:
    """What placement would do for ``request``, without loading anything; ``serving_busy`` and
    ``cpu_held_gib`` are what serving holds (counted for inference, as a replica's start counts them). Blocking.

    Raises:
        ModelNotFound: unknown model. InvalidRequest: malformed model id.
    """
    answer = {"model": request.model, "purpose": request.purpose, "gpu_preference": request.gpu_preference or "auto"}
    try:
        preference = parse_gpu_preference(request.gpu_preference)
    except GPUSpecError as exc:
        return GPUValidateResponse(
            valid=False,
            fits=False,
            available=False,
            selected=None,
            required_gib=None,
            offered_gib=None,
            reason=str(exc),
            **answer,
        )
    source = registry.base(
        registry.fine_tune(request.model).base_model if registry.is_adapter(request.model) else request.model
    )
    try:
        held = cpu_held_gib if request.purpose == "inference" else 0.0
        placement, needed = planner.plan(source.path, preference, request.purpose, serving_busy, held)
    except SelectionError as exc:
        return GPUValidateResponse(
            valid=True,
            fits=not isinstance(exc, GPUNotSupported),
            available=False,
            selected=None,
            required_gib=_round(exc.required_gib),
            offered_gib=_round(exc.offered_gib),
            reason=exc.message,
            **answer,
        )
    return GPUValidateResponse(
        valid=True,
        fits=True,
        available=True,
        selected=placement.label,
        required_gib=_round(needed.total_gib),
        offered_gib=_round(placement.offered_gib),
        reason=None,
        **answer,
    )


async def validate_on_pool(pool: ModelPool, request: GPUValidateRequest) -> GPUValidateResponse:
    """``validate_preference`` against the pool's planner and busy devices, off the event loop."""
    return await asyncio.to_thread(
        validate_preference, pool.planner, pool.registry, request, pool.busy_devices(), pool.cpu_held_gib()
    )


async def start_warmup(
    pool: ModelPool, model: str, body_preference: str | None, header_preference: str | None
) -> WarmupResponse:
    """Begin (or join) the background load of ``model`` (the body's preference wins over the header's).

    Raises:
        GPUSpecError, ModelNotFound, SelectionError, PoolFull: nothing is started.
    """
    preference = parse_gpu_preference(body_preference if body_preference is not None else header_preference)
    outcome, status = await pool.warmup(model, preference)
    return WarmupResponse(status=outcome.value, model=status.model, gpu=status.gpu, node=status.node)


async def warmup_status(pool: ModelPool, model: str, header_preference: str | None = None) -> WarmupStatus:
    """The model's warmup state, on the placements ``header_preference`` names (any when absent).

    Raises:
        ModelNotFound: unknown model. InvalidRequest: malformed id. GPUSpecError: a bad preference.
    """
    preference = parse_gpu_preference(header_preference)
    source, adapter = await pool.resolve(model)
    status = pool.status(adapter.model_id if adapter else source.model_id, preference)
    return WarmupStatus(
        model=status.model,
        status=status.state.value,
        gpu=status.gpu,
        node=status.node,
        load_seconds=_round(status.load_seconds),
        error=status.error,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
