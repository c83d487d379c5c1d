"""One typed error tree that every provider maps into.

Modelled on openai-python's ``_exceptions``: a class per HTTP status under a common base,
connection and timeout errors apart. Each error carries ``provider``, ``status_code`` (``None``
when no HTTP status came back) and the provider's own ``message``; ``retry_after_s`` holds the
server's ``retry-after-ms`` / ``Retry-After`` when it sent one. Status errors also keep what the
server said about the error and about retrying it: ``code``, ``param`` and ``type`` from the error
body, and ``should_retry`` from the ``x-should-retry`` header (what the SDKs' retries obey).
"""

import email.utils
import time
from collections.abc import Mapping


class LMError(Exception):
    """Base of every error the ``LM`` client raises."""

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.message = message
        self.provider = provider
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        prefix = f"{provider}: " if provider else ""
        status = f"{status_code} " if status_code is not None else ""
        super().__init__(f"{prefix}{status}{message}")


class ConfigurationError(LMError):
    """The client cannot be built as asked: unknown provider, ambiguous model, bad argument."""


class MissingCredentialsError(ConfigurationError):
    """The provider needs an API key and neither ``api_key=`` nor its environment variable gave one."""

    def __init__(self, provider: str, env_var: str) -> None:
        super().__init__(f"no API key: set {env_var} or pass api_key=", provider=provider)
        self.env_var = env_var


class APIConnectionError(LMError):
    """The server could not be reached, or the connection broke before a response started."""


class StreamInterruptedError(APIConnectionError):
    """A stream's connection broke after the response started but before its first delta: nothing
    reached the caller, so ``LM`` sends the request again (the SDK cannot: it had already returned
    the stream); raised once ``max_retries`` re-sends broke too."""


class APITimeoutError(APIConnectionError):
    """The request ran past the client's ``timeout``."""


class APIStatusError(LMError):
    """The server answered with an error status.

    ``code``, ``param``, ``type``: the error body's fields, as openai-python's ``APIError`` keeps
    them (OpenAI: ``{"error": {"message", "type", "param", "code"}}``, e.g. ``code``
    ``context_length_exceeded``; Anthropic: ``error.type`` as ``type`` and
    ``error.details.error_code`` as ``code``), ``None`` when absent. ``should_retry``: the server's
    ``x-should-retry`` header, ``True`` for ``true``, ``False`` for ``false``, else ``None``.
    ``headers``: the response's headers, names in lower case.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        should_retry: bool | None = None,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,  # openai-python's names
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, provider=provider, status_code=status_code, retry_after_s=retry_after_s)
        self.should_retry = should_retry
        self.headers = {name.lower(): value for name, value in (headers or {}).items()}
        self.code = code
        self.param = param
        self.type = type


class BadRequestError(APIStatusError):
    """400: the request was malformed or asked for something the provider does not support."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or wrong."""


class PermissionDeniedError(APIStatusError):
    """403: the key is valid but may not do this."""


class NotFoundError(APIStatusError):
    """404: unknown model or route."""


class ConflictError(APIStatusError):
    """409: the request conflicts with the server's state (synthd: the GPU asked for is not here)."""


class UnprocessableEntityError(APIStatusError):
    """422: the request was well-formed but could not be processed."""


class RateLimitError(APIStatusError):
    """429: too many requests; ``retry_after_s`` says when to come back if the server said."""


class ProviderError(APIStatusError):
    """5xx or any other failure on the provider's side, including a stream that broke after its first
    byte or ended without a finish reason (``status_code`` is then the stream's HTTP status)."""


class StructuredOutputError(LMError):
    """The reply did not validate against ``response_model``, even after one retry that showed the
    model its error. ``text`` is the last reply, ``errors`` the last validation message."""

    def __init__(self, message: str, *, provider: str, text: str, errors: str) -> None:
        super().__init__(message, provider=provider)
        self.text = text
        self.errors = errors


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: BadRequestError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error(
    status_code: int,
    message: str,
    *,
    provider: str,
    headers: Mapping[str, str] | None = None,
    code: str | None = None,
    param: str | None = None,
    type: str | None = None,
) -> APIStatusError:
    """The ``APIStatusError`` subclass for ``status_code`` (5xx and unknown codes: ``ProviderError``),
    with ``retry_after_s`` and ``should_retry`` read from ``headers`` (any case-insensitive mapping,
    e.g. the SDK response's)."""
    lowered = {name.lower(): value for name, value in (headers or {}).items()}
    cls = _BY_STATUS.get(status_code, ProviderError)
    return cls(
        message,
        provider=provider,
        status_code=status_code,
        retry_after_s=retry_after(lowered),
        should_retry={"true": True, "false": False}.get(lowered.get("x-should-retry", "")),
        code=code,
        param=param,
        type=type,
        headers=lowered,
    )


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks to wait, as openai-python's ``_parse_retry_after_header`` reads them
    from ``headers`` (lower-case names): ``retry-after-ms`` (milliseconds), else ``retry-after`` as
    seconds (floats allowed), else as an HTTP date (RFC 9110 §10.2.3) minus now; ``None`` when
    absent or unreadable. Not clamped: zero, negative and infinite values (a number too large for a
    float too) come back as sent; the SDKs decide what they mean for a retry."""
    for header, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            delay = float(value)
        except ValueError:
            continue
        return delay / divisor
    try:
        when = email.utils.parsedate_tz(headers.get("retry-after"))  # type: ignore[arg-type]
        if when is None:
            return None
        return float(email.utils.mktime_tz(when) - time.time())
    except (TypeError, ValueError, OverflowError, OSError):
        return None
