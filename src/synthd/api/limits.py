"""Request limits checked before any route runs, as pure ASGI middlewares (no body is read):

- ``HostCheckMiddleware``: the ``Host`` header must name this server (Starlette's
  ``TrustedHostMiddleware`` patterns, matched by ``host_allowed``), so a web page cannot reach a
  loopback server through DNS rebinding; 400 ``invalid_host`` otherwise. Unlike Starlette, an IPv6
  literal matches without its brackets: ``Host: [::1]:8000`` is the allowed ``::1``.
- ``BodyLimitMiddleware``: the body is counted while it is read; a declared ``Content-Length`` over
  the cap is refused at once, a streamed body as soon as it passes the cap (413), without reading
  the rest. ``POST /v1/files`` has its own, larger cap.

Early answers use OpenAI's error envelope, and ``Connection: close`` when a body may be pending so
the server does not go on receiving it. The order of the stack is in ``synthd.api.app``.

Starlette's ``RequestBodyLimitMiddleware`` (and FastAPI's ``max_body_size``) count the same way but
raise into the route and, when a route answers without reading, replace its answer with a
plain-text 413; the cap here answers a declared oversize body at once, in the envelope, and takes
the per-route cap (the upload's) from settings at run time.
"""

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synthd.api.errors import error_response
from synthd.config import Settings, setting_default
from synthd.errors import InvalidRequest, PayloadTooLarge, SynthdError
from synthd.services.files import MULTIPART_ENVELOPE_BYTES

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


def default_allowed_hosts(bind_host: str) -> list[str]:
    """Loopback names, the bound host, and for a wildcard bind (``0.0.0.0``) this machine's names."""
    names = [*LOOPBACK_HOSTS]
    if bind_host in WILDCARD_BINDS:
        names += [socket.gethostname(), socket.getfqdn()]
    else:
        names.append(bind_host.strip("[]"))
    return list(dict.fromkeys(name.lower() for name in names if name))


def host_name(host_header: str) -> str | None:
    """The host of a ``Host`` header, lower-case, without its port and an IPv6 literal's brackets
    (``[::1]:8000`` → ``::1``; a bare ``::1`` too); None when malformed."""
    header = host_header.strip().lower()
    if header.startswith("["):
        literal, bracket, rest = header[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        name = literal
    elif header.count(":") > 1:  # a bare IPv6 address, no port possible
        name = header
    else:
        name, colon, port = header.partition(":")
        if colon and not port.isdigit():
            return None
    if ":" in name:
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
    return name or None


def host_allowed(host_header: str, allowed_hosts: Iterable[str]) -> bool:
    """Whether ``host_header`` names one of ``allowed_hosts`` (``TrustedHostMiddleware``'s patterns:
    exact names, ``*.example.com``, ``*`` for any; IPv6 literals with or without brackets)."""
    patterns = [pattern.strip().lower().strip("[]") for pattern in allowed_hosts]
    if "*" in patterns:
        return True
    name = host_name(host_header)
    if name is None:
        return False
    return any(name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])) for pattern in patterns)


@dataclass(frozen=True)
class SecurityConfig:
    """The request limits and checks of one server (defaults: the settings', ``synthd.config``;
    a server builds it with ``from_settings``).

    Args:
        allowed_hosts: ``Host`` names accepted (``*.example.com`` patterns; ``["*"]``: any).
        max_body_bytes: largest request body (413 beyond), any route but the upload.
        max_file_bytes: largest uploaded file; ``POST /v1/files`` bodies may be
            ``MULTIPART_ENVELOPE_BYTES`` larger.
        public_metrics: serve ``/metrics`` without a key.

    Raises:
        InvalidRequest: a malformed host pattern, or no host at all.
    """

    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    max_body_bytes: int = setting_default("max_body_bytes")
    max_file_bytes: int = setting_default("max_file_bytes")
    public_metrics: bool = setting_default("public_metrics")

    @classmethod
    def from_settings(cls, settings: Settings, bind_host: str) -> "SecurityConfig":
        """The limits of ``settings`` for a server bound to ``bind_host``: its ``allowed_hosts``
        (comma-separated), else ``default_allowed_hosts(bind_host)``.

        Raises:
            InvalidRequest: ``allowed_hosts`` names no host, or a malformed pattern.
        """
        if settings.allowed_hosts is None:
            hosts = default_allowed_hosts(bind_host)
        else:
            hosts = [h.strip() for h in settings.allowed_hosts.split(",") if h.strip()]
            if not hosts:
                raise InvalidRequest("--allowed-hosts is empty: give host names, or '*' for any", param="allowed_hosts")
        return cls(
            allowed_hosts=tuple(hosts),
            max_body_bytes=settings.max_body_bytes,
            max_file_bytes=settings.max_file_bytes,
            public_metrics=settings.public_metrics,
        )

    def __post_init__(self) -> None:
        for pattern in self.allowed_hosts:  # TrustedHostMiddleware's own rule, checked before the first request
            if "*" in pattern[1:] or (pattern.startswith("*") and pattern != "*" and not pattern.startswith("*.")):
                raise InvalidRequest(
                    f"Invalid allowed host '{pattern}': a wildcard must be '*' or lead '*.example.com'.",
                    param="allowed_hosts",
                )

    @property
    def max_upload_bytes(self) -> int:
        """Cap of a ``POST /v1/files`` body: the file limit plus the multipart envelope."""
        return self.max_file_bytes + MULTIPART_ENVELOPE_BYTES

    @property
    def public_paths(self) -> frozenset[str]:
        """Paths answered without a key."""
        return frozenset({"/health", *(["/metrics"] if self.public_metrics else [])})


def may_have_body(scope: Scope) -> bool:
    """Whether the request declares a body (a non-zero length, or chunked)."""
    headers = Headers(scope=scope)
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


async def answer_early(
    scope: Scope, receive: Receive, send: Send, exc: SynthdError, headers: dict[str, str] | None = None
) -> None:
    """Answer ``exc`` in the envelope before (or instead of) the route, closing the connection
    when a request body may still be coming."""
    extra = {**(headers or {}), **({"Connection": "close"} if may_have_body(scope) else {})}
    await error_response(exc, extra)(scope, receive, send)


class HostCheckMiddleware:
    """Refuses a request whose ``Host`` header is not allowed (``host_allowed``), in OpenAI's
    envelope (400 ``invalid_host``)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.allowed_hosts = tuple(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = Headers(scope=scope).getlist("host")
        host = hosts[0] if hosts else ""
        if len(hosts) == 1 and host_allowed(host, self.allowed_hosts):
            await self.app(scope, receive, send)
            return
        message = (
            f"Invalid Host header '{host[:100]}': this server answers to its own names only "
            "(synthd serve --allowed-hosts)."
            if len(hosts) <= 1
            else f"A request carries one Host header (RFC 9112 section 3.2), not {len(hosts)}."
        )
        await answer_early(scope, receive, send, InvalidRequest(message, code="invalid_host"))


class BodyLimitMiddleware:
    """Caps request bodies while they are read.

    Over the cap, the middleware answers 413 itself and tells the route the client went away (an
    ``http.disconnect``), dropping whatever the route answers after that.

    Args:
        max_body_bytes: cap of every route but the upload. max_upload_bytes: cap of ``POST /v1/files``.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def limit(self, scope: Scope) -> int:
        """The cap for this request."""
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files"
        return self.max_upload_bytes if upload else self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        too_large = PayloadTooLarge(
            f"The request body is larger than the limit of {limit} bytes.", code="request_too_large"
        )
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await answer_early(scope, receive, send, too_large)
            return
        received = 0
        refused = started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await answer_early(scope, receive, send, too_large)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)
