"""Run a battery against models through the ``LM`` client, concurrently.

Each (model, case, repeat) is one attempt: the model's reply is judged by the case's checker; a
provider error (``LMError`` after the client's retries) is recorded as ``error``, apart from a
wrong answer (``failed``). A model whose client cannot be built (no credentials, ambiguous name)
or, on synthd, cannot be warmed up, is skipped with the reason and runs no attempt. Every reason
goes through :func:`synthd.evals.redaction.redact_secrets` before it is recorded.
"""

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from synthd.client import LM, APIConnectionError, ConfigurationError, LMError
from synthd.client.routing import route
from synthd.evals.battery import Case, Category
from synthd.evals.checkers import check_answer
from synthd.evals.redaction import redact_secrets

Status = Literal["passed", "failed", "error"]


class Attempt(BaseModel):
    """One model's answer to one case. ``latency_s`` is the LM client's wall time for the reply
    (``None`` on a provider error); ``reason`` is the checker's or the error's one-line message,
    prefixed with "cut at max_tokens" when a failed answer ended with ``finish_reason`` ``length``."""

    model: str
    provider: str
    case_id: str
    category: Category
    prompt: str
    repeat: int
    status: Status
    answer: str | None
    reason: str
    finish_reason: str | None
    latency_s: float | None
    completion_tokens: int | None


class Skipped(BaseModel):
    """A model that was not run, and why."""

    model: str
    reason: str


@dataclass(frozen=True)
class EvalSettings:
    """How to ask: ``concurrency`` requests in flight across all models, each case ``repeats``
    times, with ``temperature`` and ``max_tokens`` (a case's own ``max_tokens`` wins).
    ``unsafe_sandbox``: where bubblewrap cannot run, run coding answers under the audit-hook
    guard alone instead of failing them unrun."""

    concurrency: int = 4
    repeats: int = 1
    temperature: float | None = 0.0
    max_tokens: int = 512
    timeout_s: float = 300.0
    unsafe_sandbox: bool = False


def open_models(
    names: Sequence[str], *, synthd_base_url: str | None = None, warmup: bool = True, timeout_s: float = 300.0
) -> tuple[list[LM], list[Skipped]]:
    """An ``LM`` per distinct name, and the names skipped: no credentials or unroutable name
    (``ConfigurationError``); on synthd (at ``synthd_base_url`` if given, else ``SYNTH_API_URL``),
    warmed up first so load time is not counted as latency, and skipped if the server cannot be
    reached or the warmup fails."""
    models: list[LM] = []
    skipped: list[Skipped] = []
    for name in dict.fromkeys(names):
        try:
            on_synthd = synthd_base_url is not None and route(name)[0] == "synthd"
            lm = LM(name, base_url=synthd_base_url if on_synthd else None, timeout=timeout_s)
        except ConfigurationError as exc:
            skipped.append(Skipped(model=name, reason=redact_secrets(str(exc))))
            continue
        if warmup and lm.provider == "synthd":
            try:
                lm.warmup()
            except APIConnectionError as exc:
                skipped.append(
                    Skipped(model=name, reason=redact_secrets(f"{exc}: start 'synthd serve' or set SYNTH_API_URL"))
                )
                continue
            except LMError as exc:
                skipped.append(Skipped(model=name, reason=redact_secrets(f"warmup failed: {exc}")))
                continue
        models.append(lm)
    return models, skipped


async def run_attempts(
    models: Sequence[LM],
    cases: Sequence[Case],
    settings: EvalSettings,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> list[Attempt]:
    """Every (model, case, repeat), at most ``settings.concurrency`` at a time; returns the attempts
    in (model, case, repeat) order. Checkers run in worker threads (code runs in a sandboxed child
    process), so a slow check does not hold the event loop. ``on_attempt`` is called as each ends."""
    gate = asyncio.Semaphore(settings.concurrency)

    async def attempt(lm: LM, case: Case, repeat: int) -> Attempt:
        async with gate:
            result = await _ask(lm, case, repeat, settings)
        if on_attempt is not None:
            on_attempt(result)
        return result

    return list(
        await asyncio.gather(
            *(attempt(lm, case, repeat) for lm in models for case in cases for repeat in range(settings.repeats))
        )
    )


async def _ask(lm: LM, case: Case, repeat: int, settings: EvalSettings) -> Attempt:
    common = {
        "model": lm.model,
        "provider": lm.provider,
        "case_id": case.id,
        "category": case.category,
        "prompt": case.prompt,
        "repeat": repeat,
    }
    try:
        response = await lm.respond_async(
            system_message=case.system,
            user_message=case.prompt,
            temperature=settings.temperature,
            max_tokens=case.max_tokens or settings.max_tokens,
        )
    except Exception as exc:  # noqa: BLE001  (one broken reply must not end the run; it is recorded)
        return Attempt(
            **common,
            status="error",
            answer=None,
            reason=redact_secrets(f"{type(exc).__name__}: {exc}"),
            finish_reason=None,
            latency_s=None,
            completion_tokens=None,
        )
    verdict = await asyncio.to_thread(check_answer, case, response.text, unsafe_sandbox=settings.unsafe_sandbox)
    cut = not verdict.passed and response.finish_reason == "length"
    reason = f"cut at max_tokens: {verdict.reason}" if cut else verdict.reason
    return Attempt(
        **common,
        status="passed" if verdict.passed else "failed",
        answer=response.text,
        reason=redact_secrets(reason),
        finish_reason=response.finish_reason,
        latency_s=response.latency_s,
        completion_tokens=response.usage.completion_tokens,
    )
