"""Write an eval report to a folder: ``report.json``, ``report.md`` and ``latency.png``."""

from pathlib import Path

from synthd.evals.chart import latency_chart
from synthd.evals.report import EvalReport, to_markdown


def write_report(report: EvalReport, out_dir: Path) -> list[Path]:
    """Create ``out_dir`` if needed and write the three files; returns their paths.
    Raises ``OSError`` if the folder cannot be written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    markdown_path.write_text(to_markdown(report), encoding="utf-8")
    return [json_path, markdown_path, latency_chart(report, out_dir / "latency.png")]
