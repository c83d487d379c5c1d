"""Redact key-shaped strings from text that goes into eval reports (failure reasons, skip reasons).

A reason can quote a provider's error message ("Incorrect API key provided: sk-...") or the last
line of a traceback, and reports get shared. Replaced with :data:`REDACTED`, in this order:

1. the value of every environment variable of this process whose name says it holds a secret
   (``synthd.environ.is_secret_name``: ``OPENAI_API_KEY``, ``HF_TOKEN``, ``AWS_SECRET``…) and
   whose value has at least :data:`MIN_SECRET_CHARS` characters;
2. well-known key formats: OpenAI (``sk-``, ``sk-proj-``), Anthropic (``sk-ant-``), GitHub
   (``ghp_``, ``github_pat_``…), Hugging Face (``hf_``), Slack (``xox?-``), AWS access key ids
   (``AKIA``), Google API keys (``AIza``); the token after ``Bearer`` / ``Basic``;
3. long opaque strings: 32 or more hex digits, or 32 or more base64/base64url characters mixing
   upper case, lower case and digits.

Ordinary reasons ("expected 42, got 41", tracebacks, identifiers) are left alone: a
``snake_case_identifier`` lacks upper case, ``CamelCase`` lacks digits. Sources: the key formats
as the providers publish them, and GitHub's secret-scanning pattern list.
"""

import os
import re
from collections.abc import Mapping

from synthd.environ import is_secret_name

REDACTED = "[REDACTED]"

MIN_SECRET_CHARS = 8
"""Shorter variable values (``1``, ``true``) are not redacted: they would match everywhere."""

_KEY_FORMATS = re.compile(
    r"sk-ant-[A-Za-z0-9_-]{8,}"
    r"|sk-[A-Za-z0-9_-]{16,}"
    r"|(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|hf_[A-Za-z0-9]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|AKIA[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_-]{35}"
)
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic)(\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_HEX = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32,}(?![0-9A-Fa-f])")
_OPAQUE = re.compile(
    r"(?<![A-Za-z0-9+/_-])(?=[A-Za-z0-9+/_-]*[A-Z])(?=[A-Za-z0-9+/_-]*[a-z])"
    r"(?=[A-Za-z0-9+/_-]*[0-9])[A-Za-z0-9+/_-]{32,}={0,2}"
)


def redact_secrets(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every key-shaped string replaced by :data:`REDACTED` (see the module
    docstring); ``environ`` defaults to ``os.environ``."""
    environment = os.environ if environ is None else environ
    values = {value for name, value in environment.items() if is_secret_name(name) and len(value) >= MIN_SECRET_CHARS}
    for value in sorted(values, key=len, reverse=True):  # a longer value may contain a shorter one
        text = text.replace(value, REDACTED)
    text = _KEY_FORMATS.sub(REDACTED, text)
    text = _AUTH_SCHEME.sub(lambda match: f"{match[1]}{match[2]}{REDACTED}", text)
    text = _HEX.sub(REDACTED, text)
    return _OPAQUE.sub(REDACTED, text)
