"""Load generation and measurement for ``synthd bench``.

Definitions follow vLLM's ``benchmark_serving``: TTFT = request start → first content token;
TPOT = (end-to-end latency − TTFT) / (output tokens − 1); ITL = gap between consecutive streamed
chunks; output throughput = all output tokens / wall time of the level; request throughput =
completed requests / wall time. Every request is a streamed chat completion with
``stream_options.include_usage`` so token counts come from the server's own usage.
"""

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np
from rich.console import Console

PROMPTS = (
    "Write a short story about a robot learning to paint.",
    "Explain how a rainbow forms.",
    "List five uses for a paperclip.",
    "What are the benefits of regular exercise?",
    "Describe the water cycle in simple words.",
    "Give me three tips for learning a new language.",
    "Why is the sky blue?",
    "Summarise the plot of a detective novel you invent.",
)


class BenchError(RuntimeError):
    """The server could not be benchmarked (unreachable, or every request failed)."""


@dataclass(frozen=True)
class BenchConfig:
    """What to send: ``requests`` streamed chats of ``max_tokens`` to ``model`` at ``base_url``."""

    base_url: str
    model: str
    api_key: str | None = None
    requests: int = 64
    max_tokens: int = 64
    ignore_eos: bool = True
    timeout_s: float = 600.0


@dataclass
class RequestTiming:
    """One request's measurements, seconds and tokens."""

    ttft_s: float
    e2e_s: float
    output_tokens: int
    itl_s: list[float] = field(default_factory=list)

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first, or None for a one-token answer."""
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else None


@dataclass(frozen=True)
class Stats:
    """Mean, median and 99th percentile of a series."""

    mean: float
    p50: float
    p99: float

    @classmethod
    def of(cls, values: list[float]) -> "Stats":
        """Stats of ``values`` (NaN when empty)."""
        if not values:
            return cls(float("nan"), float("nan"), float("nan"))
        array = np.asarray(values, dtype=float)
        return cls(float(array.mean()), float(np.percentile(array, 50)), float(np.percentile(array, 99)))


@dataclass(frozen=True)
class LevelResult:
    """The outcome of one concurrency level (and GPU preference) against one server."""

    label: str
    gpu_preference: str | None
    concurrency: int
    completed: int
    failed: int
    duration_s: float
    output_tokens: int
    output_tokens_per_s: float
    requests_per_s: float
    ttft_s: Stats
    tpot_s: Stats
    itl_s: Stats
    e2e_s: Stats
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


async def _one_request(client: httpx.AsyncClient, config: BenchConfig, prompt: str,
                       headers: dict[str, str]) -> RequestTiming:
    body = {
        "model": config.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": config.max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.ignore_eos:
        body["ignore_eos"] = True
    start = time.perf_counter()
    first = last = None
    chunks, itl, usage_tokens = 0, [], None
    async with client.stream("POST", "/chat/completions", json=body, headers=headers) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode(errors="replace")[:300]
            raise BenchError(f"HTTP {response.status_code}: {detail}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            payload = json.loads(data)
            if "error" in payload:
                raise BenchError(payload["error"].get("message", "stream error"))
            if payload.get("usage"):
                usage_tokens = payload["usage"]["completion_tokens"]
            if any(c.get("delta", {}).get("content") for c in payload.get("choices", [])):
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    itl.append(now - last)
                last = now
                chunks += 1
    end = time.perf_counter()
    if first is None:
        raise BenchError("the stream carried no content")
    return RequestTiming(ttft_s=first - start, e2e_s=end - start, output_tokens=usage_tokens or chunks, itl_s=itl)


async def _run_level(config: BenchConfig, concurrency: int, gpu_preference: str | None, label: str,
                     console: Console | None) -> LevelResult:
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    if gpu_preference:
        headers["X-GPU-Preference"] = gpu_preference
    total = max(config.requests, concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=config.base_url, timeout=config.timeout_s, limits=limits) as client:
        try:
            await _one_request(client, config, PROMPTS[0], headers)
        except httpx.HTTPError as exc:
            raise BenchError(f"cannot reach {config.base_url}: {exc}") from None
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(total):
            queue.put_nowait(i)
        timings: list[RequestTiming] = []
        errors: list[str] = []

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    timings.append(await _one_request(client, config, PROMPTS[i % len(PROMPTS)], headers))
                except (BenchError, httpx.HTTPError) as exc:
                    errors.append(str(exc))

        if console:
            console.print(f"[dim]{label}: concurrency {concurrency}, {total} requests"
                          f"{f', gpu {gpu_preference}' if gpu_preference else ''}…[/dim]")
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        duration = time.perf_counter() - start
    if not timings:
        raise BenchError(f"every request failed at concurrency {concurrency}: {errors[0] if errors else '?'}")
    output_tokens = sum(t.output_tokens for t in timings)
    return LevelResult(
        label=label,
        gpu_preference=gpu_preference,
        concurrency=concurrency,
        completed=len(timings),
        failed=len(errors),
        duration_s=duration,
        output_tokens=output_tokens,
        output_tokens_per_s=output_tokens / duration,
        requests_per_s=len(timings) / duration,
        ttft_s=Stats.of([t.ttft_s for t in timings]),
        tpot_s=Stats.of([t.tpot_s for t in timings if t.tpot_s is not None]),
        itl_s=Stats.of([gap for t in timings for gap in t.itl_s]),
        e2e_s=Stats.of([t.e2e_s for t in timings]),
        errors=tuple(sorted(set(errors)))[:5],
    )


def run_bench(config: BenchConfig, levels: list[int], gpu_preferences: list[str | None], *, label: str,
              progress: Console | None = None) -> list[LevelResult]:
    """Run every concurrency level once per GPU preference; return one result per pair.

    Raises:
        BenchError: the server is unreachable or a level had no successful request.
    """
    async def run_all() -> list[LevelResult]:
        return [await _run_level(config, level, preference, label, progress)
                for preference in gpu_preferences for level in levels]

    return asyncio.run(run_all())
