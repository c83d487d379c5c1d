"""The engine boundary: what the serving layer may ask of an engine, and nothing else.

Shaped after vLLM's ``EngineClient`` (vllm/engine/protocol.py): a tokenizer and chat-template
rendering, ``max_model_len``, ``generate(request_id, prompt_token_ids, params, lora, guide)`` as an
async iterator of incremental outputs, ``abort``, LoRA residency (``add_lora`` / ``remove_lora`` /
``list_loras``) and the stats ``/metrics`` needs. Two implementations: ``engine.native`` (synthd's
own continuous-batching engine, the embedded default) and ``engine.vllm`` (vLLM's ``AsyncLLM``).
The serving layer never touches a model, a lock or an engine thread.
"""

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from transformers import PreTrainedTokenizerBase

from synthd.engine.prompts import CHAT_ADD_SPECIAL_TOKENS, COMPLETION_ADD_SPECIAL_TOKENS
from synthd.errors import InvalidRequest, ServerFault, TooManyRequests

FinishReason = Literal["stop", "length", "abort"]
"""``stop``: an end-of-sequence token or a stop string; ``length``: ``max_tokens`` or the context;
``abort``: the request was aborted (client gone, server shutting down)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is decoded (one choice of a request).

    ``temperature`` below 1e-5 is greedy (argmax, deterministic). ``max_tokens`` counts generated
    tokens. ``stop`` strings end the output and are not included in it. ``seed`` makes sampling
    reproducible. ``logit_bias`` adds a bias (−100…100) to token ids' logits before sampling, as
    OpenAI defines it. ``logprobs``: None for none, else how many top alternatives to return per
    output token besides the chosen one (0 … 20). ``ignore_eos`` (vLLM's extension) keeps generating
    past end-of-sequence tokens. ``priority`` orders admission among waiting sequences: lower values
    first, arrival order within one value (vLLM's ``priority`` scheduling policy); interactive
    requests use 0, batch-API lines ``BATCH_PRIORITY``.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None
    ignore_eos: bool = False
    priority: int = 0


BATCH_PRIORITY = 10
"""``SamplingParams.priority`` of batch-API lines: admitted after every waiting interactive sequence."""


@dataclass(frozen=True)
class LoRARef:
    """A LoRA adapter to apply: ``name`` is the fine-tune's model id, ``path`` its PEFT folder."""

    name: str
    path: Path


@dataclass(frozen=True)
class Guide:
    """Structured output: the sequence must be JSON matching ``json_schema`` (vLLM's
    ``StructuredOutputsParams(json=...)``)."""

    json_schema: dict[str, Any] = field(hash=False)


LOGPROB_FLOOR = -9999.0
"""What a logprob of -inf or NaN is answered as (vLLM's floor): JSON has no non-finite numbers."""


def finite_logprob(value: float) -> float:
    """``value`` floored at ``LOGPROB_FLOOR``; NaN and -inf become the floor, +inf 0.0."""
    if math.isnan(value):
        return LOGPROB_FLOOR
    return min(max(value, LOGPROB_FLOOR), 0.0) if math.isinf(value) else max(value, LOGPROB_FLOOR)


@dataclass(frozen=True)
class TokenLogprob:
    """One output token's log-probability (natural log) and, when asked, its top alternatives as
    ``(token text, logprob, bytes)``, most likely first. ``token`` is the token's own text and
    ``bytes`` its raw bytes (``synthd.engine.token_bytes``; OpenAI's ``logprobs.content`` item).
    Every logprob is finite (``finite_logprob``), whichever engine made it, so no response
    serialises NaN or infinity."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "logprob", finite_logprob(self.logprob))
        object.__setattr__(self, "top", tuple((t, finite_logprob(lp), b) for t, lp, b in self.top))


@dataclass(frozen=True)
class RequestOutput:
    """One step of one request, incremental: ``text`` and ``token_ids`` are what is new since the
    previous output (either may be empty). ``completion_tokens`` counts every token generated so
    far, an end-of-sequence token included (as vLLM and OpenAI count); ``finish_reason`` is None
    until the last output. ``logprobs`` has one entry per new token when the params asked for them.
    Times are ``time.perf_counter()`` seconds: ``scheduled_s`` when the engine first ran it."""

    request_id: str
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    scheduled_s: float | None = None


@dataclass(frozen=True)
class EngineStats:
    """Gauges and counters for ``/metrics`` (vLLM's names): sequences ``running`` and ``waiting``,
    ``kv_cache_usage`` (0…1 of the KV budget), and prefix-cache ``queries``/``hits`` in tokens."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0


class GenerationError(ServerFault):
    """Generation of one request failed inside the engine (its neighbours go on)."""


class GuideError(InvalidRequest):
    """A structured-output schema the engine cannot compile; the message says why."""


QUEUE_FULL_RETRY_AFTER_S = 1


class QueueFull(TooManyRequests):
    """The engine's waiting queue is full (either engine, ``max_waiting``); retry after ``retry_after_s``."""

    def __init__(self, max_waiting: int) -> None:
        super().__init__(
            f"The engine is overloaded ({max_waiting} requests already waiting); retry shortly.",
            retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
            code="engine_overloaded",
        )


class Engine(Protocol):
    """What the serving layer may use of an engine. See the module docstring."""

    model_id: str
    tokenizer: PreTrainedTokenizerBase
    max_model_len: int
    dtype: str
    """The weights' dtype as torch names it (``bfloat16``, ``float32``)."""

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_special_tokens: bool = CHAT_ADD_SPECIAL_TOKENS,
        chat_template: str | None = None,
    ) -> list[int]:
        """Token ids of ``messages`` in ``chat_template`` (a fine-tune's own) or else the model's,
        plus the assistant cue (``add_special_tokens``: the tokenizer's special tokens on top of the
        template's; see ``engine.prompts``).

        Raises:
            InvalidRequest: no chat template, or the messages cannot be rendered or tokenized.
        """
        ...

    def encode(self, text: str, add_special_tokens: bool = COMPLETION_ADD_SPECIAL_TOKENS) -> list[int]:
        """Token ids of a raw prompt, with the tokenizer's special tokens (a BOS where it adds one)
        unless ``add_special_tokens`` is False (see ``engine.prompts``).

        Raises:
            InvalidRequest: the text cannot be tokenized.
        """
        ...

    def check_guide(self, guide: Guide) -> None:
        """Compile ``guide`` ahead of generation (cached).

        Raises:
            GuideError: the schema cannot be compiled.
        """
        ...

    def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        lora: LoRARef | None = None,
        guide: Guide | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Run one sequence; yield its outputs until the one with a ``finish_reason``. Closing the
        iterator early aborts the request.

        Raises:
            GenerationError: this request failed in the engine (bad adapter, guide error, engine
                fault); other requests are not affected.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a request; its iterator ends with ``finish_reason`` ``abort``. Unknown ids are ignored."""
        ...

    async def add_lora(self, lora: LoRARef) -> None:
        """Make ``lora`` resident ahead of traffic (generate loads it on demand too).

        Raises:
            GenerationError: the adapter cannot be loaded.
        """
        ...

    async def remove_lora(self, name: str) -> bool:
        """Unload an adapter once no request uses it; False if it was not resident."""
        ...

    def list_loras(self) -> list[str]:
        """Names of resident adapters, least recently used first."""
        ...

    def stats(self) -> EngineStats:
        """Current gauges and counters."""
        ...

    async def shutdown(self) -> None:
        """Stop the engine; requests still running end with ``abort``."""
        ...
