"""Authentication and rate limits before any route runs, as a pure ASGI middleware.

The API key is checked from the headers alone, before a byte of the body is read, parsed or spooled
(401), then the key's rate limits (429 with OpenAI's ``x-ratelimit-*`` headers, which every answer
to a limited key carries). The caller's ``Principal`` goes into the request state, where routes get
it through the ``CallerPrincipal`` dependency and pass it to the services.
"""

import asyncio
import math
import re
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synthd.api.limits import answer_early
from synthd.errors import Unauthenticated
from synthd.services.keys import KeyService
from synthd.services.projects import Principal
from synthd.services.rate_limits import LimitState, RateLimiter, RateLimitExceeded, RateLimits

PRINCIPAL_STATE = "principal"


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``20ms``, ``17s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def ratelimit_headers(limits: RateLimits) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` headers for the limits set."""
    headers = {}
    kinds: Iterable[tuple[str, LimitState | None]] = (("requests", limits.requests), ("tokens", limits.tokens))
    for kind, state in kinds:
        if state is not None:
            headers |= {
                f"x-ratelimit-limit-{kind}": str(state.limit),
                f"x-ratelimit-remaining-{kind}": str(state.remaining),
                f"x-ratelimit-reset-{kind}": _duration(state.reset_s),
            }
    return headers


class AuthMiddleware:
    """Identifies the caller from ``Authorization`` before the route runs (nothing of the body is
    read), applies the key's rate limits, and adds their ``x-ratelimit-*`` headers to the answer.

    Args:
        keys: the server's keys. limiter: per-key request/token windows.
        public_paths: answered without a key (``/health``).
        public_pages: a pattern of further paths answered without a key (the console's pages,
            which carry no data), matched against the whole path.
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: KeyService,
        limiter: RateLimiter,
        public_paths: frozenset[str],
        public_pages: re.Pattern[str] | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.public_paths = public_paths
        self.public_pages = public_pages

    def is_public(self, path: str) -> bool:
        """Whether ``path`` is answered without a key."""
        return path in self.public_paths or bool(self.public_pages and self.public_pages.fullmatch(path))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            caller = await asyncio.to_thread(self.keys.identify, Headers(scope=scope).get("authorization"))
            key_id = caller.principal.key_id
            limits = self.limiter.admit(key_id, caller.rpm, caller.tpm) if key_id else RateLimits()
        except Unauthenticated as exc:
            await answer_early(scope, receive, send, exc, {"WWW-Authenticate": "Bearer"})
            return
        except RateLimitExceeded as exc:
            await answer_early(scope, receive, send, exc, ratelimit_headers(exc.limits))
            return
        scope.setdefault("state", {})[PRINCIPAL_STATE] = caller.principal
        headers = [(name.encode(), value.encode()) for name, value in ratelimit_headers(limits).items()]
        if not headers:
            await self.app(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        await self.app(scope, receive, send_with_limits)


def get_principal(request: Request) -> Principal:
    """The caller ``AuthMiddleware`` identified (a FastAPI dependency).

    Raises:
        Unauthenticated: the route is public and so has no caller (a wiring error, refused safely).
    """
    principal = request.scope.get("state", {}).get(PRINCIPAL_STATE)
    if principal is None:
        raise Unauthenticated("This route needs an API key.", code="invalid_api_key")
    return principal


CallerPrincipal = Annotated[Principal, Depends(get_principal)]
