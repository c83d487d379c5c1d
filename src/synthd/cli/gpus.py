"""``synthd gpus``: the GPU catalog, this deployment's inventory, and preference checks."""

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from synthd.cli.common import console, fail

if TYPE_CHECKING:
    from synthd.gpus.inventory import Device

gpus_app = typer.Typer(
    help="GPU catalog, this machine's (or a Ray cluster's) inventory, and preference checks.",
    invoke_without_command=True,
)
RayAddress = Annotated[
    str | None,
    typer.Option(
        help="Read the inventory from this Ray cluster (auto, HOST:PORT, ray://HOST:PORT) (setting SYNTHD_RAY_ADDRESS)."
    ),
]


def _ray_address(option: str | None) -> str | None:
    """``--ray-address``, else the ``ray_address`` setting."""
    from synthd.config import get_settings

    return option or get_settings().ray_address


def _inventory(ray_address: str | None) -> "tuple[list[Device], dict[str, int] | None]":
    """This deployment's devices and, on a Ray cluster (``ray_address``), Ray's free GPUs per node
    (else None).

    Raises:
        CLIError (through ``fail``): the pool file is unreadable, Ray is missing or unreachable.
    """
    from synthd.config import get_settings
    from synthd.errors import SynthdError
    from synthd.gpus.inventory import InventoryError, build_inventory

    if not ray_address:
        try:
            return build_inventory(get_settings().gpu_pool_file), None
        except InventoryError as exc:
            fail(str(exc))
    try:
        from synthd.cluster.runtime import RayCluster, connect
    except ImportError:
        fail("--ray-address needs Ray: pip install 'synthd[ray]'")
    try:
        connect(ray_address)
    except SynthdError as exc:
        fail(exc.message)
    cluster = RayCluster()
    return list(cluster.inventory), cluster.free_gpus()


@gpus_app.callback()
def gpus_table(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ray_address: RayAddress = None,
) -> None:
    """Show the GPU catalog (memory, list price) and what this deployment has; with --ray-address,
    each node of the Ray cluster with its GPUs, and how many Ray has free.

    Example: synthd gpus --ray-address auto
    """
    if ctx.invoked_subcommand is not None:
        return
    from synthd.gpus.catalog import CATALOG

    ray_address = _ray_address(ray_address)
    inventory, free = _inventory(ray_address)
    nodes: dict[tuple[str, str], int] = {}
    for device in inventory:
        nodes[device.node, device.gpu.name] = nodes.get((device.node, device.gpu.name), 0) + 1
    if as_json:
        print(
            json.dumps(
                {
                    "catalog": [
                        {
                            "name": g.name,
                            "memory_gib": g.memory_gib,
                            "price_per_hour": g.price_per_hour,
                            "aliases": list(g.aliases),
                        }
                        for g in CATALOG
                    ],
                    "inventory": [
                        {
                            "key": d.key,
                            "type": d.gpu.name,
                            "memory_gib": d.gpu.memory_gib,
                            "node": d.node,
                            "remote": d.remote,
                        }
                        for d in inventory
                    ],
                    "nodes": [
                        {
                            "node": node,
                            "type": gpu,
                            "devices": count,
                            "free": None if free is None or gpu == "cpu" else free.get(node, 0),
                        }
                        for (node, gpu), count in nodes.items()
                    ],
                },
                indent=2,
            )
        )
        return
    catalog = Table("type", "memory GiB", "$/GPU-hour", "aliases", title="GPU catalog")
    for gpu in CATALOG:
        catalog.add_row(gpu.name, f"{gpu.memory_gib:g}", f"{gpu.price_per_hour:.2f}", ", ".join(gpu.aliases))
    console.print(catalog)
    if free is not None:
        per_node = Table("node", "type", "devices", "free", "in use", title=f"Ray cluster at {ray_address}")
        for (node, gpu), count in nodes.items():
            idle = count if gpu == "cpu" else free.get(node, 0)
            per_node.add_row(
                node,
                gpu,
                str(count),
                "shared" if gpu == "cpu" else str(idle),
                "-" if gpu == "cpu" else str(count - idle),
            )
        console.print(per_node)
        return
    have = Table("device", "type", "memory GiB", "where", title="This deployment")
    for device in inventory:
        have.add_row(
            device.key, device.gpu.name, f"{device.gpu.memory_gib:g}", "declared pool" if device.remote else "local"
        )
    console.print(have)


@gpus_app.command("validate")
def gpus_validate(
    spec: Annotated[str, typer.Argument(help="GPU preference, e.g. H100:2 or 'H100:2,A100-80GB:2' or auto.")],
    model: Annotated[str, typer.Option(help="Model id or local folder.")] = "SmolLM2-135M-Instruct",
    purpose: Annotated[str, typer.Option(help="inference | sft | dpo")] = "inference",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ray_address: RayAddress = None,
) -> None:
    """Check a GPU preference for a model and purpose without loading anything (exit 1 if unmet).

    Example: synthd gpus validate H100:2 --model ./llama-70b-config --purpose sft
    """
    from synthd.config import get_settings
    from synthd.engine.config import pick_dtype
    from synthd.errors import SynthdError
    from synthd.gpus.planner import PlacementPlanner
    from synthd.models.registry import ModelRegistry
    from synthd.models.resolve import resolve_operator_model
    from synthd.protocol.gpus import GPUValidateRequest
    from synthd.services.gpus import validate_preference

    if purpose not in ("inference", "sft", "dpo"):
        fail(f"--purpose must be inference, sft or dpo, not '{purpose}'")
    settings = get_settings()
    inventory, _ = _inventory(_ray_address(ray_address))
    try:
        source = resolve_operator_model(model, settings.models_dir)
        registry = ModelRegistry(settings.models_dir, [source], lambda _: None, list)
        planner = PlacementPlanner(inventory, lambda device: pick_dtype(settings.dtype, device), settings.max_model_len)
        result = validate_preference(
            planner, registry, GPUValidateRequest(model=source.model_id, gpu_preference=spec, purpose=purpose)
        )
    except SynthdError as exc:
        fail(str(exc))
    if as_json:
        print(result.model_dump_json(indent=2))
    elif result.available:
        console.print(
            f"ok: {model} ({purpose}) would run on {result.selected}: needs {result.required_gib:.1f} GiB, "
            f"offered {result.offered_gib:.1f} GiB"
        )
    else:
        console.print(
            f"valid={result.valid} fits={result.fits} available={result.available} "
            f"required_gib={result.required_gib} offered_gib={result.offered_gib}"
        )
    if not result.available:
        fail(result.reason or "unavailable")
