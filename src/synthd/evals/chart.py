"""The latency chart: mean reply latency per model and category, fastest-to-slowest as whiskers."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from synthd.evals.report import EvalReport


def latency_chart(report: EvalReport, path: Path) -> Path:
    """Write a grouped bar chart (PNG) to ``path``: one group per category, one bar per model, the
    bar at the mean latency in seconds and the whisker from fastest to slowest. Categories where a
    model got no reply have no bar. Returns ``path``."""
    models = report.models
    categories = report.categories
    width = 0.8 / max(len(models), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.6 * len(categories) + 1.2 * len(models)), 4.5))
    for i, model in enumerate(models):
        xs, means, below, above = [], [], [], []
        for j, category in enumerate(categories):
            stats = model.latency_by_category[category]
            if stats.mean_s is None:
                continue
            xs.append(j - 0.4 + width * (i + 0.5))
            means.append(stats.mean_s)
            below.append(stats.mean_s - stats.fastest_s)
            above.append(stats.slowest_s - stats.mean_s)
        axes.bar(xs, means, width, yerr=[below, above], capsize=3, label=model.model)
    axes.set_xticks(range(len(categories)), categories)
    axes.set_ylabel("reply latency (s): mean, fastest–slowest")
    axes.set_title("synthd eval: latency by model and category")
    if models:
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
