"""Retry policy for ``LM`` calls (tenacity), the rules of the official SDKs.

Whether to retry, as openai-python's and anthropic-sdk-python's ``_should_retry`` decide: timeouts
and connection errors are retried; a status error is retried when the server's ``x-should-retry``
header says ``true`` and never when it says ``false`` (whatever the status), else on 408 (request
timeout), 409 (lock timeout), 429 and any status from 500 up; nothing else is. The wait before
retry ``n`` (``n`` = 0 for the first), as their ``_calculate_retry_timeout`` computes it: the
server's ``retry-after-ms`` / ``retry-after`` when it is above zero, else
``min(0.5 · 2ⁿ, 8) · (1 − 0.25 · U(0, 1))`` seconds. Where the SDKs differ, each provider follows
its own (:class:`RetryRules`): openai-python does not retry at all when the server asks for more
than 120 s, and honours ``retry-after`` only up to that; the Anthropic SDK waits whatever is asked
(up to ``time.sleep``'s limit). Both default to 2 retries.

Sources: openai-python ``_base_client.py`` (``_should_retry``, ``_parse_retry_after_header``,
``_calculate_retry_timeout``) and ``_constants.py``; anthropic-sdk-python ``_base_client.py`` and
``_constants.py``.
"""

import math
import random
from dataclasses import dataclass

import tenacity

from synthd.client.errors import OVERFLOWING_RETRY_AFTER_S, APIConnectionError, APIStatusError, retry_after

DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
MAX_SLEEP_S = 4_294_967.0
"""The longest single wait (``time.sleep``'s limit on some platforms, as the Anthropic SDK caps it)."""

RETRYABLE_STATUSES = frozenset({408, 409, 429})
"""Retried besides every status from 500 up, unless ``x-should-retry`` says otherwise."""


@dataclass(frozen=True, slots=True)
class RetryRules:
    """Where one SDK's rules differ from the other's. ``max_retry_after_s``: a longer server-asked
    wait means no retry at all, and waits up to it are honoured (openai-python: 120 s); ``None``:
    every positive wait is honoured, capped at :data:`MAX_SLEEP_S` (Anthropic).
    ``overflowing_retry_after_s``: what a ``retry-after`` number too large for a float means."""

    max_retry_after_s: float | None
    overflowing_retry_after_s: float


OPENAI_RULES = RetryRules(max_retry_after_s=120.0, overflowing_retry_after_s=OVERFLOWING_RETRY_AFTER_S)
ANTHROPIC_RULES = RetryRules(max_retry_after_s=None, overflowing_retry_after_s=math.inf)


def server_wait(error: BaseException | None, rules: RetryRules) -> float | None:
    """The wait in seconds the server asked for with ``error`` (``None`` if it did not), read the way
    the ``rules``' SDK reads it."""
    if isinstance(error, APIStatusError):
        return retry_after(error.headers, overflow_s=rules.overflowing_retry_after_s)
    return getattr(error, "retry_after_s", None)


def should_retry(error: BaseException, rules: RetryRules) -> bool:
    """Whether ``error`` (what a try raised) is worth another try under ``rules``."""
    if isinstance(error, APIConnectionError):
        return True
    if not isinstance(error, APIStatusError) or error.status_code is None:
        return False
    wait = server_wait(error, rules)
    if (
        rules.max_retry_after_s is not None
        and wait is not None
        and math.isfinite(wait)
        and wait > rules.max_retry_after_s
    ):
        return False
    if error.should_retry is not None:
        return error.should_retry
    return error.status_code in RETRYABLE_STATUSES or error.status_code >= 500


def retry_delay(error: BaseException | None, retries_taken: int, rules: RetryRules) -> float:
    """Seconds to wait before the next try, after ``retries_taken`` retries (0 before the first)."""
    wait = server_wait(error, rules)
    if wait is not None and wait > 0:
        if rules.max_retry_after_s is None:
            return min(wait, MAX_SLEEP_S)
        if math.isfinite(wait) and wait <= rules.max_retry_after_s:
            return wait
    backoff = min(INITIAL_RETRY_DELAY_S * 2.0 ** min(retries_taken, 1000), MAX_RETRY_DELAY_S)
    return backoff * (1 - 0.25 * random.random())


class WaitAsTheSDKs(tenacity.wait.wait_base):
    """tenacity wait strategy: :func:`retry_delay` of the failed attempt's exception."""

    def __init__(self, rules: RetryRules) -> None:
        self.rules = rules

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        return retry_delay(error, retry_state.attempt_number - 1, self.rules)


def _policy(max_retries: int, rules: RetryRules) -> dict:
    return {
        "retry": tenacity.retry_if_exception(lambda error: should_retry(error, rules)),
        "wait": WaitAsTheSDKs(rules),
        "stop": tenacity.stop_after_attempt(max_retries + 1),
        "reraise": True,
    }


def retrying(max_retries: int, rules: RetryRules) -> tenacity.Retrying:
    """``for attempt in retrying(n, rules): with attempt: ...``: up to ``n`` retries after the first try."""
    return tenacity.Retrying(**_policy(max_retries, rules))


def async_retrying(max_retries: int, rules: RetryRules) -> tenacity.AsyncRetrying:
    """Async twin of ``retrying`` (``async for attempt in ...``)."""
    return tenacity.AsyncRetrying(**_policy(max_retries, rules))
