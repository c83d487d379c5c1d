"""``synthd gpus``: the GPU catalog, this deployment's inventory, and preference checks."""

import json
from typing import Annotated

import typer
from rich.table import Table

from synthd.cli.common import console, fail

gpus_app = typer.Typer(help="GPU catalog, this machine's inventory, and preference checks.", invoke_without_command=True)


@gpus_app.callback()

def gpus_table(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the GPU catalog (memory, list price) and what this deployment has.

    Example: synthd gpus
    """
    if ctx.invoked_subcommand is not None:
        return
    from synthd.config import get_settings
    from synthd.gpus.catalog import CATALOG
    from synthd.gpus.inventory import InventoryError, build_inventory

    try:
        inventory = build_inventory(get_settings().gpu_pool_file)
    except InventoryError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps({
            "catalog": [{"name": g.name, "memory_gib": g.memory_gib, "price_per_hour": g.price_per_hour,
                         "aliases": list(g.aliases)} for g in CATALOG],
            "inventory": [{"key": d.key, "type": d.gpu.name, "memory_gib": d.gpu.memory_gib, "remote": d.remote}
                          for d in inventory],
        }, indent=2))
        return
    catalog = Table("type", "memory GiB", "$/GPU-hour", "aliases", title="GPU catalog")
    for gpu in CATALOG:
        catalog.add_row(gpu.name, f"{gpu.memory_gib:g}", f"{gpu.price_per_hour:.2f}", ", ".join(gpu.aliases))
    console.print(catalog)
    have = Table("device", "type", "memory GiB", "where", title="This deployment")
    for device in inventory:
        have.add_row(device.key, device.gpu.name, f"{device.gpu.memory_gib:g}", "declared pool" if device.remote else "local")
    console.print(have)

@gpus_app.command("validate")

def gpus_validate(
    spec: Annotated[str, typer.Argument(help="GPU preference, e.g. H100:2 or 'H100:2,A100-80GB:2' or auto.")],
    model: Annotated[str, typer.Option(help="Model id or local folder.")] = "SmolLM2-135M-Instruct",
    purpose: Annotated[str, typer.Option(help="inference | sft | dpo")] = "inference",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check a GPU preference for a model and purpose without loading anything (exit 1 if unmet).

    Example: synthd gpus validate H100:2 --model ./llama-70b-config --purpose sft
    """
    from synthd.config import get_settings
    from synthd.engine.config import pick_dtype
    from synthd.errors import SynthdError
    from synthd.gpus.inventory import InventoryError, build_inventory
    from synthd.gpus.planner import PlacementPlanner
    from synthd.models.registry import ModelRegistry
    from synthd.models.resolve import resolve_operator_model
    from synthd.protocol.gpus import GPUValidateRequest
    from synthd.services.gpus import validate_preference

    if purpose not in ("inference", "sft", "dpo"):
        fail(f"--purpose must be inference, sft or dpo, not '{purpose}'")
    settings = get_settings()
    try:
        source = resolve_operator_model(model, settings.models_dir)
        registry = ModelRegistry(settings.models_dir, [source], lambda _: None, list)
        planner = PlacementPlanner(build_inventory(settings.gpu_pool_file),
                                   lambda device: pick_dtype(settings.dtype, device), settings.max_model_len)
        result = validate_preference(planner, registry, GPUValidateRequest(model=source.model_id, gpu_preference=spec,
                                                                           purpose=purpose))
    except (SynthdError, InventoryError) as exc:
        fail(str(exc))
    if as_json:
        print(result.model_dump_json(indent=2))
    elif result.available:
        console.print(f"ok: {model} ({purpose}) would run on {result.selected}: needs {result.required_gib:.1f} GiB, "
                      f"offered {result.offered_gib:.1f} GiB")
    else:
        console.print(f"valid={result.valid} fits={result.fits} available={result.available} "
                      f"required_gib={result.required_gib} offered_gib={result.offered_gib}")
    if not result.available:
        fail(result.reason or "unavailable")
