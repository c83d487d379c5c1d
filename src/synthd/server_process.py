"""Run ``synthd serve`` as a child process on 127.0.0.1 (used by the demo and the tests)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message holds its last log lines."""


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``with ServerProcess(args) as server:`` starts ``synthd serve`` and waits for ``/ready``.

    ``server.base_url`` is ``http://127.0.0.1:PORT/v1``. The log goes to ``log_path``. ``python`` is
    the interpreter that runs synthd (another venv's, e.g. ``.venv-vllm/bin/python``). The default
    ``ready_timeout_s`` allows for a vLLM engine, whose start spawns two processes that each import
    torch and vLLM (two minutes measured on a loaded 2-core machine). ``api_key`` is the key the
    readiness poll sends (``/ready`` needs one when the server has keys); by default the server's own
    from ``env`` (``SYNTHD_API_KEY``, ``SYNTH_API_KEY``).
    """

    def __init__(
        self,
        args: list[str] | None = None,
        *,
        port: int = 0,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 600.0,
        ready_path: str = "/ready",
        api_key: str | None = None,
        python: str | Path = sys.executable,
    ) -> None:
        self.python = str(python)
        self.port = port or free_port()
        self.args = args or []
        self.log_path = log_path or Path(os.devnull)
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout_s = ready_timeout_s
        self.ready_path = ready_path
        self.api_key = api_key or self.env.get("SYNTHD_API_KEY") or self.env.get("SYNTH_API_KEY") or None
        self.process: subprocess.Popen | None = None

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``…/v1``."""
        return f"{self.root_url}/v1"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the process and block until ``ready_path`` (``/ready``; ``/health`` not to wait for
        the models) answers 200.

        Raises:
            ServerStartError: it exited early or was not ready within ``ready_timeout_s``.
        """
        command = [
            self.python,
            "-m",
            "synthd.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *self.args,
        ]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 -- open while the server runs; closed by stop()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"synthd serve exited with {self.process.returncode}: {self._tail()}")
            try:
                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                if httpx.get(f"{self.root_url}{self.ready_path}", headers=headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerStartError(f"synthd serve not ready after {self.ready_timeout_s:.0f}s: {self._tail()}")

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 30 s: a vLLM engine stops its processes first)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def _tail(self) -> str:
        if self.log_path == Path(os.devnull):
            return "(no log)"
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-5:])
