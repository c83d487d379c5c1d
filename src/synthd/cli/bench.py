"""``synthd bench``: load-test any OpenAI-compatible server."""

from pathlib import Path
from typing import Annotated

import typer

from synthd.cli.common import ApiKey, BaseUrl, console, err, fail, server_url


def _levels(option: str, text: str, parse) -> list:
    try:
        values = [parse(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{option} must be comma-separated numbers, not '{text}'")
    if not values or min(values) <= 0:
        fail(f"{option} needs at least one value, all above 0")
    return values


def bench(
    model: Annotated[str, typer.Option(help="Model id on the server.")] = "SmolLM2-135M-Instruct",
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    concurrency: Annotated[
        str, typer.Option(help="Comma-separated concurrency levels (requests in flight).")
    ] = "1,8,32",
    request_rate: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated request rates per second (Poisson arrivals, 'inf': all at once); replaces "
            "--concurrency."
        ),
    ] = None,
    requests: Annotated[int, typer.Option(help="Requests per level (at least the concurrency).", min=1)] = 64,
    max_tokens: Annotated[int, typer.Option(help="Output tokens per request.", min=1)] = 64,
    ignore_eos: Annotated[bool, typer.Option(help="Ask for exactly max_tokens (vLLM's ignore_eos).")] = True,
    dataset: Annotated[
        str,
        typer.Option(
            help="chat (short questions) | shared-prefix (a long prefix shared by "
            "--prefix-reuse requests, then a question)."
        ),
    ] = "chat",
    prefix_len: Annotated[
        int, typer.Option(help="shared-prefix: prefix length in words (about one token each).", min=1)
    ] = 512,
    prefix_reuse: Annotated[int, typer.Option(help="shared-prefix: consecutive requests per prefix.", min=1)] = 2,
    goodput: Annotated[
        list[str] | None,
        typer.Option(
            help="A service-level objective, ttft:MS or tpot:MS (repeat for both); reports the requests meeting all."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the Poisson arrival times.")] = 0,
    gpu_preference: Annotated[str | None, typer.Option(help="Comma-separated GPU preferences, one run each.")] = None,
    label: Annotated[str | None, typer.Option(help="Name of this server in the report.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write results as JSON to this file.")] = None,
) -> None:
    """Benchmark an OpenAI-compatible server: output tokens/s, requests/s, TTFT, TPOT, ITL, goodput.

    Examples: synthd bench --base-url http://127.0.0.1:8000/v1 --concurrency 1,8,32 --requests 64;
    synthd bench --request-rate 2,inf --goodput ttft:500 --goodput tpot:100;
    synthd bench --dataset shared-prefix --prefix-len 512 --concurrency 1
    """
    from synthd.bench.report import print_report, write_json
    from synthd.bench.runner import BenchConfig, BenchError, Goodput, run_bench

    levels = _levels("--concurrency", concurrency, int)
    rates = _levels("--request-rate", request_rate, float) if request_rate else None
    if dataset not in ("chat", "shared-prefix"):
        fail(f"--dataset must be chat or shared-prefix, not '{dataset}'")
    try:
        objectives = Goodput.parse(goodput) if goodput else None
    except ValueError as exc:
        fail(str(exc))
    preferences = [p.strip() for p in gpu_preference.split(",")] if gpu_preference else [None]
    config = BenchConfig(
        base_url=server_url(base_url),
        model=model,
        api_key=api_key,
        requests=requests,
        max_tokens=max_tokens,
        ignore_eos=ignore_eos,
        dataset=dataset,
        prefix_len=prefix_len,
        prefix_reuse=prefix_reuse,
        goodput=objectives,
        seed=seed,
    )
    try:
        results = run_bench(
            config, levels, preferences, label=label or config.base_url, request_rates=rates, progress=err
        )
    except BenchError as exc:
        fail(str(exc))
    print_report(results, console)
    if json_out:
        write_json(results, json_out)
        console.print(f"wrote {json_out}")
