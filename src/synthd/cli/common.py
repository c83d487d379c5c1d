"""What every ``synthd`` command shares: the consoles, the one error path and the server options.

The options of commands that talk to a server read the client's variables through Typer's
``envvar``: ``--base-url`` from ``SYNTH_API_URL``, ``--api-key`` from ``SYNTH_API_KEY`` (the client's
convention, like ``OPENAI_API_KEY``; the server's own ``SYNTHD_*`` settings are in ``synthd.config``).
"""

import sys
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from synthd.config import DEFAULT_SYNTH_API_URL, synthd_api_url

console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

BaseUrl = Annotated[
    str | None,
    typer.Option(envvar="SYNTH_API_URL", show_envvar=True, help=f"Server URL (default {DEFAULT_SYNTH_API_URL}/v1)."),
]
ApiKey = Annotated[str | None, typer.Option(envvar="SYNTH_API_KEY", show_envvar=True, help="Bearer token.")]


class CLIError(RuntimeError):
    """A user-facing failure: ``main`` prints it as one line (``error: ...``) and exits 1."""


def fail(message: str) -> NoReturn:
    """Stop the command with a one-line error.

    Raises:
        CLIError: always.
    """
    raise CLIError(message)


def server_url(base_url: str | None) -> str:
    """The OpenAI base URL (``…/v1``) of the synthd server a command talks to."""
    return synthd_api_url(base_url)
