"""Retry policy for ``LM`` calls (tenacity): exponential backoff with jitter, or the server's
``Retry-After`` when it sent one; only errors ``is_retryable`` accepts are retried.

Backoff constants follow openai-python's own (``INITIAL_RETRY_DELAY`` 0.5 s, ``MAX_RETRY_DELAY``
8 s), and like it a ``Retry-After`` over 60 s is not waited out in full.
"""

import tenacity

from synthd.client.errors import is_retryable

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 60.0


class WaitRetryAfter(tenacity.wait.wait_base):
    """The failed attempt's ``retry_after_s`` (capped at ``MAX_RETRY_AFTER_S``), else jittered
    exponential backoff: ``min(8, 0.5 · 2^(n-1)) + U(0, 0.5)`` seconds before retry ``n``."""

    def __init__(self) -> None:
        self.backoff = tenacity.wait_exponential_jitter(multiplier=INITIAL_BACKOFF_S, max=MAX_BACKOFF_S,
                                                        jitter=INITIAL_BACKOFF_S)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        hinted = getattr(error, "retry_after_s", None)
        return min(hinted, MAX_RETRY_AFTER_S) if hinted is not None else self.backoff(retry_state)


def _policy(max_retries: int) -> dict:
    return {"retry": tenacity.retry_if_exception(is_retryable), "wait": WaitRetryAfter(),
            "stop": tenacity.stop_after_attempt(max_retries + 1), "reraise": True}


def retrying(max_retries: int) -> tenacity.Retrying:
    """``for attempt in retrying(n): with attempt: ...``: up to ``n`` retries after the first try."""
    return tenacity.Retrying(**_policy(max_retries))


def async_retrying(max_retries: int) -> tenacity.AsyncRetrying:
    """Async twin of ``retrying`` (``async for attempt in ...``)."""
    return tenacity.AsyncRetrying(**_policy(max_retries))
