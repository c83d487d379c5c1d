"""The Host check (``synthd.api.limits``): loopback names pass with or without a port, IPv6
literals in brackets included (``synthd serve --host ::1``); other names are refused."""

import asyncio

import pytest

from synthd.api.limits import HostCheckMiddleware, default_allowed_hosts, host_allowed

LOOPBACK_ONLY = default_allowed_hosts("::1")
CASES = [
    ("[::1]:8000", True),
    ("[::1]", True),
    ("::1", True),
    ("localhost:1", True),
    ("LOCALHOST", True),
    ("127.0.0.1:2", True),
    ("evil.com", False),
    ("evil.com:8000", False),
    ("[::2]:1", False),
    ("[::1]:x", False),
    ("[::1", False),
    ("", False),
]


def status_for(*hosts: str) -> int:
    """The status ``HostCheckMiddleware`` (loopback names allowed) answers for these ``Host`` headers."""
    sent: list[dict] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [(b"host", host.encode()) for host in hosts]
    scope = {"type": "http", "method": "GET", "path": "/health", "headers": headers}
    asyncio.run(HostCheckMiddleware(app, LOOPBACK_ONLY)(scope, receive, send))
    return sent[0]["status"]


@pytest.mark.parametrize(("host", "allowed"), CASES)
def test_host_check_takes_loopback_names_with_ports_and_ipv6_brackets(host: str, allowed: bool) -> None:
    assert host_allowed(host, LOOPBACK_ONLY) is allowed
    assert status_for(host) == (200 if allowed else 400)


def test_host_patterns_match_like_trusted_host_middleware() -> None:
    assert host_allowed("api.example.com:443", ["*.example.com"])
    assert not host_allowed("example.com", ["*.example.com"])
    assert host_allowed("anything", ["*"])
    assert host_allowed("[fd00::2]:8000", ["[fd00::2]"]) and host_allowed("[fd00::2]:8000", ["fd00::2"])


def test_two_host_headers_are_refused_even_when_the_first_is_allowed() -> None:
    assert status_for("localhost", "evil.com") == 400
    assert status_for("localhost", "localhost") == 400
    assert status_for("localhost") == 200
