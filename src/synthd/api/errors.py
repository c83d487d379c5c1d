"""One error envelope for every route: OpenAI's ``{"error": {message, type, param, code}}``.

Every user-facing failure is raised as a domain error (``synthd.errors``, which carry no HTTP) and
answered through ``domain_error`` and ``STATUS_BY_KIND``, so the status and body come from one place;
validation errors become 400s, never FastAPI's bare 422, and anything unexpected a 500.
"""

import logging
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from synthd.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    ServerFault,
    SynthdError,
    TooManyRequests,
    Unauthenticated,
)

STATUS_BY_KIND: tuple[tuple[type[SynthdError], int, str], ...] = (
    (InvalidRequest, 400, "invalid_request_error"),
    (Unauthenticated, 401, "authentication_error"),
    (PermissionDenied, 403, "permission_error"),
    (NotFound, 404, "not_found_error"),
    (Conflict, 409, "invalid_request_error"),
    (PayloadTooLarge, 413, "invalid_request_error"),
    (TooManyRequests, 429, "rate_limit_error"),
    (Overloaded, 503, "server_error"),
    (ServerFault, 500, "server_error"),
)
"""Domain error kind → HTTP status and OpenAI error ``type``; the first matching kind wins."""

log = logging.getLogger(__name__)


class ErrorObject(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope, the body of every 4xx and 5xx answer."""

    error: ErrorObject


ERROR_DESCRIPTIONS = {
    400: "Invalid or unsupported request (the field is named in `param`).",
    401: "Missing, unknown or revoked API key.",
    403: "The key may not do this.",
    404: "No such object, or not visible to this key's project.",
    409: "The object's state forbids the action.",
    413: "The request body or file is larger than the server accepts.",
    429: "Rate limit or a full queue: retry after `Retry-After` seconds.",
    500: "The server failed while serving the request.",
    503: "Temporarily unable to serve (loading, overloaded or shutting down).",
}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` entries documenting ``statuses`` with the envelope's schema."""
    return {status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


COMMON_ERRORS = error_responses(400, 401, 413, 429, 500)
"""What any authenticated route can answer: bad input, no key, a body over the cap, a rate limit,
an unexpected failure."""


@dataclass(frozen=True)
class ErrorAnswer:
    """An answer with OpenAI's error object: the status, the object's fields and extra headers.

    ``type`` follows OpenAI: ``invalid_request_error`` (4xx from bad input),
    ``authentication_error`` (401), ``not_found_error`` (404), ``server_error`` (5xx).
    """

    status_code: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        """The JSON response, with extra ``headers``."""
        return JSONResponse(self.body(), status_code=self.status_code, headers={**self.headers, **(headers or {})})


def internal_error(exc: BaseException) -> ErrorAnswer:
    """The 500 for an exception no mapping knows (its type named, its message kept out)."""
    return ErrorAnswer(500, f"Internal server error: {type(exc).__name__}", type="server_error")


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ErrorAnswer:
    """A 400 ``invalid_request_error``."""
    return ErrorAnswer(400, message, param=param, code=code)


PYDANTIC_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}
PYDANTIC_TAG_PREFIXES = ("constrained-", "function-", "lax-", "strict-", "json-", "tagged-union")


def _param_path(loc: tuple, keep_all: bool = False) -> str | None:
    """``("body", "messages", 0, "role")`` → ``messages.0.role``; union branch tags (``str``,
    ``list[str]``, ``function-after[...]``) are dropped unless ``keep_all`` (an unknown field's own name)."""
    parts = []
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        text = str(part)
        if not keep_all and (text in PYDANTIC_TYPE_TAGS or "[" in text or text.startswith(PYDANTIC_TAG_PREFIXES)):
            break
        parts.append(text)
    return ".".join(parts) or None


def domain_error(exc: SynthdError) -> ErrorAnswer:
    """The API error for a domain error (``STATUS_BY_KIND``); an unknown kind is a 500."""
    status, kind = next(
        ((status, kind) for cls, status, kind in STATUS_BY_KIND if isinstance(exc, cls)), (500, "server_error")
    )
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Overloaded) else {}
    if status in (400, 401, 403, 404, 409, 413):  # retrying cannot help: tell clients that follow openai-python's rules
        headers["x-should-retry"] = "false"
    return ErrorAnswer(status, exc.message, type=kind, param=exc.param, code=exc.code, headers=headers)


def error_response(exc: SynthdError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The envelope response for ``exc`` (used by the ASGI middlewares, which answer before FastAPI's
    handlers run), with extra ``headers``."""
    return domain_error(exc).response(headers)


def _validation_error(exc: RequestValidationError) -> ErrorAnswer:
    # With a union (``stop: str | list[str]``) pydantic reports one error per branch; the branch
    # that matched the input's type explains the problem, not "Input should be a valid string".
    errors = sorted(exc.errors(), key=lambda e: str(e.get("type", "")).endswith("_type"))
    first = errors[0]
    param = _param_path(tuple(first.get("loc", ())), keep_all=first.get("type") == "extra_forbidden")
    if first.get("type") == "extra_forbidden":
        return bad_request(
            f"Unsupported parameter: '{param}' is not supported by synthd.", param, "unsupported_parameter"
        )
    if first.get("type") == "json_invalid":
        return bad_request("We could not parse the JSON body of your request.", None, "invalid_json")
    message = first.get("msg", "invalid value")
    return bad_request(
        f"Invalid value for '{param}': {message}." if param else f"Invalid request: {message}.", param, "invalid_value"
    )


def error_reply(exc: Exception) -> tuple[int, dict]:
    """The HTTP status and JSON body a route answers for ``exc``: a domain error as
    ``domain_error`` maps it, a pydantic ``ValidationError`` of a request body as a 400 naming the
    field, anything else a 500. For answers given outside a route (a batch line's result)."""
    if isinstance(exc, SynthdError):
        error = domain_error(exc)
    elif isinstance(exc, ValidationError):
        error = _validation_error(RequestValidationError(exc.errors()))
    else:
        error = internal_error(exc)
    return error.status_code, error.body()


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception through the one envelope."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ErrorAnswer(exc.status_code, str(exc.detail), type=kind).response()

    @app.exception_handler(SynthdError)
    async def _domain(_: Request, exc: SynthdError) -> JSONResponse:
        return domain_error(exc).response()


class UnexpectedErrorMiddleware:
    """Answers an exception no handler maps with a 500 in the envelope, and keeps the connection.

    Starlette's own last-resort handler answers and then re-raises, so the server drops the
    keep-alive connection and the client's next request on it fails; this pure ASGI middleware,
    installed outermost, ends the exception here. Once a response has started (a stream), the
    exception is left to the server: nothing well-formed can be sent any more.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise
            log.exception("unhandled error")
            await internal_error(exc).response()(scope, receive, send)
