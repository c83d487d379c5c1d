"""Per-key rate limits: requests and tokens per minute, over a sliding 60-second window (in memory,
per server process).

A request is admitted when its key made fewer than ``rpm`` requests and used fewer than ``tpm``
tokens (prompt + completion, counted when a generation ends) in the last 60 seconds; otherwise it is
refused with ``RateLimitExceeded`` (429 ``rate_limit_exceeded``, ``Retry-After``). The state reported
with each answer follows OpenAI's ``x-ratelimit-*`` headers (platform.openai.com/docs/guides/rate-limits):
limit, remaining, and the time until the window is clear again.
"""

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from synthd.errors import TooManyRequests

WINDOW_S = 60.0


@dataclass(frozen=True)
class LimitState:
    """One limit after admission: ``limit`` per minute, ``remaining`` now, ``reset_s`` seconds until
    everything counted has left the window."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True)
class RateLimits:
    """The request and token limits of a key (None: that limit is not set)."""

    requests: LimitState | None = None
    tokens: LimitState | None = None


class RateLimitExceeded(TooManyRequests):
    """The key went over its requests or tokens per minute; ``limits`` says where it stands."""

    def __init__(self, message: str, retry_after_s: float, limits: RateLimits) -> None:
        super().__init__(message, retry_after_s=max(1, math.ceil(retry_after_s)), code="rate_limit_exceeded")
        self.limits = limits


@dataclass
class _Window:
    requests: deque[float]
    tokens: deque[tuple[float, int]]
    tokens_used: int = 0

    def prune(self, horizon: float) -> None:
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= horizon:
            self.tokens_used -= self.tokens.popleft()[1]


class RateLimiter:
    """Sliding-window counters per key id. Used from the event loop only (no locking).

    Args:
        clock: seconds, monotonic (``time.monotonic``).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def admit(self, key_id: str, rpm: int | None, tpm: int | None) -> RateLimits:
        """Count one request of ``key_id`` if its limits allow it.

        Raises:
            RateLimitExceeded: ``rpm`` requests or ``tpm`` tokens already in the last minute.
        """
        if rpm is None and tpm is None:
            return RateLimits()
        now = self.clock()
        window = self._windows.setdefault(key_id, _Window(deque(), deque()))
        window.prune(now - WINDOW_S)
        if rpm is not None and len(window.requests) >= rpm:
            limits = self._state(window, now, rpm, tpm)
            raise RateLimitExceeded(
                f"Rate limit reached for requests: {rpm} per minute. Please try again in "
                f"{window.requests[0] + WINDOW_S - now:.1f}s.",
                window.requests[0] + WINDOW_S - now,
                limits,
            )
        if tpm is not None and window.tokens_used >= tpm:
            limits = self._state(window, now, rpm, tpm)
            raise RateLimitExceeded(
                f"Rate limit reached for tokens: {tpm} per minute (used {window.tokens_used}). "
                f"Please try again in {self._tokens_free_in(window, now, tpm):.1f}s.",
                self._tokens_free_in(window, now, tpm),
                limits,
            )
        window.requests.append(now)
        return self._state(window, now, rpm, tpm)

    def record_tokens(self, key_id: str | None, tokens: int) -> None:
        """Count ``tokens`` used by a finished generation of ``key_id`` (ignored for untracked keys)."""
        window = self._windows.get(key_id) if key_id is not None else None
        if window is None or tokens <= 0:
            return
        window.tokens.append((self.clock(), tokens))
        window.tokens_used += tokens

    @staticmethod
    def _tokens_free_in(window: _Window, now: float, tpm: int) -> float:
        used = window.tokens_used
        for at, count in window.tokens:
            used -= count
            if used < tpm:
                return at + WINDOW_S - now
        return 0.0

    @staticmethod
    def _state(window: _Window, now: float, rpm: int | None, tpm: int | None) -> RateLimits:
        requests = tokens = None
        if rpm is not None:
            reset = window.requests[-1] + WINDOW_S - now if window.requests else 0.0
            requests = LimitState(rpm, max(0, rpm - len(window.requests)), reset)
        if tpm is not None:
            reset = window.tokens[-1][0] + WINDOW_S - now if window.tokens else 0.0
            tokens = LimitState(tpm, max(0, tpm - window.tokens_used), reset)
        return RateLimits(requests, tokens)
