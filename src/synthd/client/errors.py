"""One typed error tree that every provider maps into.

Modelled on openai-python's ``_exceptions``: a class per HTTP status under a common base,
connection and timeout errors apart. Each error carries ``provider``, ``status_code`` (``None``
when no HTTP status came back) and the provider's own ``message``; ``retry_after_s`` holds the
server's ``Retry-After`` when it sent one.
"""

from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


class LMError(Exception):
    """Base of every error the ``LM`` client raises."""

    def __init__(self, message: str, *, provider: str | None = None, status_code: int | None = None,
                 retry_after_s: float | None = None) -> None:
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


class APITimeoutError(APIConnectionError):
    """The request ran past the client's ``timeout``."""


class APIStatusError(LMError):
    """The server answered with an error status."""


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
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    409: ConflictError, 413: BadRequestError, 422: UnprocessableEntityError, 429: RateLimitError,
}


def status_error(status_code: int, message: str, *, provider: str,
                 headers: Mapping[str, str] | None = None) -> APIStatusError:
    """The ``APIStatusError`` subclass for ``status_code`` (5xx and unknown codes: ``ProviderError``),
    with ``retry_after_s`` read from ``headers``."""
    cls = _BY_STATUS.get(status_code, ProviderError)
    return cls(message, provider=provider, status_code=status_code, retry_after_s=retry_after(headers or {}))


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (delta-seconds or an HTTP date,
    RFC 9110 §10.2.3); ``None`` when absent or unreadable."""
    if (millis := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def is_retryable(error: BaseException) -> bool:
    """Retry on 408, 429, 5xx, timeouts and connection errors; never on other 4xx or local errors."""
    if isinstance(error, APIConnectionError):
        return True
    if isinstance(error, APIStatusError) and error.status_code is not None:
        return error.status_code in (408, 429) or error.status_code >= 500
    return False
