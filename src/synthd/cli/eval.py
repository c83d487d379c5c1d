"""``synthd eval``: run the eval battery against models through the ``LM`` client."""

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from synthd.cli.common import CLIError, console
from synthd.config import DEFAULT_SYNTH_API_URL
from synthd.models.shipped import EMBEDDED_MODEL_ID


def default_models() -> list[str]:
    """``TEST_MODEL`` if set, else the embedded model."""
    return [os.environ.get("TEST_MODEL") or EMBEDDED_MODEL_ID]


def run_eval(
    models: str | None,
    categories: str,
    battery: Path | None,
    *,
    concurrency: int,
    repeats: int,
    temperature: float,
    max_tokens: int,
    out: Path,
    console: Console,
    base_url: str | None = None,
    unsafe_sandbox: bool = False,
) -> None:
    """Load the battery, open the models (skipping those without credentials), run every case under a
    progress bar, write ``report.json``, ``report.md`` and ``latency.png`` to ``out`` and print the
    report. ``models`` and ``categories`` are comma-separated. Raises ``CLIError`` on bad input, and
    when coding cases are selected but bubblewrap cannot run here, unless ``unsafe_sandbox``."""
    from synthd.evals.battery import BUILTIN_BATTERY, BatteryError, CodeCheck, load_battery, select_categories
    from synthd.evals.bubblewrap import bubblewrap_support
    from synthd.evals.output import write_report
    from synthd.evals.report import build_report, render
    from synthd.evals.runner import EvalSettings, open_models, run_attempts

    names = [m.strip() for m in models.split(",") if m.strip()] if models is not None else default_models()
    if not names:
        raise CLIError("--models is empty")
    for option, value, low, high in (
        ("--concurrency", concurrency, 1, 256),
        ("--repeats", repeats, 1, 100),
        ("--temperature", temperature, 0.0, 2.0),
        ("--max-tokens", max_tokens, 1, 10**6),
    ):
        if not low <= value <= high:
            raise CLIError(f"{option} must be between {low} and {high}, got {value}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot use {out} for the report: {exc}") from None
    try:
        cases = select_categories(
            load_battery(battery) if battery else BUILTIN_BATTERY,
            [c.strip() for c in categories.split(",") if c.strip()],
        )
    except BatteryError as exc:
        raise CLIError(str(exc)) from None
    if not cases:
        raise CLIError(f"the battery has no case in the categories {categories}")
    if any(isinstance(case.check, CodeCheck) for case in cases):
        support = bubblewrap_support()
        if support.bubblewrap is None and not unsafe_sandbox:
            raise CLIError(
                f"coding cases run model-written code under bubblewrap, and {support.reason}; install "
                "bubblewrap, leave coding out with --categories, or pass --unsafe-sandbox to run the code "
                "under the audit-hook guard alone"
            )
        if support.bubblewrap is None:
            console.print(
                f"[yellow]warning:[/yellow] --unsafe-sandbox: coding answers run under the audit-hook "
                f"guard alone, without bubblewrap ({support.reason})",
                highlight=False,
                soft_wrap=True,
            )
    settings = EvalSettings(
        concurrency=concurrency,
        repeats=repeats,
        temperature=temperature,
        max_tokens=max_tokens,
        unsafe_sandbox=unsafe_sandbox,
    )
    with console.status("opening models…"):
        lms, skipped = open_models(names, synthd_base_url=base_url)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("evaluating", total=len(lms) * len(cases) * repeats)
        attempts = asyncio.run(run_attempts(lms, cases, settings, lambda _: progress.advance(task)))
    report = build_report(
        attempts,
        skipped,
        battery=str(battery) if battery else "builtin",
        cases=len(cases),
        categories=[c.category for c in cases],
        settings=settings,
    )
    try:
        write_report(report, out)
    except OSError as exc:
        raise CLIError(f"cannot write the report to {out}: {exc}") from None
    render(console, report, out)
    if not lms:
        raise CLIError("no model could be evaluated: every model was skipped (reasons above)")


def eval_(
    models: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated models, e.g. 'SmolLM2-135M-Instruct,"
            "gpt-4o-mini,claude-3-haiku-20240307'. "
            "Default: $TEST_MODEL, else the embedded model."
        ),
    ] = None,
    categories: Annotated[
        str, typer.Option(help="Comma-separated: math, coding, reasoning, creative. Default: all.")
    ] = "",
    battery: Annotated[Path | None, typer.Option(help="A .jsonl or .yaml battery instead of the built-in one.")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once (1-256).")] = 4,
    repeats: Annotated[int, typer.Option(help="Times each case is asked (1-100).")] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0-2).")] = 0.0,
    max_tokens: Annotated[int, typer.Option(help="Token cap for cases without their own.")] = 512,
    out: Annotated[Path, typer.Option(help="Folder for report.md, report.json and latency.png.")] = Path(
        "eval-results"
    ),
    base_url: Annotated[
        str | None,
        typer.Option(help=f"synthd server for synthd models (default: $SYNTH_API_URL, else {DEFAULT_SYNTH_API_URL})."),
    ] = None,
    unsafe_sandbox: Annotated[
        bool,
        typer.Option(
            "--unsafe-sandbox",
            help="Where bubblewrap cannot run, run coding "
            "answers under the audit-hook guard alone (not a security "
            "boundary) instead of refusing.",
        ),
    ] = False,
) -> None:
    """Run the eval battery (math, coding, reasoning, creative) through the LM client; report pass
    rates and latencies on screen and as Markdown, JSON and a PNG chart in --out.

    Example: synthd eval --models SmolLM2-135M-Instruct,gpt-4o-mini --categories math,coding --out results
    """
    run_eval(
        models,
        categories,
        battery,
        concurrency=concurrency,
        repeats=repeats,
        temperature=temperature,
        max_tokens=max_tokens,
        out=out,
        base_url=base_url,
        console=console,
        unsafe_sandbox=unsafe_sandbox,
    )
