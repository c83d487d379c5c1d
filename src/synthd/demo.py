"""``synthd demo`` (what ``make demo`` runs): a short real session against a fresh local server."""

import asyncio
import time

import openai
from rich.console import Console
from rich.table import Table

from synthd.config import get_settings
from synthd.engine.embedded import EMBEDDED_MODEL_ID, PullError, pull_embedded_model
from synthd.server_process import ServerProcess, ServerStartError

CONCURRENT_QUESTIONS = (
    "What is the capital of France?",
    "What is 2 + 2?",
    "Name a primary color.",
    "What animal says 'moo'?",
    "What is the opposite of hot?",
    "How many days are in a week?",
    "What do bees make?",
    "What is frozen water called?",
)


class DemoError(RuntimeError):
    """The demo could not run; the message says which step failed."""


def run_demo(console: Console, port: int = 0) -> None:
    """Pull the embedded model, serve it on 127.0.0.1, run the session, stop the server.

    Raises:
        DemoError: the pull, the server start or a request failed.
    """
    settings = get_settings()
    started = time.perf_counter()
    console.rule("1. embedded model")
    try:
        folder = pull_embedded_model(settings.models_dir, lambda msg: console.print(f"  {msg}"))
    except PullError as exc:
        raise DemoError(str(exc)) from None
    console.print(f"  {EMBEDDED_MODEL_ID} in {folder}")
    console.rule("2. server")
    log_path = settings.home / "demo-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with ServerProcess(port=port, log_path=log_path) as server:
            console.print(f"  synthd serve on {server.base_url} (ready after {time.perf_counter() - started:.1f}s; log {log_path})")
            _session(console, server.base_url)
    except ServerStartError as exc:
        raise DemoError(str(exc)) from None
    except openai.OpenAIError as exc:
        raise DemoError(f"request failed: {exc}") from None
    console.rule(f"done in {time.perf_counter() - started:.1f}s, server stopped")


def _session(console: Console, base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="demo", max_retries=0)

    console.rule("3. GET /v1/models")
    t0 = time.perf_counter()
    models = client.models.list()
    console.print(f"  {[m.id for m in models.data]}  ({_ms(t0)})")

    console.rule("4. chat")
    t0 = time.perf_counter()
    reply = client.chat.completions.create(
        model=EMBEDDED_MODEL_ID, temperature=0, max_tokens=48,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    )
    console.print(f"  [bold]answer:[/bold] {reply.choices[0].message.content!r}")
    console.print(f"  finish_reason={reply.choices[0].finish_reason} usage={reply.usage.model_dump()} "
                  f"fingerprint={reply.system_fingerprint} ({_ms(t0)})")

    console.rule("5. streamed chat")
    t0 = time.perf_counter()
    first = None
    parts: list[str] = []
    stream = client.chat.completions.create(
        model=EMBEDDED_MODEL_ID, temperature=0, max_tokens=64, stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Write a haiku about the sea."}],
    )
    console.print("  ", end="")
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            parts.append(chunk.choices[0].delta.content)
            console.print(chunk.choices[0].delta.content, end="", highlight=False)
        usage = chunk.usage or usage
    console.print()
    ttft = f"{(first - t0) * 1000:.0f} ms" if first else "n/a"
    console.print(f"  TTFT {ttft}, total {_ms(t0)}, {usage.completion_tokens if usage else '?'} tokens")

    console.rule("6. eight concurrent chats (batched)")
    table = Table("question", "answer", "tokens", "latency")
    t0 = time.perf_counter()
    results = asyncio.run(_concurrent(base_url))
    wall = time.perf_counter() - t0
    for question, (answer, tokens, latency) in zip(CONCURRENT_QUESTIONS, results):
        table.add_row(question, answer.strip().replace("\n", " ")[:70], str(tokens), f"{latency * 1000:.0f} ms")
    console.print(table)
    total_tokens = sum(r[1] for r in results)
    console.print(f"  8 requests in {wall:.2f}s wall ({total_tokens / wall:.1f} output tok/s); "
                  f"sum of latencies {sum(r[2] for r in results):.2f}s — batched, not one after another")


async def _concurrent(base_url: str) -> list[tuple[str, int, float]]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="demo", max_retries=0)

    async def ask(question: str) -> tuple[str, int, float]:
        t0 = time.perf_counter()
        reply = await client.chat.completions.create(
            model=EMBEDDED_MODEL_ID, temperature=0, max_tokens=40,
            messages=[{"role": "user", "content": question}],
        )
        return reply.choices[0].message.content or "", reply.usage.completion_tokens, time.perf_counter() - t0

    try:
        return list(await asyncio.gather(*(ask(q) for q in CONCURRENT_QUESTIONS)))
    finally:
        await client.close()


def _ms(t0: float) -> str:
    return f"{(time.perf_counter() - t0) * 1000:.0f} ms"
