"""``synthd warmup``: ask a server to load a model and follow its warmup status."""

from typing import Annotated

import typer
from rich.console import Console

from synthd.cli.common import ApiKey, BaseUrl, console, fail, server_url


class WarmupError(RuntimeError):
    """The server refused the warmup, was unreachable, or the load failed."""


def follow_warmup(
    console: Console,
    base_url: str,
    model: str,
    gpu: str | None,
    api_key: str | None,
    *,
    wait: bool,
    timeout_s: float = 1800.0,
) -> dict:
    """POST the warmup; with ``wait``, poll its status under a spinner until done (the LM client's
    synthd provider does both). Returns the last status object. Raises WarmupError with the
    server's message."""
    # Imported here: the client loads both provider SDKs (over a second), which every other command
    # of the CLI would pay at start.
    from synthd.client.errors import APIConnectionError, LMError
    from synthd.client.providers import SynthdProvider

    server = SynthdProvider(api_key=api_key, base_url=base_url, timeout=30, max_retries=0)
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


def warmup(
    model: Annotated[str, typer.Argument(help="Model id to load ahead of traffic.")],
    gpu: Annotated[str | None, typer.Option("--gpu", help="GPU preference, e.g. H100 or L40S:2.")] = None,
    wait: Annotated[bool, typer.Option(help="Follow the load until it is warmed or failed.")] = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Warm a model up on a running server, optionally on a chosen GPU.

    Example: synthd warmup SmolLM2-135M-Instruct --gpu cpu --wait
    """
    try:
        follow_warmup(console, server_url(base_url), model, gpu, api_key, wait=wait)
    except WarmupError as exc:
        fail(str(exc))
