"""The ``synthd`` command line, run as a user would: a subprocess of this interpreter."""

import os
import subprocess
import sys
from pathlib import Path

from tests.support.server import server_env


def synthd(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout_s: float = 600
) -> subprocess.CompletedProcess:
    """``synthd ARGS...`` with this environment plus ``env``; its exit status, stdout and stderr as text.

    Raises:
        subprocess.TimeoutExpired: still running after ``timeout_s`` seconds.
    """
    return subprocess.run(
        [sys.executable, "-m", "synthd.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=input,
        timeout=timeout_s,
        check=False,
    )


def create_key(home: Path, models_dir: Path, *args: str) -> str:
    """A new API key made with ``synthd keys create ARGS...`` in ``home`` (the secret, printed once)."""
    result = synthd("keys", "create", *args, env=server_env(home, models_dir), timeout_s=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]
