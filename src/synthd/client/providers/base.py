"""The base every provider implements, and the mapping of SDK exceptions into ``synthd.client.errors``."""

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, ClassVar, Protocol

import anthropic
import httpx2
import openai

from synthd.client.errors import (
    APIConnectionError,
    APITimeoutError,
    LMError,
    ProviderError,
    StreamInterruptedError,
    status_error,
)
from synthd.client.request import ChatRequest
from synthd.client.response import LMResponse

StreamPiece = str | LMResponse
"""A provider stream yields text deltas (``""`` for a tool-call delta, so the first token can be
timed) and ends with one ``LMResponse`` built from everything it saw."""

STREAM_FAILURES = (openai.APIError, anthropic.APIError, httpx2.HTTPError)
"""What an SDK raises while a stream is read: an error event, or the connection breaking."""


class Accumulator(Protocol):
    """Folds a provider's stream events into pieces: ``add`` returns a text delta (``""`` for a
    tool-call delta) or ``None``; ``response`` the final reply, raising ``ProviderError`` if the
    stream ended early. ``delivered`` is set once a piece went to the caller."""

    delivered: bool

    def add(self, event: Any) -> str | None: ...

    def response(self) -> LMResponse: ...


class Provider(ABC):
    """One provider behind ``LM``, registered by ``name``.

    ``key_env_var`` names the variable the API key comes from; ``needs_key`` is false for servers
    that may run without one (synthd, any OpenAI-compatible URL). ``default_base_url`` is used when
    neither ``base_url=`` nor ``base_url_env_var`` gives one; ``None`` leaves it to the SDK.
    ``max_retries`` goes to the provider's SDK client, which retries as it does (its
    ``_should_retry``, backoff, ``retry-after`` / ``retry-after-ms`` and ``x-stainless-retry-count``).
    Timing, the re-send of a stream broken before its first delta, and structured-output validation
    belong to ``LM``, not to providers.
    """

    name: ClassVar[str]
    key_env_var: ClassVar[str | None]
    base_url_env_var: ClassVar[str | None] = None
    default_base_url: ClassVar[str | None] = None
    needs_key: ClassVar[bool] = True

    def __init__(self, *, api_key: str | None, base_url: str | None, timeout: float, max_retries: int) -> None:
        self.api_key = api_key
        self.base_url = base_url
        self.timeout = timeout
        self.max_retries = max_retries

    @abstractmethod
    def complete(self, request: ChatRequest) -> LMResponse:
        """Send ``request`` and return the whole reply. Raises ``LMError``."""

    @abstractmethod
    async def complete_async(self, request: ChatRequest) -> LMResponse:
        """Async twin of ``complete``."""

    @abstractmethod
    def stream(self, request: ChatRequest) -> Iterator[StreamPiece]:
        """Send ``request`` streamed: text deltas, then the final ``LMResponse``. Raises ``LMError``,
        also when the stream breaks or ends without a finish reason."""

    @abstractmethod
    def stream_async(self, request: ChatRequest) -> AsyncIterator[StreamPiece]:
        """Async twin of ``stream``."""

    def pieces(self, open_stream: Callable[[], Any], accumulator: Accumulator) -> Iterator[StreamPiece]:
        """Open an SDK stream with ``open_stream`` and yield ``accumulator``'s pieces, then its
        response; SDK and transport failures become typed errors (see ``interrupted``)."""
        try:
            events = open_stream()
        except STREAM_FAILURES as exc:
            raise self.error(exc) from exc
        with events:
            try:
                for event in events:
                    if (piece := accumulator.add(event)) is not None:
                        accumulator.delivered = True
                        yield piece
            except STREAM_FAILURES as exc:
                raise self.interrupted(exc, delivered=accumulator.delivered) from exc
        yield accumulator.response()

    async def pieces_async(
        self, open_stream: Callable[[], Awaitable[Any]], accumulator: Accumulator
    ) -> AsyncIterator[StreamPiece]:
        """Async twin of ``pieces``."""
        try:
            events = await open_stream()
        except STREAM_FAILURES as exc:
            raise self.error(exc) from exc
        async with events:
            try:
                async for event in events:
                    if (piece := accumulator.add(event)) is not None:
                        accumulator.delivered = True
                        yield piece
            except STREAM_FAILURES as exc:
                raise self.interrupted(exc, delivered=accumulator.delivered) from exc
        yield accumulator.response()

    def error(self, exc: Exception) -> LMError:
        """``exc`` (an SDK or transport exception) as this package's typed error; anything else is
        re-raised unchanged."""
        if isinstance(exc, LMError):
            return exc
        if isinstance(exc, (openai.APITimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)):
            return APITimeoutError(f"timed out after {self.timeout:g} s", provider=self.name)
        if isinstance(exc, (openai.APIConnectionError, anthropic.APIConnectionError)):
            return APIConnectionError(
                f"cannot reach {self.base_url or 'the API'}: {exc.__cause__ or exc}", provider=self.name
            )
        if isinstance(exc, openai.APIStatusError):
            return status_error(
                self.status_of(exc),
                body_message(exc.body) or exc.message,
                provider=self.name,
                headers=exc.response.headers,
                code=exc.code,
                param=exc.param,
                type=exc.type,
            )
        if isinstance(exc, anthropic.APIStatusError):
            return status_error(
                self.status_of(exc),
                body_message(exc.body) or exc.message,
                provider=self.name,
                headers=exc.response.headers,
                code=getattr(exc, "error_code", None),
                type=getattr(exc, "type", None),
            )
        if isinstance(exc, (openai.APIError, anthropic.APIError)):
            return ProviderError(
                f"error inside the stream: {body_message(exc.body) or exc.message}",
                provider=self.name,
                code=getattr(exc, "code", None),
                param=getattr(exc, "param", None),
                type=getattr(exc, "type", None),
            )
        if isinstance(exc, httpx2.HTTPError):
            return self.interrupted(exc, delivered=True)
        raise exc

    def interrupted(self, exc: Exception, *, delivered: bool) -> LMError:
        """``exc``, raised while reading a stream that had started, as a typed error: an error event
        keeps its status. A dropped connection is a ``StreamInterruptedError`` (``LM`` sends the
        request again) while nothing was ``delivered``, else a ``ProviderError`` (the caller already
        has part of the reply)."""
        if isinstance(exc, (openai.APIStatusError, anthropic.APIStatusError)):
            return self.error(exc)
        if isinstance(exc, (openai.APIConnectionError, anthropic.APIConnectionError)) and exc.__cause__:
            exc = exc.__cause__
        if isinstance(exc, (openai.APIError, anthropic.APIError)):
            return self.error(exc)
        message = f"stream interrupted: {type(exc).__name__}: {exc}"
        if not delivered:
            return StreamInterruptedError(f"{message} (before the first delta)", provider=self.name)
        return ProviderError(message, provider=self.name)

    def status_of(self, exc: openai.APIStatusError | anthropic.APIStatusError) -> int:
        """The HTTP status an SDK error stands for (overridden where an in-stream error event
        arrives on a 200 response)."""
        return exc.status_code


def body_message(body: object) -> str | None:
    """The ``message`` of an OpenAI (``{"message"}`` after the SDK unwraps ``error``) or Anthropic
    (``{"type": "error", "error": {"message"}}``) error body."""
    if not isinstance(body, Mapping):
        return body if isinstance(body, str) and body else None
    inner: Any = body.get("error", body)
    if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
        return inner["message"]
    return None
