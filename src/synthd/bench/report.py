"""Tables and JSON for ``synthd bench`` results."""

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from synthd.bench.runner import LevelResult


def results_table(results: list[LevelResult], title: str = "synthd bench") -> Table:
    """One row per (server, GPU preference, concurrency); times in milliseconds."""
    table = Table(title=title)
    for column in ("server", "gpu", "conc", "ok/fail", "out tok/s", "req/s", "TTFT mean", "TTFT p50",
                   "TTFT p99", "TPOT mean", "TPOT p99", "ITL p50", "E2E mean", "E2E p99"):
        table.add_column(column, justify="left" if column in ("server", "gpu") else "right")
    for r in results:
        ms = lambda seconds: f"{seconds * 1000:.1f}"  # noqa: E731
        table.add_row(
            r.label, r.gpu_preference or "-", str(r.concurrency), f"{r.completed}/{r.failed}",
            f"{r.output_tokens_per_s:.1f}", f"{r.requests_per_s:.2f}",
            ms(r.ttft_s.mean), ms(r.ttft_s.p50), ms(r.ttft_s.p99), ms(r.tpot_s.mean), ms(r.tpot_s.p99),
            ms(r.itl_s.p50), ms(r.e2e_s.mean), ms(r.e2e_s.p99),
        )
    return table


def print_report(results: list[LevelResult], console: Console) -> None:
    """Print the table and any request errors."""
    console.print(results_table(results))
    for r in results:
        for error in r.errors:
            console.print(f"[yellow]{r.label} c={r.concurrency}: {error}[/yellow]")


def write_json(results: list[LevelResult], path: Path) -> None:
    """Write ``[LevelResult.to_dict(), ...]`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_dict() for r in results], indent=2))
