"""Bearer-token check for ``/v1`` routes when the server has an API key."""

import secrets

from fastapi import Request

from synthd.api.errors import APIError


async def require_api_key(request: Request) -> None:
    """Pass when no key is configured or ``Authorization: Bearer <key>`` matches.

    Raises:
        APIError: 401 ``invalid_api_key``.
    """
    expected: str | None = request.app.state.api_key
    if not expected:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), expected.encode()):
        raise APIError(401, "Incorrect API key provided.", type="authentication_error", code="invalid_api_key")
