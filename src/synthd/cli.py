"""The ``synthd`` command line (Typer). User errors print one line and exit 1."""

import json
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="synthd: a self-hostable LLM backend speaking the OpenAI API.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
models_app = typer.Typer(help="Pull and list models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
from synthd.ft_cli import CLIError, files_app, ft_app  # noqa: E402

app.add_typer(files_app, name="files")
app.add_typer(ft_app, name="ft")
gpus_app = typer.Typer(help="GPU catalog, this machine's inventory, and preference checks.", invoke_without_command=True)
app.add_typer(gpus_app, name="gpus")
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit 1."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def default_base_url() -> str:
    """``SYNTH_API_URL`` (with ``/v1`` appended when missing) or the local default."""
    from synthd.config import synthd_api_url

    return synthd_api_url()


@models_app.command("pull")
def models_pull(force: Annotated[bool, typer.Option(help="Convert again even if cached.")] = False) -> None:
    """Fetch the embedded model (SmolLM2-135M-Instruct) and cache it as a Hugging Face folder.

    Example: synthd models pull
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from synthd.config import get_settings
    from synthd.engine.embedded import PullError, is_pulled, pull_embedded_model

    models_dir = get_settings().models_dir
    if is_pulled(models_dir) and not force:
        console.print(f"SmolLM2-135M-Instruct is already cached in {models_dir}")
        return
    stages = 5
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("[{task.completed}/{task.total}]"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("starting", total=stages)
        stage = iter(range(stages))

        def step(message: str) -> None:
            progress.update(task, description=message, completed=next(stage, stages))

        try:
            folder = pull_embedded_model(models_dir, step, force=force)
        except PullError as exc:
            fail(str(exc))
        progress.update(task, description="done", completed=stages)
    console.print(f"SmolLM2-135M-Instruct ready in {folder}")


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the embedded model and the models cached locally (synthd home and Hugging Face cache)."""
    from synthd.config import get_settings
    from synthd.engine.catalog import available_models

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
    path: Annotated[Path, typer.Argument(help="PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).")],
    base: Annotated[str, typer.Option(help="Base model the adapter was trained on.")] = "SmolLM2-135M-Instruct",
    name: Annotated[str, typer.Option(help="Name; served as ft:<base>:<name> (or as given if it starts with ft:).")] = "",
) -> None:
    """Register an adapter trained elsewhere as a servable fine-tuned model.

    Example: synthd models import ./my-adapter --base SmolLM2-135M-Instruct --name support-bot
    """
    import shutil

    from synthd.config import get_settings
    from synthd.engine.adapters import AdapterMismatch, check_adapter
    from synthd.engine.resolve import ModelNotFound, canonical_id, resolve_model
    from synthd.store.db import open_database
    from synthd.store.repository import Repository

    settings = get_settings()
    if not name or any(c in name for c in "/\\") or name in (".", ".."):
        fail("--name is required and must not contain '/'")
    try:
        source = resolve_model(base, settings.models_dir)
        check_adapter(path, source.path)
    except (ModelNotFound, AdapterMismatch) as exc:
        fail(str(exc))
    base_id = canonical_id(source.model_id)
    model_id = name if name.startswith("ft:") else f"ft:{base_id}:{name}"
    repo = Repository(open_database(settings.home, settings.database_url), settings.home / "files")
    if repo.get_model(model_id) is not None:
        fail(f"'{model_id}' already exists; delete it first (DELETE /v1/models/{model_id})")
    target = settings.home / "adapters" / f"imported-{model_id.replace(':', '_')}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(path, target)
    repo.add_model(model_id, base_id, str(target), None)
    console.print(f"imported {model_id} (adapter {target})")


@app.command()
def serve(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Model to serve; repeat for several.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Require this bearer token (else SYNTH_API_KEY).")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="Most sequences per batch.", min=1)] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context cap in tokens.", min=16)] = None,
    dtype: Annotated[str | None, typer.Option(help="auto | bfloat16 | float32")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve models over the OpenAI API.

    Example: synthd serve --port 8000 --model SmolLM2-135M-Instruct
    """
    import uvicorn

    from synthd.api.app import build_app
    from synthd.config import get_settings
    from synthd.engine.embedded import EMBEDDED_MODEL_ID
    from synthd.engine.resolve import ModelNotFound, resolve_model

    settings = get_settings()
    models = model or [EMBEDDED_MODEL_ID]
    if dtype not in (None, "auto", "bfloat16", "float32"):
        fail(f"--dtype must be auto, bfloat16 or float32, not '{dtype}'")
    for name in models:
        try:
            resolve_model(name, settings.models_dir)
        except ModelNotFound as exc:
            fail(str(exc))
    overrides = {k: v for k, v in {"max_num_seqs": max_num_seqs, "max_model_len": max_model_len, "dtype": dtype}.items() if v is not None}
    application = build_app(models, api_key or settings.api_key, **overrides)
    uvicorn.run(application, host=host, port=port, log_level=log_level)


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="Model id, e.g. SmolLM2-135M-Instruct.")],
    prompt: Annotated[str | None, typer.Argument(help="One-shot prompt; omit for an interactive session.")] = None,
    base_url: Annotated[str | None, typer.Option(help="Server URL (default SYNTH_API_URL or http://127.0.0.1:8000/v1).")] = None,
    api_key: Annotated[str | None, typer.Option(help="Bearer token (default SYNTH_API_KEY).")] = None,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.", min=1)] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.", min=0.0, max=2.0)] = 0.7,
) -> None:
    """Chat with a model on a running server, streamed to the terminal.

    Examples: synthd chat SmolLM2-135M-Instruct "What is the capital of France?"
              synthd chat SmolLM2-135M-Instruct      (interactive; empty line or Ctrl-D quits)
    """
    from synthd.chat import ChatSession, ChatError

    session = ChatSession(model, base_url or default_base_url(), api_key or os.environ.get("SYNTH_API_KEY"),
                          system=system, max_tokens=max_tokens, temperature=temperature)
    try:
        if prompt is not None:
            session.ask(prompt, sys.stdout.write)
            print()
            return
        console.print(f"chatting with {model} at {session.base_url} — empty line or Ctrl-D to quit")
        while True:
            try:
                line = console.input("[bold]you>[/bold] ")
            except EOFError:
                break
            if not line.strip():
                break
            console.print("[bold]model>[/bold] ", end="")
            session.ask(line, sys.stdout.write)
            print()
    except ChatError as exc:
        fail(str(exc))


@app.command()
def bench(
    model: Annotated[str, typer.Option(help="Model id on the server.")] = "SmolLM2-135M-Instruct",
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (…/v1).")] = None,
    api_key: Annotated[str | None, typer.Option(help="Bearer token (default SYNTH_API_KEY).")] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrency levels.")] = "1,8,32",
    requests: Annotated[int, typer.Option(help="Requests per level (at least the concurrency).", min=1)] = 64,
    max_tokens: Annotated[int, typer.Option(help="Output tokens per request.", min=1)] = 64,
    ignore_eos: Annotated[bool, typer.Option(help="Ask for exactly max_tokens (vLLM's ignore_eos).")] = True,
    gpu_preference: Annotated[str | None, typer.Option(help="Comma-separated GPU preferences, one run each.")] = None,
    label: Annotated[str | None, typer.Option(help="Name of this server in the report.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write results as JSON to this file.")] = None,
) -> None:
    """Benchmark an OpenAI-compatible server: output tokens/s, requests/s, TTFT, TPOT, latency.

    Example: synthd bench --base-url http://127.0.0.1:8000/v1 --concurrency 1,8,32 --requests 64
    """
    from synthd.bench.report import print_report, write_json
    from synthd.bench.runner import BenchConfig, BenchError, run_bench

    try:
        levels = [int(x) for x in concurrency.split(",") if x.strip()]
    except ValueError:
        fail(f"--concurrency must be comma-separated integers, not '{concurrency}'")
    if not levels or min(levels) < 1:
        fail("--concurrency needs at least one level >= 1")
    preferences = [p.strip() for p in gpu_preference.split(",")] if gpu_preference else [None]
    config = BenchConfig(base_url=base_url or default_base_url(), model=model,
                         api_key=api_key or os.environ.get("SYNTH_API_KEY"), requests=requests,
                         max_tokens=max_tokens, ignore_eos=ignore_eos)
    try:
        results = run_bench(config, levels, preferences, label=label or config.base_url, progress=err)
    except BenchError as exc:
        fail(str(exc))
    print_report(results, console)
    if json_out:
        write_json(results, json_out)
        console.print(f"wrote {json_out}")


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
    from synthd.api.gpu_serving import validate_preference
    from synthd.api.protocol import GPUValidateRequest
    from synthd.config import get_settings
    from synthd.engine.manager import ModelManager
    from synthd.engine.resolve import ModelNotFound
    from synthd.gpus.inventory import InventoryError, build_inventory

    if purpose not in ("inference", "sft", "dpo"):
        fail(f"--purpose must be inference, sft or dpo, not '{purpose}'")
    settings = get_settings()
    try:
        manager = ModelManager(settings.models_dir, build_inventory(settings.gpu_pool_file), dtype=settings.dtype)
        result = validate_preference(manager, GPUValidateRequest(model=model, gpu_preference=spec, purpose=purpose))
    except (ModelNotFound, InventoryError) as exc:
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


@app.command()
def warmup(
    model: Annotated[str, typer.Argument(help="Model id to load ahead of traffic.")],
    gpu: Annotated[str | None, typer.Option("--gpu", help="GPU preference, e.g. H100 or L40S:2.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the load until it is warmed or failed.")] = False,
    base_url: Annotated[str | None, typer.Option(help="Server URL (default SYNTH_API_URL or http://127.0.0.1:8000/v1).")] = None,
    api_key: Annotated[str | None, typer.Option(help="Bearer token (default SYNTH_API_KEY).")] = None,
) -> None:
    """Warm a model up on a running server, optionally on a chosen GPU.

    Example: synthd warmup SmolLM2-135M-Instruct --gpu cpu --wait
    """
    from synthd.warmup_client import WarmupError, follow_warmup

    try:
        follow_warmup(console, base_url or default_base_url(), model, gpu,
                      api_key or os.environ.get("SYNTH_API_KEY"), wait=wait)
    except WarmupError as exc:
        fail(str(exc))


@app.command("eval")
def eval_(
    models: Annotated[str | None, typer.Option(help="Comma-separated models, e.g. 'SmolLM2-135M-Instruct,"
                                                     "gpt-4o-mini,claude-3-haiku-20240307'. "
                                                     "Default: $TEST_MODEL, else the embedded model.")] = None,
    categories: Annotated[str, typer.Option(help="Comma-separated: math, coding, reasoning, creative. "
                                                 "Default: all.")] = "",
    battery: Annotated[Path | None, typer.Option(help="A .jsonl or .yaml battery instead of the built-in one.")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once (1-256).")] = 4,
    repeats: Annotated[int, typer.Option(help="Times each case is asked (1-100).")] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0-2).")] = 0.0,
    max_tokens: Annotated[int, typer.Option(help="Token cap for cases without their own.")] = 512,
    out: Annotated[Path, typer.Option(help="Folder for report.md, report.json and latency.png.")] = Path("eval-results"),
    base_url: Annotated[str | None, typer.Option(help="synthd server for synthd models (default: $SYNTH_API_URL, "
                                                      "else http://127.0.0.1:8000).")] = None,
    unsafe_sandbox: Annotated[bool, typer.Option("--unsafe-sandbox", help="Where bubblewrap cannot run, run coding "
                                                 "answers under the audit-hook guard alone (not a security "
                                                 "boundary) instead of refusing.")] = False,
) -> None:
    """Run the eval battery (math, coding, reasoning, creative) through the LM client; report pass
    rates and latencies on screen and as Markdown, JSON and a PNG chart in --out.

    Example: synthd eval --models SmolLM2-135M-Instruct,gpt-4o-mini --categories math,coding --out results
    """
    from synthd.eval_cli import run_eval

    run_eval(models, categories, battery, concurrency=concurrency, repeats=repeats, temperature=temperature,
             max_tokens=max_tokens, out=out, base_url=base_url, console=console, unsafe_sandbox=unsafe_sandbox)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port for the demo server (0 picks a free one).")] = 0,
) -> None:
    """Pull the embedded model, start a server, run a short real session through it, stop it."""
    from synthd.demo import DemoError, run_demo

    try:
        run_demo(console, port)
    except DemoError as exc:
        fail(str(exc))


def main() -> None:
    """Entry point: run the Typer app; ``CLIError`` from subcommands becomes a one-line error."""
    try:
        app()
    except CLIError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
