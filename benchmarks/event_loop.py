"""Does anything block the event loop? TTFT of concurrent streams on an idle server vs. the same
streams while file uploads (several MB each) and fine-tuning job creations run.

Each round sends ``--streams`` streamed chats at once (``ignore_eos``, ``--max-tokens`` tokens) and
measures time to first token per stream; the busy phase repeats the rounds while a background load
uploads ``--upload-mb`` files and creates jobs on them without pause. The uploaded data is valid
JSON lines but not chat data, so each job fails in the scheduler's file validation and no training
competes for the CPU: what is left to slow the streams is the API's own work on uploads and job
creation (parsing, disk, database). The target (issue 13) is busy TTFT p99 ≤ 2× idle TTFT p99.

A probe also times ``GET /health`` every 50 ms in both phases: it does no work, so its latency is
the event loop's responsiveness. A busy TTFT far above idle with a flat ``/health`` means the load
took CPU from the engine (on a small machine the upload's parsing and the job's file validation
share the cores), not that it blocked the loop.

Usage: python benchmarks/event_loop.py [--streams 32] [--rounds 3] [--max-tokens 16] [--upload-mb 4] [--load-rate R]
       [--base-url URL --api-key KEY]   (default: starts its own server on a temporary home)
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import openai

from synthd.config import get_settings
from synthd.models.shipped import EMBEDDED_MODEL_ID
from synthd.server_process import ServerProcess


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) by linear interpolation, as numpy's default."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def ttft(client: openai.AsyncOpenAI, max_tokens: int) -> float:
    """Seconds from sending one streamed chat to its first content delta."""
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model=EMBEDDED_MODEL_ID,
        max_tokens=max_tokens,
        stream=True,
        extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": "Tell me about the sea."}],
    )
    first = None
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    assert first is not None, "the stream produced no content"
    return first


async def rounds(client: openai.AsyncOpenAI, streams: int, count: int, max_tokens: int) -> list[float]:
    """TTFTs of ``count`` rounds of ``streams`` concurrent streams."""
    samples: list[float] = []
    for _ in range(count):
        samples += await asyncio.gather(*(ttft(client, max_tokens) for _ in range(streams)))
    return samples


async def probe_health(http: httpx.AsyncClient, stop: asyncio.Event, samples: list[float]) -> None:
    """``GET /health`` every 50 ms until ``stop``, appending each latency (seconds); ``http`` opens a
    connection per probe (a kept-alive one can be closed by the server's idle timeout under load)."""
    while not stop.is_set():
        started = time.perf_counter()
        (await http.get("/health")).raise_for_status()
        samples.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)


async def probed(http: httpx.AsyncClient, work: Awaitable[list[float]]) -> tuple[list[float], list[float]]:
    """``work``'s TTFTs and the ``/health`` latencies seen while it ran."""
    stop, health = asyncio.Event(), []
    probe = asyncio.ensure_future(probe_health(http, stop, health))
    try:
        return await work, health
    finally:
        stop.set()
        await probe


async def background_load(
    http: httpx.AsyncClient, upload_mb: float, stop: asyncio.Event, counts: dict[str, int], rate: float
) -> None:
    """Upload a file and create a job on it, again and again, until ``stop``: ``rate`` cycles per
    second at most (0: back to back)."""
    line = json.dumps({"prompt": "p" * 200, "completion": "c" * 200}).encode() + b"\n"
    data = line * max(1, int(upload_mb * 1024 * 1024 / len(line)))
    while not stop.is_set():
        started = time.perf_counter()
        try:
            uploaded = await http.post("/v1/files", files={"file": ("load.jsonl", data)}, data={"purpose": "fine-tune"})
            uploaded.raise_for_status()
            counts["uploads"] += 1
            job = await http.post(
                "/v1/fine_tuning/jobs", json={"model": EMBEDDED_MODEL_ID, "training_file": uploaded.json()["id"]}
            )
            job.raise_for_status()
            counts["jobs"] += 1
        except httpx.TransportError:  # a kept-alive connection closed by the server's idle timeout
            counts["transport_errors"] += 1
        if rate > 0:
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))


async def measure(
    base_url: str,
    api_key: str,
    streams: int,
    count: int,
    max_tokens: int,
    upload_mb: float,
    loaders: int,
    load_rate: float = 0.0,
) -> dict:
    """Idle rounds, then the same rounds under ``loaders`` concurrent upload-and-create loops."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
    root = base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"}
    async with (
        httpx.AsyncClient(base_url=root, headers=headers, timeout=600) as http,
        httpx.AsyncClient(base_url=root, timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as probe,
    ):
        await rounds(client, streams, 1, max_tokens)  # warm the batch shapes
        idle, idle_health = await probed(probe, rounds(client, streams, count, max_tokens))
        stop, counts = asyncio.Event(), {"uploads": 0, "jobs": 0, "transport_errors": 0}
        load: list[Awaitable] = [background_load(http, upload_mb, stop, counts, load_rate) for _ in range(loaders)]
        tasks = [asyncio.ensure_future(task) for task in load]
        await asyncio.sleep(1.0)  # let the load get going
        started = time.perf_counter()
        busy, busy_health = await probed(probe, rounds(client, streams, count, max_tokens))
        busy_s = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*tasks)
    result = {
        "streams": streams,
        "rounds": count,
        "max_tokens": max_tokens,
        "upload_mb": upload_mb,
        "load_rate_per_loader": load_rate,
        "idle_ttft_p50_ms": percentile(idle, 0.5) * 1000,
        "idle_ttft_p99_ms": percentile(idle, 0.99) * 1000,
        "busy_ttft_p50_ms": percentile(busy, 0.5) * 1000,
        "busy_ttft_p99_ms": percentile(busy, 0.99) * 1000,
        "busy_uploads_per_s": counts["uploads"] / busy_s,
        "busy_jobs_per_s": counts["jobs"] / busy_s,
        "idle_ttft_mean_ms": statistics.mean(idle) * 1000,
        "busy_ttft_mean_ms": statistics.mean(busy) * 1000,
        "idle_health_p99_ms": percentile(idle_health, 0.99) * 1000,
        "busy_health_p99_ms": percentile(busy_health, 0.99) * 1000,
    }
    result["p99_ratio"] = result["busy_ttft_p99_ms"] / result["idle_ttft_p99_ms"]
    return result


def with_server(run: Callable[[str, str], dict]) -> dict:
    """Start ``synthd serve`` on a temporary home with a key, and ``run`` against it."""
    key = "event-loop-benchmark"
    with tempfile.TemporaryDirectory() as home:
        env = {
            "SYNTHD_HOME": home,
            "SYNTHD_MODELS_DIR": str(get_settings().models_dir),
            "SYNTHD_DATABASE_URL": "",
            "SYNTHD_MAX_FILE_BYTES": str(64 * 1024 * 1024),
            "SYNTHD_API_KEY": key,
        }
        with ServerProcess(log_path=Path(home) / "server.log", env=env, api_key=key) as server:
            return run(server.base_url, key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--upload-mb", type=float, default=4.0)
    parser.add_argument("--loaders", type=int, default=2, help="Concurrent upload-and-create loops.")
    parser.add_argument(
        "--load-rate", type=float, default=0.0, help="Upload-and-create cycles per second per loop (0: back to back)."
    )
    parser.add_argument("--base-url", help="An running server's OpenAI base URL (…/v1).")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--json", type=Path, help="Also write the result here.")
    args = parser.parse_args()

    def run(base_url: str, api_key: str) -> dict:
        return asyncio.run(
            measure(
                base_url,
                api_key,
                args.streams,
                args.rounds,
                args.max_tokens,
                args.upload_mb,
                args.loaders,
                args.load_rate,
            )
        )

    result = run(args.base_url, args.api_key) if args.base_url else with_server(run)
    print(
        f"{args.streams} streams x {args.rounds} rounds, {args.max_tokens} tokens; load: {args.loaders} loops "
        f"of a {args.upload_mb:g} MB upload + a job creation ({result['busy_uploads_per_s']:.2f} uploads/s, "
        f"{result['busy_jobs_per_s']:.2f} jobs/s)"
    )
    print(f"TTFT idle: p50 {result['idle_ttft_p50_ms']:.0f} ms, p99 {result['idle_ttft_p99_ms']:.0f} ms")
    print(f"TTFT busy: p50 {result['busy_ttft_p50_ms']:.0f} ms, p99 {result['busy_ttft_p99_ms']:.0f} ms")
    print(f"p99 ratio busy/idle: {result['p99_ratio']:.2f} (target <= 2)")
    print(f"GET /health p99: idle {result['idle_health_p99_ms']:.0f} ms, busy {result['busy_health_p99_ms']:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
