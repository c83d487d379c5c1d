"""``LM``: one interface to synthd, OpenAI, Anthropic, Together and any OpenAI-compatible server."""

import json
import math
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import openai
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, ValidationError

from synthd.client.errors import (
    ConfigurationError,
    MissingCredentialsError,
    ProviderError,
    StreamInterruptedError,
    StructuredOutputError,
)
from synthd.client.options import check_call
from synthd.client.providers import PROVIDERS, SynthdProvider
from synthd.client.providers.base import StreamPiece
from synthd.client.request import ChatRequest, JSONSchemaFormat
from synthd.client.response import LMResponse
from synthd.client.routing import route

Message = dict[str, Any]
_JSON_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


class LM:
    """A model behind a provider, called the same way whichever it is.

    ``LM("gpt-4o-mini")``, ``LM("claude-3-haiku-20240307")``, ``LM("SmolLM2-135M-Instruct")`` (synthd),
    ``LM("together/meta-llama/Llama-3-8b-chat-hf")``, ``LM("qwen2", base_url="http://localhost:11434/v1")``.
    The provider comes from ``synthd.client.routing.route``; the key from ``api_key`` or the
    provider's variable (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``TOGETHER_API_KEY``,
    ``SYNTH_API_KEY``); the base URL from ``base_url``, the provider's variable (``SYNTH_API_URL``,
    ``OPENAI_BASE_URL``, …) or its default. ``temperature``/``max_tokens`` are defaults for every
    call; ``max_retries`` (default 2, both SDKs' default) counts retries after the first try and is
    the provider SDK's own ``max_retries``: openai-python or the Anthropic SDK retries as it does
    (408, 409, 429, 5xx, timeouts, connection errors; the server's ``x-should-retry`` and
    ``retry-after-ms`` / ``retry-after`` obeyed; ``x-stainless-retry-count`` on each try). ``LM``
    adds one case the SDKs cannot see, a stream broken before its first delta, which it sends again
    (see ``_open_stream``). ``timeout`` is seconds per HTTP request.

    Raises ConfigurationError (ambiguous model, unknown provider, bad argument) and
    MissingCredentialsError (naming the variable to set) at construction.
    """

    def __init__(
        self,
        model: str,
        provider: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        max_retries: int = openai.DEFAULT_MAX_RETRIES,
        timeout: float = 120.0,
    ) -> None:
        if not isinstance(model, str):
            raise ConfigurationError(f"model must be a string, not {type(model).__name__}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if base_url is not None:
            check_url(base_url)
        self.provider, self.model = route(model, provider, base_url)
        cls = PROVIDERS[self.provider]
        key = api_key or (os.environ.get(cls.key_env_var) if cls.key_env_var else None) or None
        if cls.needs_key and not key:
            raise MissingCredentialsError(cls.name, cls.key_env_var or "an API key variable")
        url = (
            base_url or (os.environ.get(cls.base_url_env_var) if cls.base_url_env_var else None) or cls.default_base_url
        )
        self._provider = cls(api_key=key, base_url=url, timeout=timeout, max_retries=max_retries)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_retries = max_retries

    def __repr__(self) -> str:
        return f"LM({self.model!r}, provider={self.provider!r})"

    def respond(
        self,
        messages: list[Message] | None = None,
        *,
        system_message: str | None = None,
        user_message: str | None = None,
        response_model: type[BaseModel] | None = None,
        **options: Any,
    ) -> LMResponse:
        """Send a chat and return the reply.

        Give ``messages`` (OpenAI chat messages, tool turns included) or ``system_message`` +
        ``user_message``. ``options``: ``tools``, ``tool_choice``, ``stop`` (str or list), ``seed``,
        ``temperature``, ``top_p``, ``max_tokens``, ``gpu_preference`` (synthd only), ``extra_body``.
        With ``response_model`` (a pydantic model) the reply is asked for as JSON of its schema
        (made strict as openai-python's ``chat.completions.parse`` does: no extra keys, every field
        listed) and validated into ``structured_output``; a reply that does not validate gets one retry showing
        the model its error.

        Raises LMError subclasses: BadRequestError, AuthenticationError, NotFoundError,
        RateLimitError (after retries), ProviderError, APIConnectionError, StructuredOutputError.
        """
        request = self._request(messages, system_message, user_message, response_model, options)
        started = time.perf_counter()
        response = self._complete(request)
        if response_model is not None:
            response = self._structured(request, response, response_model)
        return response.model_copy(update={"latency_s": time.perf_counter() - started})

    respond_sync = respond

    async def respond_async(
        self,
        messages: list[Message] | None = None,
        *,
        system_message: str | None = None,
        user_message: str | None = None,
        response_model: type[BaseModel] | None = None,
        **options: Any,
    ) -> LMResponse:
        """Async twin of ``respond``."""
        request = self._request(messages, system_message, user_message, response_model, options)
        started = time.perf_counter()
        response = await self._complete_async(request)
        if response_model is not None:
            response = await self._structured_async(request, response, response_model)
        return response.model_copy(update={"latency_s": time.perf_counter() - started})

    def stream(
        self,
        messages: list[Message] | None = None,
        *,
        system_message: str | None = None,
        user_message: str | None = None,
        response_model: type[BaseModel] | None = None,
        **options: Any,
    ) -> Iterator[str | LMResponse]:
        """Like ``respond``, streamed: yields text deltas (``str``), then the final ``LMResponse`` with
        ``ttft_s`` set. A failure before the first delta is retried; after it, it is raised (an
        interrupted stream never ends as if complete). With ``response_model``, a reply that does not
        validate gets one non-streamed retry, whose text is in the final response."""
        request = self._request(messages, system_message, user_message, response_model, options)
        started = time.perf_counter()
        ttft: float | None = None
        for piece in self._open_stream(request):
            if isinstance(piece, LMResponse):
                if response_model is not None:
                    piece = self._structured(request, piece, response_model)
                yield piece.model_copy(update={"latency_s": time.perf_counter() - started, "ttft_s": ttft})
                return
            ttft = ttft if ttft is not None else time.perf_counter() - started
            if piece:
                yield piece

    async def stream_async(
        self,
        messages: list[Message] | None = None,
        *,
        system_message: str | None = None,
        user_message: str | None = None,
        response_model: type[BaseModel] | None = None,
        **options: Any,
    ) -> AsyncIterator[str | LMResponse]:
        """Async twin of ``stream``."""
        request = self._request(messages, system_message, user_message, response_model, options)
        started = time.perf_counter()
        ttft: float | None = None
        async for piece in self._open_stream_async(request):
            if isinstance(piece, LMResponse):
                if response_model is not None:
                    piece = await self._structured_async(request, piece, response_model)
                yield piece.model_copy(update={"latency_s": time.perf_counter() - started, "ttft_s": ttft})
                return
            ttft = ttft if ttft is not None else time.perf_counter() - started
            if piece:
                yield piece

    def warmup(
        self, gpu_preference: str | None = None, *, wait: bool = True, timeout_s: float = 900.0
    ) -> dict[str, Any]:
        """Ask the synthd server to load this model (on ``gpu_preference``), and with ``wait`` poll
        until it is ``warmed``. Returns the server's warmup status object (``model``, ``status``,
        ``gpu``, ``load_seconds``…).

        Raises ConfigurationError for other providers; LMError when the server refuses (409: that
        GPU is not here), the load fails, or it is not warm within ``timeout_s`` seconds.
        """
        if not isinstance(self._provider, SynthdProvider):
            raise ConfigurationError("warmup is a synthd operation", provider=self.provider)
        started = self._provider.warmup(self.model, gpu_preference)
        return self._provider.wait_until_warm(self.model, timeout_s) if wait else started

    def _request(
        self,
        messages: list[Message] | None,
        system_message: str | None,
        user_message: str | None,
        response_model: type[BaseModel] | None,
        options: dict[str, Any],
    ) -> ChatRequest:
        if messages is None:
            if user_message is None:
                raise ConfigurationError("pass messages= or user_message=")
            messages = [{"role": "system", "content": system_message}] if system_message is not None else []
            messages.append({"role": "user", "content": user_message})
        elif system_message is not None or user_message is not None:
            raise ConfigurationError("pass either messages= or system_message=/user_message=, not both")
        check_call(messages, options)
        if options.get("gpu_preference") is not None and self.provider != "synthd":
            raise ConfigurationError("gpu_preference is a synthd option", provider=self.provider)
        stop = options.get("stop")
        schema = None
        if response_model is not None:
            if not (isinstance(response_model, type) and issubclass(response_model, BaseModel)):
                raise ConfigurationError(f"response_model must be a pydantic model class, not {response_model!r}")
            schema = JSONSchemaFormat(name=response_model.__name__[:64], schema=to_strict_json_schema(response_model))
        return ChatRequest(
            model=self.model,
            messages=[dict(message) for message in messages],
            temperature=options.get("temperature", self.temperature),
            top_p=options.get("top_p"),
            max_tokens=options.get("max_tokens", self.max_tokens),
            stop=[stop] if isinstance(stop, str) else stop,
            seed=options.get("seed"),
            tools=options.get("tools"),
            tool_choice=options.get("tool_choice"),
            response_format=schema,
            gpu_preference=options.get("gpu_preference"),
            extra_body=dict(options.get("extra_body") or {}),
        )

    def _complete(self, request: ChatRequest) -> LMResponse:
        with malformed_as_error(self.provider):
            return self._provider.complete(request)

    async def _complete_async(self, request: ChatRequest) -> LMResponse:
        with malformed_as_error(self.provider):
            return await self._provider.complete_async(request)

    def _open_stream(self, request: ChatRequest) -> Iterator[StreamPiece]:
        """The provider's stream with its first piece already read. The SDK retries the request
        itself; a stream that broke before its first piece is sent again, immediately (a server that
        is down is then the SDK's to back off from), at most ``max_retries`` times."""
        for resends_left in range(self.max_retries, -1, -1):
            with malformed_as_error(self.provider):
                pieces = self._provider.stream(request)
                try:
                    first = next(pieces)
                    break
                except StreamInterruptedError:
                    if not resends_left:
                        raise
        yield first
        with malformed_as_error(self.provider):
            yield from pieces

    async def _open_stream_async(self, request: ChatRequest) -> AsyncIterator[StreamPiece]:
        for resends_left in range(self.max_retries, -1, -1):
            with malformed_as_error(self.provider):
                pieces = self._provider.stream_async(request)
                try:
                    first = await anext(pieces)
                    break
                except StreamInterruptedError:
                    if not resends_left:
                        raise
        yield first
        with malformed_as_error(self.provider):
            async for piece in pieces:
                yield piece

    def _structured(self, request: ChatRequest, response: LMResponse, model: type[BaseModel]) -> LMResponse:
        parsed, errors = validate(model, response.text)
        if errors is None:
            return response.model_copy(update={"structured_output": parsed})
        retried = self._complete(correction(request, response.text, errors))
        return self._accept(retried, model, response)

    async def _structured_async(self, request: ChatRequest, response: LMResponse, model: type[BaseModel]) -> LMResponse:
        parsed, errors = validate(model, response.text)
        if errors is None:
            return response.model_copy(update={"structured_output": parsed})
        retried = await self._complete_async(correction(request, response.text, errors))
        return self._accept(retried, model, response)

    def _accept(self, retried: LMResponse, model: type[BaseModel], first: LMResponse) -> LMResponse:
        parsed, errors = validate(model, retried.text)
        if errors is not None:
            raise StructuredOutputError(
                f"reply is not a valid {model.__name__} after one retry: {errors}",
                provider=self.provider,
                text=retried.text,
                errors=errors,
            )
        usage = first.usage.model_copy(
            update={
                field: getattr(first.usage, field) + getattr(retried.usage, field)
                for field in ("prompt_tokens", "completion_tokens", "total_tokens")
            }
        )
        return retried.model_copy(update={"structured_output": parsed, "usage": usage, "ttft_s": first.ttft_s})


@contextmanager
def malformed_as_error(provider: str) -> Iterator[None]:
    """A reply the SDK or our parsing could not read (bad JSON, missing fields, wrong types) as a
    ``ProviderError``; the request itself was validated before sending, so these come from the server."""
    try:
        yield
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ProviderError(f"malformed reply: {type(exc).__name__}: {exc}", provider=provider) from exc


def check_url(url: str) -> None:
    """Raise ConfigurationError unless ``url`` is an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"base_url {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"base_url {url!r} must be an absolute http(s) URL")


def validate(model: type[BaseModel], text: str) -> tuple[BaseModel | None, str | None]:
    """``(instance, None)`` if ``text`` (optionally in a ```json fence) is valid JSON for ``model``,
    else ``(None, a one-paragraph description of what is wrong)``."""
    fenced = _JSON_FENCE.match(text)
    try:
        return model.model_validate_json(fenced.group(1) if fenced else text), None
    except ValidationError as exc:
        return None, "; ".join(f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}" for e in exc.errors())


def correction(request: ChatRequest, text: str, errors: str) -> ChatRequest:
    """``request`` with the bad reply and a user turn showing the validation error appended."""
    schema = json.dumps(request.response_format.schema) if request.response_format else ""
    feedback = (
        f"Your reply did not match the required JSON schema: {errors}. Reply again with only a JSON "
        f"object matching this schema: {schema}"
    )
    return ChatRequest(
        **{
            **request.__dict__,
            "messages": [
                *request.messages,
                {"role": "assistant", "content": text},
                {"role": "user", "content": feedback},
            ],
        }
    )
