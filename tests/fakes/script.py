"""Scripted replies shared by the fake provider servers, and a helper to run an app on 127.0.0.1."""

import json
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI

from synthd.server_process import free_port

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog."


@dataclass
class Reply:
    """One scripted answer.

    ``text``: the assistant text (``None``: the default sentence, cut to ``max_tokens`` words).
    ``json``: a structured answer (OpenAI: the content; Anthropic: the forced tool's input).
    ``tool_calls``: ``(name, arguments)`` pairs. ``status`` with ``error_type``/``message``/``code``/
    ``param``/``headers``: an error response (``headers`` go with any reply, e.g. ``x-should-retry``,
    ``retry-after-ms``; Anthropic sends ``code`` as ``error.details.error_code``). ``break_after``: a stream sends that many content events, then the
    connection drops. ``truncate``: a stream stops cleanly before its end (no finish / message_stop).
    ``stream_error``: Anthropic sends an ``error`` event (of that type) after ``break_after`` events.
    ``stop_reason``: Anthropic's stop reason to report. ``delay_s``: wait before answering.
    """

    text: str | None = None
    json: Any = None
    tool_calls: list[tuple[str, dict]] = field(default_factory=list)
    status: int = 200
    error_type: str = "server_error"
    message: str = "scripted error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    break_after: int | None = None
    truncate: bool = False
    stream_error: str | None = None
    stop_reason: str | None = None
    delay_s: float = 0.0


class Script:
    """A queue of replies (the default reply when empty) and a log of the requests received: their
    bodies, headers (lower-case names) and arrival times (``time.monotonic()``)."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.by_prompt: dict[str, Reply] = {}
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.times: list[float] = []

    def push(self, *replies: Reply) -> None:
        """Queue replies, answered in order."""
        self.replies.extend(replies)

    def answer(self, prompt_part: str, reply: Reply) -> None:
        """Answer every request whose last message contains ``prompt_part`` with ``reply`` (for
        concurrent clients, whose arrival order is not fixed)."""
        self.by_prompt[prompt_part] = reply

    def next(self, body: dict[str, Any], headers: Mapping[str, str]) -> Reply:
        """The reply to a request with ``body`` and ``headers``, logged."""
        self.requests.append(body)
        self.headers.append({name.lower(): value for name, value in headers.items()})
        self.times.append(time.monotonic())
        last = json.dumps((body.get("messages") or [{}])[-1].get("content"))
        for part, reply in self.by_prompt.items():
            if part in last:
                return reply
        return self.replies.popleft() if self.replies else Reply()

    def reset(self) -> None:
        self.replies.clear()
        self.by_prompt.clear()
        self.requests.clear()
        self.headers.clear()
        self.times.clear()


@dataclass
class FakeProvider:
    """A fake provider server: its root URL and its script of replies."""

    url: str
    script: Script


def words(text: str) -> list[str]:
    """``text`` split on spaces, keeping each word's leading space (stream pieces)."""
    parts = text.split(" ")
    return [parts[0], *(f" {part}" for part in parts[1:])] if text else []


def default_text(max_tokens: int | None) -> tuple[str, bool]:
    """The default sentence cut to ``max_tokens`` words, and whether it was cut."""
    pieces = DEFAULT_TEXT.split(" ")
    if max_tokens is not None and max_tokens < len(pieces):
        return " ".join(pieces[:max_tokens]), True
    return DEFAULT_TEXT, False


def count_tokens(value: Any) -> int:
    """A rough token count (words) of any JSON value, for usage fields."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(count_tokens(v) for v in value.values())
    if isinstance(value, list):
        return sum(count_tokens(v) for v in value)
    return 0


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on 127.0.0.1; yields ``http://127.0.0.1:PORT``."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("fake server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
