"""Secrets in environment variables: which names hold them, and an environment without them for the
processes synthd starts (training workers) that have no use for provider keys.

A name holds a secret when it ends in one of ``SECRET_NAME_SUFFIXES``: ``OPENAI_API_KEY``,
``ANTHROPIC_API_KEY``, ``TOGETHER_API_KEY``, ``SYNTH_API_KEY``, ``SYNTHD_API_KEY``, ``HF_TOKEN``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ACCESS_KEY_ID``, ``GITHUB_TOKEN``, ``DB_PASSWORD``, ...
"""

import os
from collections.abc import Iterable, Mapping

SECRET_NAME_SUFFIXES = ("_KEY", "_KEY_ID", "_TOKEN", "_SECRET", "_PASSWORD", "_CREDENTIALS")


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret (case-insensitive)."""
    return name.upper().endswith(SECRET_NAME_SUFFIXES)


def scrubbed_environ(environ: Mapping[str, str] | None = None, keep: Iterable[str] = ()) -> dict[str, str]:
    """``environ`` (default ``os.environ``) without its secrets, except the names in ``keep``."""
    kept = set(keep)
    source = os.environ if environ is None else environ
    return {name: value for name, value in source.items() if name in kept or not is_secret_name(name)}
