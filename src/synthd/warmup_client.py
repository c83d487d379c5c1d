"""``synthd warmup``: ask a server to load a model and follow its warmup status."""

import time
from urllib.parse import quote

import httpx
from rich.console import Console

POLL_S = 0.5


class WarmupError(RuntimeError):
    """The server refused the warmup, was unreachable, or the load failed."""


def follow_warmup(console: Console, base_url: str, model: str, gpu: str | None, api_key: str | None,
                  *, wait: bool, timeout_s: float = 1800.0) -> dict:
    """POST the warmup; with ``wait``, poll ``/v1/warmup/status`` under a spinner until done.

    Returns the last status object. Raises WarmupError with the server's message.
    """
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    path = quote(model, safe="/:")
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        try:
            response = client.post(f"/warmup/{path}", json={"gpu_preference": gpu} if gpu else None)
        except httpx.HTTPError:
            raise WarmupError(f"cannot reach {base_url}: is 'synthd serve' running?") from None
        if response.status_code != 200:
            raise WarmupError(f"{response.status_code}: {_message(response)}")
        started = response.json()
        console.print(f"{started['model']}: {started['status']} on {started['gpu']}")
        if not wait:
            return started
        deadline = time.monotonic() + timeout_s
        with console.status(f"warming {model}…"):
            while time.monotonic() < deadline:
                status = client.get(f"/warmup/status/{path}").json()
                if status.get("status") in ("warmed", "failed"):
                    break
                time.sleep(POLL_S)
            else:
                raise WarmupError(f"{model} still warming after {timeout_s:.0f}s")
    if status["status"] == "failed":
        raise WarmupError(f"{model} failed to warm up: {status.get('error')}")
    console.print(f"{status['model']}: warmed on {status['gpu']} in {status.get('load_seconds') or 0:.1f}s")
    return status


def _message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
