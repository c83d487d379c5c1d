"""The eval report: numbers computed from the attempts, never typed in; Markdown, JSON and Rich.

Definitions: ``total`` counts attempts (cases × repeats); ``success_rate`` is ``passed / total``,
so a provider error counts against it but is listed apart from wrong answers; latency statistics
(mean, fastest, slowest, in seconds) cover the attempts that got a reply.
"""

import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from synthd.evals.battery import CATEGORIES, Category
from synthd.evals.runner import Attempt, EvalSettings, Skipped


class LatencyStats(BaseModel):
    """Reply latency in seconds over the attempts that got a reply; ``None`` where none did."""

    mean_s: float | None
    fastest_s: float | None
    slowest_s: float | None

    @classmethod
    def of(cls, attempts: Sequence[Attempt]) -> "LatencyStats":
        """Statistics of ``attempts``' latencies."""
        seconds = [a.latency_s for a in attempts if a.latency_s is not None]
        if not seconds:
            return cls(mean_s=None, fastest_s=None, slowest_s=None)
        return cls(mean_s=statistics.fmean(seconds), fastest_s=min(seconds), slowest_s=max(seconds))


class Tally(BaseModel):
    """Counts of attempts by outcome, and ``success_rate`` = passed / total (``None`` if no attempts)."""

    passed: int
    failed: int
    errors: int
    total: int
    success_rate: float | None

    @classmethod
    def of(cls, attempts: Sequence[Attempt]) -> "Tally":
        """Count ``attempts``."""
        passed = sum(a.status == "passed" for a in attempts)
        failed = sum(a.status == "failed" for a in attempts)
        errors = sum(a.status == "error" for a in attempts)
        total = len(attempts)
        return cls(
            passed=passed, failed=failed, errors=errors, total=total, success_rate=passed / total if total else None
        )


class ModelSummary(BaseModel):
    """One model's results: its tally and latency, overall and per category."""

    model: str
    provider: str
    tally: Tally
    latency: LatencyStats
    by_category: dict[Category, Tally]
    latency_by_category: dict[Category, LatencyStats]


class EvalReport(BaseModel):
    """Everything ``synthd eval`` reports; ``attempts`` holds each answer and verdict."""

    created_at: datetime
    battery: str
    categories: list[Category]
    cases: int
    settings: dict[str, float | int | None]
    models: list[ModelSummary]
    skipped: list[Skipped]
    by_category: dict[Category, Tally]
    totals: Tally
    attempts: list[Attempt]

    @property
    def failures(self) -> list[Attempt]:
        """Attempts that failed their check or hit a provider error."""
        return [a for a in self.attempts if a.status != "passed"]


def build_report(
    attempts: Sequence[Attempt],
    skipped: Sequence[Skipped],
    *,
    battery: str,
    cases: int,
    categories: Sequence[Category],
    settings: EvalSettings,
) -> EvalReport:
    """Aggregate ``attempts`` (models in first-seen order, categories in battery order)."""
    ordered = [c for c in CATEGORIES if c in categories]
    models: list[ModelSummary] = []
    for model in dict.fromkeys(a.model for a in attempts):
        own = [a for a in attempts if a.model == model]
        models.append(
            ModelSummary(
                model=model,
                provider=own[0].provider,
                tally=Tally.of(own),
                latency=LatencyStats.of(own),
                by_category={c: Tally.of([a for a in own if a.category == c]) for c in ordered},
                latency_by_category={c: LatencyStats.of([a for a in own if a.category == c]) for c in ordered},
            )
        )
    return EvalReport(
        created_at=datetime.now(UTC),
        battery=battery,
        categories=ordered,
        cases=cases,
        settings={
            "concurrency": settings.concurrency,
            "repeats": settings.repeats,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
        },
        models=models,
        skipped=list(skipped),
        by_category={c: Tally.of([a for a in attempts if a.category == c]) for c in ordered},
        totals=Tally.of(attempts),
        attempts=list(attempts),
    )


def percent(rate: float | None) -> str:
    """``0.5`` → ``50.0%``; ``None`` → ``-``."""
    return "-" if rate is None else f"{rate * 100:.1f}%"


def seconds(value: float | None) -> str:
    """Seconds with two decimals, ``-`` for none."""
    return "-" if value is None else f"{value:.2f}"


def fraction(tally: Tally) -> str:
    """``passed/total``."""
    return f"{tally.passed}/{tally.total}"


def to_markdown(report: EvalReport) -> str:
    """The report as Markdown: models, skipped, coverage by category, overall totals, failures."""
    lines = [
        "# synthd eval report",
        "",
        (
            f"{report.created_at:%Y-%m-%d %H:%M} UTC · battery `{report.battery}` · {report.cases} cases × "
            f"{report.settings['repeats']} repeat(s) · categories: {', '.join(report.categories)} · "
            f"temperature {report.settings['temperature']} · max_tokens {report.settings['max_tokens']}"
        ),
        "",
        "## Models",
        "",
        "| Model | Provider | Passed/Total | Success rate | Failed | Errors | Mean (s) | Fastest (s) | Slowest (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report.models:
        lines.append(
            f"| {m.model} | {m.provider} | {fraction(m.tally)} | {percent(m.tally.success_rate)} | "
            f"{m.tally.failed} | {m.tally.errors} | {seconds(m.latency.mean_s)} | "
            f"{seconds(m.latency.fastest_s)} | {seconds(m.latency.slowest_s)} |"
        )
    if report.skipped:
        lines += ["", "## Skipped", ""] + [f"- **{s.model}**: {s.reason}" for s in report.skipped]
    if not report.models:
        lines += ["", "No model was evaluated."]
        return "\n".join(lines).rstrip() + "\n"
    lines += [
        "",
        "## Coverage by category",
        "",
        "| Category | " + " | ".join(m.model for m in report.models) + " | All models |",
        "|---|" + "---:|" * (len(report.models) + 1),
    ]
    for category in report.categories:
        cells = [
            f"{fraction(m.by_category[category])} ({percent(m.by_category[category].success_rate)})"
            for m in report.models
        ]
        overall = report.by_category[category]
        lines.append(
            f"| {category} | " + " | ".join(cells) + f" | {fraction(overall)} ({percent(overall.success_rate)}) |"
        )
    t = report.totals
    lines += [
        "",
        "## Overall",
        "",
        f"- Models run: {len(report.models)}; skipped: {len(report.skipped)}",
        f"- Attempts: {t.total}; passed: {t.passed}; failed: {t.failed}; errors: {t.errors}",
        f"- Success rate: {percent(t.success_rate)}",
    ]
    lines += ["", "## Failures", ""]
    if not report.failures:
        lines.append("None.")
    for a in report.failures:
        lines += [
            f"### {a.model} · {a.case_id} ({a.category}, repeat {a.repeat + 1}): {a.status}",
            "",
            f"Prompt: {a.prompt}",
            "",
            f"Reason: {a.reason}",
            "",
        ]
        if a.answer is not None:
            fence = "````" if "```" in a.answer else "```"
            lines += ["Answer:", "", f"{fence}text", a.answer, fence, ""]
    return "\n".join(lines).rstrip() + "\n"


def render(console: Console, report: EvalReport, out_dir: Path | None = None) -> None:
    """Print the models, coverage and totals tables, and one line per failure."""
    models = Table(title="Models")
    for column in (
        "Model",
        "Provider",
        "Passed/Total",
        "Success",
        "Failed",
        "Errors",
        "Mean s",
        "Fastest s",
        "Slowest s",
    ):
        models.add_column(column, justify="left" if column in ("Model", "Provider") else "right")
    for m in report.models:
        models.add_row(
            m.model,
            m.provider,
            fraction(m.tally),
            percent(m.tally.success_rate),
            str(m.tally.failed),
            str(m.tally.errors),
            seconds(m.latency.mean_s),
            seconds(m.latency.fastest_s),
            seconds(m.latency.slowest_s),
        )
    console.print(models)
    for s in report.skipped:
        console.print(f"[yellow]skipped[/yellow] {escape(f'{s.model}: {s.reason}')}", highlight=False)
    coverage = Table(title="Coverage by category")
    coverage.add_column("Category")
    for m in report.models:
        coverage.add_column(m.model, justify="right")
    coverage.add_column("All models", justify="right")
    for category in report.categories:
        coverage.add_row(
            category,
            *(fraction(m.by_category[category]) for m in report.models),
            fraction(report.by_category[category]),
        )
    console.print(coverage)
    for a in report.failures:
        console.print(f"[red]{a.status}[/red] {escape(f'{a.model} · {a.case_id}: {a.reason}')}", highlight=False)
    t = report.totals
    console.print(
        f"Overall: {t.passed}/{t.total} passed ({percent(t.success_rate)}), {t.failed} failed, {t.errors} errors",
        highlight=False,
    )
    if out_dir is not None:
        console.print(
            f"Report: {out_dir / 'report.md'}, {out_dir / 'report.json'}, {out_dir / 'latency.png'}", highlight=False
        )
