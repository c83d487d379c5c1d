"""Tables and JSON for ``synthd bench`` results."""

import json
import math
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from synthd.bench.runner import LevelResult


def load_label(result: LevelResult) -> str:
    """``c=8`` for a concurrency level, ``4/s`` (or ``inf/s``) for a request-rate level."""
    if result.request_rate is None:
        return f"c={result.concurrency}"
    return "inf/s" if math.isinf(result.request_rate) else f"{result.request_rate:g}/s"


def results_table(results: list[LevelResult], title: str = "synthd bench") -> Table:
    """One row per (server, GPU preference, load); times in milliseconds. Goodput and cold/warm TTFT
    columns appear when some result has them."""
    goodput = any(r.goodput_share is not None for r in results)
    prefix = any(r.ttft_warm_s is not None for r in results)
    table = Table(title=title)
    columns = [
        "server",
        "gpu",
        "load",
        "ok/fail",
        "out tok/s",
        "req/s",
        "TTFT mean",
        "TTFT p50",
        "TTFT p99",
        "TPOT mean",
        "TPOT p99",
        "ITL p50",
        "ITL p99",
        "E2E mean",
        "E2E p99",
    ]
    columns += ["goodput req/s", "goodput %"] if goodput else []
    columns += ["prompt tok", "TTFT cold p50", "TTFT warm p50"] if prefix else []
    for column in columns:
        table.add_column(column, justify="left" if column in ("server", "gpu") else "right")
    for r in results:
        ms = lambda seconds: f"{seconds * 1000:.1f}"
        row = [
            r.label,
            r.gpu_preference or "-",
            load_label(r),
            f"{r.completed}/{r.failed}",
            f"{r.output_tokens_per_s:.1f}",
            f"{r.requests_per_s:.2f}",
            ms(r.ttft_s.mean),
            ms(r.ttft_s.p50),
            ms(r.ttft_s.p99),
            ms(r.tpot_s.mean),
            ms(r.tpot_s.p99),
            ms(r.itl_s.p50),
            ms(r.itl_s.p99),
            ms(r.e2e_s.mean),
            ms(r.e2e_s.p99),
        ]
        if goodput:
            row += (
                ["-", "-"]
                if r.goodput_share is None
                else [f"{r.goodput_requests_per_s:.2f}", f"{100 * r.goodput_share:.0f}"]
            )
        if prefix:
            row += [
                f"{r.prompt_tokens_mean:.0f}",
                ms(r.ttft_cold_s.p50) if r.ttft_cold_s else "-",
                ms(r.ttft_warm_s.p50) if r.ttft_warm_s else "-",
            ]
        table.add_row(*row)
    return table


def print_report(results: list[LevelResult], console: Console) -> None:
    """Print the table and any request errors."""
    console.print(results_table(results))
    for r in results:
        for error in r.errors:
            console.print(f"[yellow]{escape(f'{r.label} {load_label(r)}: {error}')}[/yellow]")


def write_json(results: list[LevelResult], path: Path) -> None:
    """Write ``[LevelResult.to_dict(), ...]`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_dict() for r in results], indent=2))
