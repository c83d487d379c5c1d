"""``synthd chat``: stream answers from a running server to the terminal."""

import sys
from typing import Annotated

import typer

from synthd.cli.common import ApiKey, BaseUrl, console, fail, server_url


def chat(
    model: Annotated[str, typer.Argument(help="Model id, e.g. SmolLM2-135M-Instruct.")],
    prompt: Annotated[str | None, typer.Argument(help="One-shot prompt; omit for an interactive session.")] = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.", min=1)] = 256,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.", min=0.0, max=2.0)] = 0.7,
) -> None:
    """Chat with a model on a running server, streamed to the terminal.

    Examples: synthd chat SmolLM2-135M-Instruct "What is the capital of France?"
              synthd chat SmolLM2-135M-Instruct      (interactive; empty line or Ctrl-D quits)
    """
    from synthd.cli.chat_session import ChatError, ChatSession

    session = ChatSession(
        model, server_url(base_url), api_key, system=system, max_tokens=max_tokens, temperature=temperature
    )
    try:
        if prompt is not None:
            session.ask(prompt, sys.stdout.write)
            print()
            return
        console.print(f"chatting with {model} at {session.base_url} — empty line or Ctrl-D to quit")
        while True:
            try:
                line = console.input("[bold]you>[/bold] ")
            except EOFError:
                break
            if not line.strip():
                break
            console.print("[bold]model>[/bold] ", end="")
            session.ask(line, sys.stdout.write)
            print()
    except ChatError as exc:
        fail(str(exc))
