"""Domain errors: what went wrong, in synthd's terms, without HTTP.

Every layer below ``api`` raises these (or subclasses defined next to the code that raises them);
``synthd.api.errors`` is the one place that maps a kind to an HTTP status and OpenAI's error object
``{"error": {"message", "type", "param", "code"}}``. ``param`` names the request field at fault and
``code`` is OpenAI's machine-readable code (``context_length_exceeded``, ``model_not_found``, ...).
"""


class SynthdError(Exception):
    """Base of every error a client is told about.

    Args:
        message: one human sentence saying what is wrong and, where it helps, how to fix it.
        param: the request field at fault (``messages``, ``gpu_preference``), if any.
        code: a stable machine-readable code, if any.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(SynthdError):
    """The request cannot be served as asked (bad or unsupported input): the caller must change it."""


class Unauthenticated(SynthdError):
    """The request carries no valid API key (missing, unknown or revoked)."""


class PermissionDenied(SynthdError):
    """The caller's key may see the object but not do this to it (a project key deleting an operator's model)."""


class NotFound(SynthdError):
    """The named object (model, file, job, batch) does not exist, or is not visible to the caller."""


class Conflict(SynthdError):
    """The object exists but its state forbids the action (a finished job cancelled, a busy GPU type)."""


class PayloadTooLarge(SynthdError):
    """A body, file or field is larger than the server accepts."""


class Overloaded(SynthdError):
    """Temporarily unable to serve; waiting ``retry_after_s`` seconds may help.

    Args:
        retry_after_s: seconds after which a retry may succeed (sent as ``Retry-After``).
    """

    def __init__(self, message: str, *, retry_after_s: int, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after_s = retry_after_s


class TooManyRequests(Overloaded):
    """Too many requests: the caller's own rate limit, or a queue that is full. Answered 429 with
    ``Retry-After``, as OpenAI answers both ``rate_limit_exceeded`` and an overloaded engine."""


class ServerFault(SynthdError):
    """The server failed while doing what was asked (a generation error, a broken worker)."""
