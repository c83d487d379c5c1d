"""Interactive TTFT while a batch runs: the Batch API must stay behind interactive traffic.

One synthd server on the embedded model. Each round measures the same interactive load twice:
with the server otherwise idle, then while a batch of long lines (``--batch-tokens`` each,
``ignore_eos``) is ``in_progress``; the batch is cancelled at the end of the round. Rounds
alternate idle and busy so a change in the machine's own load hits both sides. The interactive
load is streamed chats one at a time (TTFT = request sent → first content chunk, as ``synthd
bench`` and vLLM's ``benchmark_serving`` define it), in two patterns: back to back, and with
``--gap-s`` seconds between requests, so each one arrives while the batch has the engine to itself.
The target (issue 15) is interactive TTFT with a batch running ≤ 1.5× TTFT without.

Usage: python benchmarks/batch_priority.py [--rounds 3] [--requests 8] [--max-tokens 4] [--gap-s 1]
                                           [--batch-lines 200] [--batch-tokens 32]
Writes bench-results/batch_priority.json and bench-results/batch_priority.md.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import openai
from rich.console import Console

from synthd.bench.runner import PROMPTS
from synthd.config import get_settings
from synthd.models.shipped import EMBEDDED_MODEL_ID
from synthd.server_process import ServerProcess

console = Console(width=160)


def ttfts(client: openai.OpenAI, requests: int, max_tokens: int, gap_s: float) -> list[float]:
    """TTFT in seconds of ``requests`` streamed chats sent one after the other, ``gap_s`` apart."""
    measured = []
    for i in range(requests):
        start = time.perf_counter()
        first = None
        stream = client.chat.completions.create(
            model=EMBEDDED_MODEL_ID,
            max_tokens=max_tokens,
            temperature=0,
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
        measured.append(first)
        time.sleep(gap_s)
    return measured


def start_batch(client: openai.OpenAI, lines: int, max_tokens: int) -> str:
    """Submit a batch of long chat lines and wait until its first line has been answered."""
    body = {"model": EMBEDDED_MODEL_ID, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    rows = [
        json.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {**body, "messages": [{"role": "user", "content": f"Tell a story about the number {i}."}]},
            }
        )
        for i in range(lines)
    ]
    upload = client.files.create(file=("batch.jsonl", "\n".join(rows).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    while (batch := client.batches.retrieve(batch.id)).request_counts.completed < 1:
        if batch.status not in ("validating", "in_progress"):
            raise SystemExit(f"the batch ended {batch.status} before the measurement: {batch.errors}")
        time.sleep(0.2)
    return batch.id


def stop_batch(client: openai.OpenAI, batch_id: str) -> int:
    """Check the batch ran through the whole measurement, cancel it, return its answered lines."""
    batch = client.batches.retrieve(batch_id)
    if batch.status != "in_progress":
        raise SystemExit(f"the batch was {batch.status} before the measurement ended: use more --batch-lines")
    client.batches.cancel(batch_id)
    while (batch := client.batches.retrieve(batch_id)).status != "cancelled":
        time.sleep(0.2)
    return batch.request_counts.completed


def markdown(rounds: list[dict], gap_s: float, load: tuple[float, float]) -> str:
    header = (
        "| round | pattern | TTFT idle mean ms | p50 ms | TTFT with batch mean ms | p50 ms | ratio (mean) | "
        "batch lines answered |"
    )
    lines = [header, "|---:|---|---:|---:|---:|---:|---:|---:|"]
    totals: dict[str, tuple[list[float], list[float]]] = {}
    for n, result in enumerate(rounds, start=1):
        for pattern in ("back to back", f"{gap_s:g} s apart"):
            idle, busy = result["idle"][pattern], result["with_batch"][pattern]
            totals.setdefault(pattern, ([], []))[0].extend(idle)
            totals[pattern][1].extend(busy)
            lines.append(
                f"| {n} | {pattern} | {np.mean(idle) * 1000:.0f} | {np.median(idle) * 1000:.0f} | "
                f"{np.mean(busy) * 1000:.0f} | {np.median(busy) * 1000:.0f} | "
                f"{np.mean(busy) / np.mean(idle):.2f} | {result['batch_lines_answered']} |"
            )
    lines.append(
        f"\nMachine load average (1 min): {load[0]:.1f} at the start, {load[1]:.1f} at the end, on "
        f"{os.cpu_count()} CPUs.\n"
    )
    for pattern, (idle, busy) in totals.items():
        lines.append(
            f"- {pattern}: TTFT mean {np.mean(idle) * 1000:.0f} ms idle, {np.mean(busy) * 1000:.0f} ms with a "
            f"batch running: {np.mean(busy) / np.mean(idle):.2f}× (target ≤ 1.5×); median "
            f"{np.median(idle) * 1000:.0f} → {np.median(busy) * 1000:.0f} ms: "
            f"{np.median(busy) / np.median(idle):.2f}×."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8, help="interactive requests per pattern and measurement")
    parser.add_argument("--max-tokens", type=int, default=4, help="tokens per interactive request")
    parser.add_argument("--gap-s", type=float, default=1.0, help="pause between requests in the second pattern")
    parser.add_argument("--batch-lines", type=int, default=200)
    parser.add_argument("--batch-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    patterns = {"back to back": 0.0, f"{args.gap_s:g} s apart": args.gap_s}
    home = Path(tempfile.mkdtemp(prefix="synthd-batch-bench-"))
    env = {"SYNTHD_HOME": str(home), "SYNTHD_MODELS_DIR": str(get_settings().models_dir), "SYNTHD_DATABASE_URL": ""}
    rounds: list[dict] = []
    load_start = os.getloadavg()[0]
    with ServerProcess(log_path=args.out / "batch_priority.log", env=env) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=600)
        ttfts(client, 2, args.max_tokens, 0.0)  # warm the path
        for n in range(1, args.rounds + 1):
            console.rule(f"round {n}")
            idle = {name: ttfts(client, args.requests, args.max_tokens, gap) for name, gap in patterns.items()}
            batch_id = start_batch(client, args.batch_lines, args.batch_tokens)
            busy = {name: ttfts(client, args.requests, args.max_tokens, gap) for name, gap in patterns.items()}
            rounds.append({"idle": idle, "with_batch": busy, "batch_lines_answered": stop_batch(client, batch_id)})
            for name in patterns:
                console.print(
                    f"{name}: TTFT idle {np.mean(idle[name]) * 1000:.0f} ms, "
                    f"with batch {np.mean(busy[name]) * 1000:.0f} ms"
                )
    shutil.rmtree(home, ignore_errors=True)
    (args.out / "batch_priority.json").write_text(json.dumps(rounds, indent=2))
    table = markdown(rounds, args.gap_s, (load_start, os.getloadavg()[0]))
    (args.out / "batch_priority.md").write_text(table)
    console.print(table)


if __name__ == "__main__":
    main()
