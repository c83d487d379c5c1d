"""``synthd warmup``: ask a server to load a model and follow its warmup status."""

from rich.console import Console

from synthd.client.errors import APIConnectionError, LMError
from synthd.client.providers import SynthdProvider


class WarmupError(RuntimeError):
    """The server refused the warmup, was unreachable, or the load failed."""


def follow_warmup(console: Console, base_url: str, model: str, gpu: str | None, api_key: str | None,
                  *, wait: bool, timeout_s: float = 1800.0) -> dict:
    """POST the warmup; with ``wait``, poll its status under a spinner until done (the LM client's
    synthd provider does both). Returns the last status object. Raises WarmupError with the
    server's message."""
    server = SynthdProvider(api_key=api_key, base_url=base_url, timeout=30)
    try:
        started = server.warmup(model, gpu)
        console.print(f"{started['model']}: {started['status']} on {started['gpu']}")
        if not wait:
            return started
        with console.status(f"warming {model}…"):
            status = server.wait_until_warm(model, timeout_s)
    except APIConnectionError:
        raise WarmupError(f"cannot reach {base_url}: is 'synthd serve' running?") from None
    except LMError as exc:
        raise WarmupError(f"{exc.status_code}: {exc.message}" if exc.status_code else exc.message) from None
    console.print(f"{status['model']}: warmed on {status['gpu']} in {status.get('load_seconds') or 0:.1f}s")
    return status
