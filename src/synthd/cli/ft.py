"""``synthd files`` and ``synthd ft``: the files and fine-tuning API from the terminal (openai SDK)."""

import json
import time
from pathlib import Path
from typing import Annotated

import openai
import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from synthd.cli.common import ApiKey, BaseUrl, CLIError, console, server_url

files_app = typer.Typer(help="Upload and manage files.", no_args_is_help=True)
ft_app = typer.Typer(help="Create and follow fine-tuning jobs (SFT, DPO with LoRA).", no_args_is_help=True)
TERMINAL = ("succeeded", "failed", "cancelled")


def client(base_url: str | None, api_key: str | None) -> openai.OpenAI:
    """An SDK client for the server."""
    return openai.OpenAI(base_url=server_url(base_url), api_key=api_key or "none", max_retries=0)


def guarded(call):
    """Run ``call``; turn SDK errors into ``CLIError`` with the server's message."""
    try:
        return call()
    except openai.APIConnectionError as exc:
        raise CLIError(
            f"cannot reach {exc.request.url.scheme}://{exc.request.url.netloc.decode()}: "
            "is 'synthd serve' running? (--base-url / SYNTH_API_URL)"
        ) from None
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        raise CLIError(f"{exc.status_code}: {body.get('message', str(exc))}") from None


@files_app.command("upload")
def upload(
    path: Annotated[Path, typer.Argument(help="JSONL file.", exists=True, dir_okay=False)],
    purpose: Annotated[str, typer.Option(help="OpenAI purpose.")] = "fine-tune",
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Upload a file. Example: synthd files upload train.jsonl"""
    record = guarded(
        lambda: client(base_url, api_key).files.create(file=(path.name, path.read_bytes()), purpose=purpose)
    )
    console.print(f"{record.id}  {escape(record.filename)}  {record.bytes} bytes  purpose={record.purpose}")


@ft_app.command("create")
def create(
    training_file: Annotated[str, typer.Option(help="File id (file-…) or a local JSONL path to upload first.")],
    model: Annotated[str, typer.Option(help="Base model.")] = "SmolLM2-135M-Instruct",
    method: Annotated[str, typer.Option(help="supervised | dpo")] = "supervised",
    n_epochs: Annotated[int | None, typer.Option(min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    learning_rate_multiplier: Annotated[float | None, typer.Option(min=0.0)] = None,
    beta: Annotated[float | None, typer.Option(min=0.0, help="DPO only.")] = None,
    suffix: Annotated[str | None, typer.Option()] = None,
    validation_file: Annotated[
        str | None, typer.Option(help="File id or local JSONL path: valid_loss during training.")
    ] = None,
    from_checkpoint: Annotated[
        str | None, typer.Option(help="Continue from a job (ftjob-…[:step]) or an ft: model.")
    ] = None,
    n_checkpoints: Annotated[int | None, typer.Option(min=1, help="Checkpoints kept (each a servable model).")] = None,
    wandb_project: Annotated[str | None, typer.Option(help="Log the run to this Weights & Biases project.")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU preference, e.g. A100 or L40S:2.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job with a progress bar and the loss.")] = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Create a fine-tuning job. Example: synthd ft create --training-file train.jsonl --wait"""
    if method not in ("supervised", "dpo"):
        raise CLIError(f"--method must be supervised or dpo, not '{method}'")
    api = client(base_url, api_key)

    def file_id(value: str) -> str:
        if not Path(value).is_file():
            return value
        return guarded(
            lambda: api.files.create(file=(Path(value).name, Path(value).read_bytes()), purpose="fine-tune")
        ).id

    hyper = {
        k: v
        for k, v in {
            "n_epochs": n_epochs,
            "batch_size": batch_size,
            "learning_rate_multiplier": learning_rate_multiplier,
            "beta": beta,
        }.items()
        if v is not None
    }
    extra = {
        k: v
        for k, v in {"gpu_preference": gpu, "from_checkpoint": from_checkpoint, "n_checkpoints": n_checkpoints}.items()
        if v is not None
    }
    integrations = [{"type": "wandb", "wandb": {"project": wandb_project}}] if wandb_project else openai.omit
    job = guarded(
        lambda: api.fine_tuning.jobs.create(
            model=model,
            training_file=file_id(training_file),
            suffix=suffix,
            integrations=integrations,
            validation_file=file_id(validation_file) if validation_file else openai.omit,
            method={"type": method, method: {"hyperparameters": hyper}},
            extra_body=extra or None,
        )
    )
    console.print(f"{job.id}  status={job.status}  gpu={job.model_extra.get('gpu')}")
    if wait:
        follow(api, job.id)


def follow(api: openai.OpenAI, job_id: str) -> None:
    """Poll a job until it ends, showing steps and the latest loss."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("waiting", total=None)
        while True:
            job = guarded(lambda: api.fine_tuning.jobs.retrieve(job_id))
            events = guarded(lambda: api.fine_tuning.jobs.list_events(job_id, limit=10)).data
            latest = next(
                (e.data for e in events if e.data and "train_loss" in e.data and "total_steps" in e.data), None
            )
            if latest:
                progress.update(
                    task,
                    total=latest["total_steps"],
                    completed=latest["step"],
                    description=f"{job.status} loss={latest['train_loss']:.4f}",
                )
            else:
                progress.update(task, description=job.status)
            if job.status in TERMINAL:
                break
            time.sleep(1)
    if job.status != "succeeded":
        raise CLIError(f"job {job_id} {job.status}: {job.error.message if job.error else ''}")
    console.print(f"succeeded: {job.fine_tuned_model} ({job.trained_tokens} trained tokens)")


@ft_app.command("list")
def list_jobs(
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20, base_url: BaseUrl = None, api_key: ApiKey = None
) -> None:
    """List jobs, newest first."""
    jobs = guarded(lambda: client(base_url, api_key).fine_tuning.jobs.list(limit=limit)).data
    table = Table("id", "model", "method", "status", "fine_tuned_model")
    for job in jobs:
        table.add_row(job.id, job.model, job.method.type if job.method else "", job.status, job.fine_tuned_model or "")
    console.print(table)


@ft_app.command("get")
def get(job_id: str, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Print one job as JSON."""
    job = guarded(lambda: client(base_url, api_key).fine_tuning.jobs.retrieve(job_id))
    print(json.dumps(job.model_dump(), indent=2))


@ft_app.command("events")
def events(
    job_id: str,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """A job's events, oldest first."""
    page = guarded(lambda: client(base_url, api_key).fine_tuning.jobs.list_events(job_id, limit=limit)).data
    for event in reversed(page):
        console.print(
            f"{time.strftime('%H:%M:%S', time.localtime(event.created_at))}  {event.message}", highlight=False
        )


@ft_app.command("cancel")
def cancel(job_id: str, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Cancel a job."""
    job = guarded(lambda: client(base_url, api_key).fine_tuning.jobs.cancel(job_id))
    console.print(f"{job.id}  status={job.status}")


@ft_app.command("pause")
def pause(job_id: str, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Pause a job: it saves a checkpoint and frees its devices. Example: synthd ft pause ftjob-…"""
    job = guarded(lambda: client(base_url, api_key).fine_tuning.jobs.pause(job_id))
    console.print(f"{job.id}  status={job.status}")


@ft_app.command("resume")
def resume(job_id: str, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Resume a paused job from its newest checkpoint."""
    job = guarded(lambda: client(base_url, api_key).fine_tuning.jobs.resume(job_id))
    console.print(f"{job.id}  status={job.status}")


@ft_app.command("checkpoints")
def checkpoints(job_id: str, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """A succeeded job's checkpoints, newest first: each is a model you can chat with."""
    page = guarded(lambda: client(base_url, api_key).fine_tuning.jobs.checkpoints.list(job_id, limit=100)).data
    table = Table("step", "fine_tuned_model_checkpoint", "train_loss", "valid_loss")
    for item in page:
        m = item.metrics
        table.add_row(
            str(item.step_number),
            item.fine_tuned_model_checkpoint,
            f"{m.train_loss:.4f}" if m.train_loss is not None else "",
            f"{m.valid_loss:.4f}" if m.valid_loss is not None else "",
        )
    console.print(table)
