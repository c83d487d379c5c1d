"""Providers that speak OpenAI's Chat Completions wire format, on the official ``openai`` SDK:
OpenAI itself, Together (api.together.xyz/v1), synthd and any OpenAI-compatible URL (vLLM,
llama.cpp's server, Ollama's ``/v1``)."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar
from urllib.parse import quote

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from synthd.client.errors import ConfigurationError, LMError, ProviderError
from synthd.client.providers.base import STREAM_FAILURES, Provider, StreamPiece
from synthd.client.request import ChatRequest
from synthd.client.response import FinishReason, FunctionCall, LMResponse, ToolCall, Usage
from synthd.config import synthd_api_url

WARMUP_POLL_S = 0.5
"""Seconds between warmup status polls."""

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
    "eos": "stop",
}


class OpenAIChatProvider(Provider):
    """api.openai.com, key from ``OPENAI_API_KEY``, base URL from ``OPENAI_BASE_URL`` if set.

    Sends ``max_completion_tokens`` (OpenAI's current name; o-series models reject ``max_tokens``);
    the other OpenAI-wire providers send ``max_tokens``, which every compatible server knows.
    """

    name: ClassVar[str] = "openai"
    key_env_var: ClassVar[str | None] = "OPENAI_API_KEY"
    base_url_env_var: ClassVar[str | None] = "OPENAI_BASE_URL"
    token_limit_field: ClassVar[str] = "max_completion_tokens"

    def __init__(self, *, api_key: str | None, base_url: str | None, timeout: float, max_retries: int) -> None:
        super().__init__(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)
        self._sync: openai.OpenAI | None = None
        self._async: tuple[asyncio.AbstractEventLoop, openai.AsyncOpenAI] | None = None

    def sdk(self) -> openai.OpenAI:
        """The SDK client, retrying as the SDK does (``max_retries``)."""
        if self._sync is None:
            self._sync = openai.OpenAI(
                api_key=self.api_key or "unused",
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
        return self._sync

    def async_sdk(self) -> openai.AsyncOpenAI:
        """The async SDK client for the running event loop (an httpx pool cannot cross loops)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (
                loop,
                openai.AsyncOpenAI(
                    api_key=self.api_key or "unused",
                    base_url=self.base_url,
                    timeout=self.timeout,
                    max_retries=self.max_retries,
                ),
            )
        return self._async[1]

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """Keyword arguments for ``chat.completions.create``."""
        body: dict[str, Any] = {"model": request.model, "messages": request.messages}
        optional = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stop": request.stop,
            "seed": request.seed,
            "tools": request.tools,
            "tool_choice": request.tool_choice,
            self.token_limit_field: request.max_tokens,
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        if request.response_format is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": request.response_format.name,
                    "schema": request.response_format.schema,
                    "strict": True,
                },
            }
        extra = dict(request.extra_body)
        if request.gpu_preference is not None:
            extra["gpu_preference"] = request.gpu_preference
        if extra:
            body["extra_body"] = extra
        return body

    def complete(self, request: ChatRequest) -> LMResponse:
        try:
            completion = self.sdk().chat.completions.create(**self.body(request))
        except STREAM_FAILURES as exc:
            raise self.error(exc) from exc
        return self.response(completion)

    async def complete_async(self, request: ChatRequest) -> LMResponse:
        try:
            completion = await self.async_sdk().chat.completions.create(**self.body(request))
        except STREAM_FAILURES as exc:
            raise self.error(exc) from exc
        return self.response(completion)

    def stream(self, request: ChatRequest) -> Iterator[StreamPiece]:
        return self.pieces(
            lambda: self.sdk().chat.completions.create(**self.stream_body(request)), ChunkAccumulator(self.name)
        )

    def stream_async(self, request: ChatRequest) -> AsyncIterator[StreamPiece]:
        return self.pieces_async(
            lambda: self.async_sdk().chat.completions.create(**self.stream_body(request)), ChunkAccumulator(self.name)
        )

    def stream_body(self, request: ChatRequest) -> dict[str, Any]:
        """``body`` streamed, with usage in the last chunk."""
        return {**self.body(request), "stream": True, "stream_options": {"include_usage": True}}

    def response(self, completion: ChatCompletion) -> LMResponse:
        """A ``chat.completion`` object as an ``LMResponse`` (first choice)."""
        if not completion.choices:
            raise ProviderError("the reply has no choices", provider=self.name)
        choice = completion.choices[0]
        if choice.finish_reason is None:
            raise ProviderError("the reply has no finish_reason", provider=self.name)
        calls = [
            ToolCall(
                id=call.id, function=FunctionCall(name=call.function.name, arguments=call.function.arguments or "")
            )
            for call in choice.message.tool_calls or []
            if call.type == "function"
        ]
        counts = completion.usage
        return LMResponse(
            text=choice.message.content or "",
            tool_calls=calls,
            finish_reason=finish_reason(choice.finish_reason),
            usage=usage(counts.prompt_tokens, counts.completion_tokens) if counts else Usage(),
            model=completion.model,
            provider=self.name,
            response_id=completion.id,
        )


class TogetherProvider(OpenAIChatProvider):
    """Together AI's OpenAI-compatible endpoint, key from ``TOGETHER_API_KEY``."""

    name: ClassVar[str] = "together"
    key_env_var: ClassVar[str | None] = "TOGETHER_API_KEY"
    base_url_env_var: ClassVar[str | None] = "TOGETHER_BASE_URL"
    default_base_url: ClassVar[str | None] = "https://api.together.xyz/v1"
    token_limit_field: ClassVar[str] = "max_tokens"


class OpenAICompatibleProvider(OpenAIChatProvider):
    """Any server speaking Chat Completions (vLLM, llama.cpp, Ollama): ``base_url=`` or
    ``OPENAI_COMPATIBLE_BASE_URL``; a key only if the server wants one."""

    name: ClassVar[str] = "openai_compatible"
    key_env_var: ClassVar[str | None] = "OPENAI_COMPATIBLE_API_KEY"
    base_url_env_var: ClassVar[str | None] = "OPENAI_COMPATIBLE_BASE_URL"
    needs_key: ClassVar[bool] = False
    token_limit_field: ClassVar[str] = "max_tokens"

    def __init__(self, *, api_key: str | None, base_url: str | None, timeout: float, max_retries: int) -> None:
        if not base_url:
            raise ConfigurationError("needs base_url= or OPENAI_COMPATIBLE_BASE_URL", provider=self.name)
        super().__init__(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)


class SynthdProvider(OpenAIChatProvider):
    """A synthd server: ``SYNTH_API_URL`` (``/v1`` appended when missing; default
    http://127.0.0.1:8000), key from ``SYNTH_API_KEY`` when the server has one. Adds
    ``gpu_preference`` to the body and ``warmup``."""

    name: ClassVar[str] = "synthd"
    key_env_var: ClassVar[str | None] = "SYNTH_API_KEY"
    base_url_env_var: ClassVar[str | None] = "SYNTH_API_URL"
    needs_key: ClassVar[bool] = False
    token_limit_field: ClassVar[str] = "max_tokens"

    def __init__(self, *, api_key: str | None, base_url: str | None, timeout: float, max_retries: int) -> None:
        super().__init__(api_key=api_key, base_url=synthd_api_url(base_url), timeout=timeout, max_retries=max_retries)

    def warmup(self, model: str, gpu_preference: str | None) -> dict[str, Any]:
        """``POST /v1/warmup/{model}``: start loading ``model``; returns the server's warmup object
        (``model``, ``status``, ``gpu``). Raises ``LMError`` (409 when the GPU is not here)."""
        body = {"gpu_preference": gpu_preference} if gpu_preference else None
        try:
            return self.sdk().post(f"/warmup/{quote(model, safe='/:')}", body=body, cast_to=dict[str, Any])
        except STREAM_FAILURES as exc:
            raise self.error(exc) from exc

    def warmup_status(self, model: str) -> dict[str, Any]:
        """``GET /v1/warmup/status/{model}``: ``status`` is ``cold``, ``warming``, ``warmed`` or ``failed``."""
        try:
            return self.sdk().get(f"/warmup/status/{quote(model, safe='/:')}", cast_to=dict[str, Any])
        except STREAM_FAILURES as exc:
            raise self.error(exc) from exc

    def wait_until_warm(self, model: str, timeout_s: float) -> dict[str, Any]:
        """Poll ``warmup_status`` every ``WARMUP_POLL_S`` seconds until ``warmed``; returns that
        status object. Raises ``LMError`` if the load failed or is not done within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (status := self.warmup_status(model)).get("status") not in ("warmed", "failed"):
            if time.monotonic() > deadline:
                raise LMError(f"{model} still warming after {timeout_s:g} s", provider=self.name)
            time.sleep(WARMUP_POLL_S)
        if status["status"] == "failed":
            raise LMError(f"{model} failed to warm up: {status.get('error')}", provider=self.name)
        return status


class ChunkAccumulator:
    """Folds ``chat.completion.chunk`` objects into text deltas and one final ``LMResponse``.

    Tool-call deltas are joined by their ``index`` (OpenAI streams ``id`` and ``name`` once, then
    ``arguments`` in pieces). Raises ``ProviderError`` from ``response`` when no chunk carried a
    ``finish_reason``: a stream that ends early must not look like a normal end.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.text: list[str] = []
        self.calls: dict[int, dict[str, str]] = {}
        self.finish: str | None = None
        self.usage = Usage()
        self.model = ""
        self.response_id: str | None = None
        self.delivered = False

    def add(self, chunk: ChatCompletionChunk) -> str | None:
        """Take one chunk; return its text delta, ``""`` for a tool-call delta, ``None`` otherwise."""
        self.model = chunk.model or self.model
        self.response_id = chunk.id or self.response_id
        if chunk.usage is not None:
            self.usage = usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        if not chunk.choices:
            return None
        choice = chunk.choices[0]
        self.finish = choice.finish_reason or self.finish
        piece: str | None = None
        for delta in choice.delta.tool_calls or []:
            call = self.calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            if delta.function is not None:
                call["name"] = delta.function.name or call["name"]
                call["arguments"] += delta.function.arguments or ""
            piece = ""
        if choice.delta.content:
            self.text.append(choice.delta.content)
            piece = choice.delta.content
        return piece

    def response(self) -> LMResponse:
        """The whole reply. Raises ``ProviderError`` if the stream ended without a finish reason."""
        if self.finish is None:
            raise ProviderError("the stream ended before a finish_reason", provider=self.provider)
        calls = [
            ToolCall(id=call["id"], function=FunctionCall(name=call["name"], arguments=call["arguments"]))
            for _, call in sorted(self.calls.items())
        ]
        return LMResponse(
            text="".join(self.text),
            tool_calls=calls,
            finish_reason=finish_reason(self.finish),
            usage=self.usage,
            model=self.model,
            provider=self.provider,
            response_id=self.response_id,
        )


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    """``Usage`` with ``total_tokens`` computed, whatever total the server claimed."""
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def finish_reason(reason: str | None) -> FinishReason | None:
    """A server's ``finish_reason`` in OpenAI's vocabulary (legacy ``function_call`` → ``tool_calls``)."""
    return _FINISH_REASONS.get(reason or "", "stop" if reason else None)
