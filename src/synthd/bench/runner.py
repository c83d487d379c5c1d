"""Load generation and measurement for ``synthd bench``, after vLLM's ``vllm bench serve``.

Definitions follow vLLM's benchmark: TTFT = request start → first content token; TPOT =
(end-to-end latency − TTFT) / (output tokens − 1); ITL = gap between consecutive streamed chunks;
output throughput = all output tokens / wall time of the level; request throughput = completed
requests / wall time; goodput = the requests meeting every service-level objective (``--goodput``),
per second and as a share of completed requests. Every request is a streamed chat completion with
``stream_options.include_usage`` so token counts come from the server's own usage.

Two ways to send load, as in ``vllm bench serve``: a fixed number of requests in flight
(``concurrency``, a closed loop) or arrivals at a mean ``request_rate`` per second with exponential
gaps between them (a Poisson process, open loop; ``inf`` sends everything at once).

Two datasets: ``chat`` (short everyday questions) and ``shared-prefix``: every request's prompt is a
long shared prefix (about ``prefix_len`` tokens of filler words, unseen by the server: it starts
with a random nonce) followed by its own short question; every ``prefix_reuse`` consecutive requests
share one prefix. The first request of each prefix is "cold", the others "warm", and their TTFTs are
reported apart, so the effect of the server's prefix cache shows directly (vLLM's
``prefix_repetition`` dataset is the same idea).
"""

import asyncio
import json
import random
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import httpx
import numpy as np
from rich.console import Console
from rich.markup import escape

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
FILLER_WORDS = [
    "time",
    "person",
    "year",
    "way",
    "day",
    "thing",
    "man",
    "world",
    "life",
    "hand",
    "part",
    "child",
    "eye",
    "woman",
    "place",
    "work",
    "week",
    "case",
    "point",
    "government",
    "company",
    "number",
    "group",
    "problem",
    "fact",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "river",
    "stone",
    "garden",
    "music",
    "letter",
    "window",
    "paper",
    "table",
    "bread",
    "road",
    "field",
]
"""Common English words: about one token each in the usual BPE vocabularies."""

Dataset = Literal["chat", "shared-prefix"]


class BenchError(RuntimeError):
    """The server could not be benchmarked (unreachable, or every request failed)."""


@dataclass(frozen=True)
class Goodput:
    """Service-level objectives in seconds (None: no objective on that metric)."""

    ttft_s: float | None = None
    tpot_s: float | None = None

    @classmethod
    def parse(cls, specs: list[str]) -> "Goodput":
        """``["ttft:MS", "tpot:MS"]`` (vLLM's ``--goodput`` syntax, milliseconds) → ``Goodput``.

        Raises:
            ValueError: an unknown metric or a value that is not a positive number.
        """
        values: dict[str, float] = {}
        for spec in specs:
            name, _, number = spec.partition(":")
            if name not in ("ttft", "tpot"):
                raise ValueError(f"--goodput takes ttft:MS and tpot:MS, not '{spec}'")
            try:
                ms = float(number)
            except ValueError:
                raise ValueError(f"--goodput {name} needs milliseconds, not '{number}'") from None
            if ms <= 0:
                raise ValueError(f"--goodput {name} must be positive, not {number}")
            values[f"{name}_s"] = ms / 1000
        return cls(**values)

    def met_by(self, timing: "RequestTiming") -> bool:
        """True when ``timing`` meets every objective set."""
        if self.ttft_s is not None and timing.ttft_s > self.ttft_s:
            return False
        return self.tpot_s is None or timing.tpot_s is None or timing.tpot_s <= self.tpot_s


@dataclass(frozen=True)
class BenchConfig:
    """What to send: ``requests`` streamed chats of ``max_tokens`` to ``model`` at ``base_url``,
    drawn from ``dataset`` (``prefix_len``, ``prefix_reuse``: see the module docstring); ``goodput``:
    the objectives counted; ``seed``: the arrival times under a request rate."""

    base_url: str
    model: str
    api_key: str | None = None
    requests: int = 64
    max_tokens: int = 64
    ignore_eos: bool = True
    timeout_s: float = 600.0
    dataset: Dataset = "chat"
    prefix_len: int = 512
    prefix_reuse: int = 2
    goodput: Goodput | None = None
    seed: int = 0


@dataclass
class RequestTiming:
    """One request's measurements, seconds and tokens; ``warm``: it reused an earlier request's
    prefix (shared-prefix dataset), None for other datasets."""

    ttft_s: float
    e2e_s: float
    output_tokens: int
    prompt_tokens: int = 0
    itl_s: list[float] = field(default_factory=list)
    warm: bool | None = None

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
    """The outcome of one load level (a concurrency or a request rate, and a GPU preference) against
    one server. ``concurrency`` is 0 for a request-rate level. ``ttft_cold_s``/``ttft_warm_s``: TTFT
    of first and repeated uses of a prefix (shared-prefix dataset only)."""

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
    request_rate: float | None = None
    dataset: str = "chat"
    prompt_tokens_mean: float = 0.0
    goodput_requests_per_s: float | None = None
    goodput_share: float | None = None
    ttft_cold_s: Stats | None = None
    ttft_warm_s: Stats | None = None

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def build_prompts(config: BenchConfig) -> list[tuple[str, bool | None]]:
    """The ``(prompt, warm)`` of every request, in sending order (see the module docstring)."""
    if config.dataset == "chat":
        return [(PROMPTS[i % len(PROMPTS)], None) for i in range(config.requests)]
    nonce = secrets.token_hex(4)
    prompts = []
    for i in range(config.requests):
        group, member = divmod(i, config.prefix_reuse)
        words = random.Random(f"{nonce}-{group}").choices(FILLER_WORDS, k=config.prefix_len)
        prefix = f"Session {nonce}-{group}. Notes: " + " ".join(words)
        prompts.append((f"{prefix}\n\nIn one sentence: {PROMPTS[i % len(PROMPTS)]}", member > 0))
    return prompts


async def _one_request(
    client: httpx.AsyncClient, config: BenchConfig, prompt: str, headers: dict[str, str]
) -> RequestTiming:
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
    chunks, itl, usage = 0, [], {}
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
                usage = payload["usage"]
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
    return RequestTiming(
        ttft_s=first - start,
        e2e_s=end - start,
        output_tokens=usage.get("completion_tokens") or chunks,
        prompt_tokens=usage.get("prompt_tokens") or 0,
        itl_s=itl,
    )


async def _run_level(
    config: BenchConfig,
    concurrency: int,
    request_rate: float | None,
    gpu_preference: str | None,
    label: str,
    console: Console | None,
) -> LevelResult:
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    if gpu_preference:
        headers["X-GPU-Preference"] = gpu_preference
    prompts = build_prompts(config)
    if request_rate is None and len(prompts) < concurrency:
        prompts = (prompts * concurrency)[:concurrency]
    in_flight = concurrency if request_rate is None else len(prompts)
    limits = httpx.Limits(max_connections=in_flight + 4, max_keepalive_connections=in_flight + 4)
    async with httpx.AsyncClient(base_url=config.base_url, timeout=config.timeout_s, limits=limits) as client:
        try:
            await _one_request(client, config, PROMPTS[0], headers)
        except httpx.HTTPError as exc:
            raise BenchError(f"cannot reach {config.base_url}: {exc}") from None
        timings: list[RequestTiming] = []
        errors: list[str] = []

        async def send(prompt: str, warm: bool | None) -> None:
            try:
                timing = await _one_request(client, config, prompt, headers)
            except (BenchError, httpx.HTTPError) as exc:
                errors.append(str(exc))
                return
            timing.warm = warm
            timings.append(timing)

        load = f"rate {request_rate}/s" if request_rate is not None else f"concurrency {concurrency}"
        if console:
            console.print(
                f"[dim]{escape(label)}: {load}, {len(prompts)} {config.dataset} requests"
                f"{f', gpu {escape(gpu_preference)}' if gpu_preference else ''}…[/dim]"
            )
        start = time.perf_counter()
        if request_rate is None:
            queue = list(reversed(prompts))

            async def worker() -> None:
                while queue:
                    await send(*queue.pop())

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            await _poisson(prompts, request_rate, config.seed, send)
        duration = time.perf_counter() - start
    if not timings:
        raise BenchError(f"every request failed at {load}: {errors[0] if errors else '?'}")
    return _summarise(
        config,
        timings,
        errors,
        duration,
        label=label,
        gpu_preference=gpu_preference,
        concurrency=concurrency if request_rate is None else 0,
        request_rate=request_rate,
    )


async def _poisson(prompts: list[tuple[str, bool | None]], rate: float, seed: int, send) -> None:
    """Start one request per prompt at Poisson arrival times of mean ``rate`` per second."""
    generator = random.Random(seed)
    tasks = []
    for prompt, warm in prompts:
        tasks.append(asyncio.create_task(send(prompt, warm)))
        if rate != float("inf"):
            await asyncio.sleep(generator.expovariate(rate))
    await asyncio.gather(*tasks)


def _summarise(
    config: BenchConfig, timings: list[RequestTiming], errors: list[str], duration: float, **level
) -> LevelResult:
    output_tokens = sum(t.output_tokens for t in timings)
    good = None
    if config.goodput is not None:
        good = sum(1 for t in timings if config.goodput.met_by(t))
    shared = config.dataset == "shared-prefix"
    return LevelResult(
        **level,
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
        dataset=config.dataset,
        prompt_tokens_mean=float(np.mean([t.prompt_tokens for t in timings])),
        goodput_requests_per_s=None if good is None else good / duration,
        goodput_share=None if good is None else good / len(timings),
        ttft_cold_s=Stats.of([t.ttft_s for t in timings if t.warm is False]) if shared else None,
        ttft_warm_s=Stats.of([t.ttft_s for t in timings if t.warm]) if shared else None,
    )


def run_bench(
    config: BenchConfig,
    levels: list[int],
    gpu_preferences: list[str | None],
    *,
    label: str,
    request_rates: list[float] | None = None,
    progress: Console | None = None,
) -> list[LevelResult]:
    """Run every load level once per GPU preference; return one result per pair. ``levels`` are
    concurrencies; ``request_rates`` (requests per second, ``inf`` allowed), when given, replace them.

    Raises:
        BenchError: the server is unreachable or a level had no successful request.
    """
    loads: list[tuple[int, float | None]] = (
        [(0, rate) for rate in request_rates] if request_rates else [(level, None) for level in levels]
    )

    async def run_all() -> list[LevelResult]:
        return [
            await _run_level(config, concurrency, rate, preference, label, progress)
            for preference in gpu_preferences
            for concurrency, rate in loads
        ]

    return asyncio.run(run_all())
