"""synthd: a self-hostable LLM backend speaking the OpenAI API.

``from synthd import LM`` imports the client lazily, so the server and CLI do not pay for the SDKs.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["LM", "LMResponse", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("LM", "LMResponse"):
        from synthd import client

        return getattr(client, name)
    raise AttributeError(f"module 'synthd' has no attribute {name!r}")
