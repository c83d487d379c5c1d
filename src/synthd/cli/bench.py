"""``synthd bench``: load-test any OpenAI-compatible server."""

from pathlib import Path
from typing import Annotated

import typer

from synthd.cli.common import ApiKey, BaseUrl, console, err, fail, server_url


def bench(
    model: Annotated[str, typer.Option(help="Model id on the server.")] = "SmolLM2-135M-Instruct",
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
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
    config = BenchConfig(base_url=server_url(base_url), model=model, api_key=api_key, requests=requests,
                         max_tokens=max_tokens, ignore_eos=ignore_eos)
    try:
        results = run_bench(config, levels, preferences, label=label or config.base_url, progress=err)
    except BenchError as exc:
        fail(str(exc))
    print_report(results, console)
    if json_out:
        write_json(results, json_out)
        console.print(f"wrote {json_out}")
