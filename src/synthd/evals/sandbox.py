"""Run model-written Python in a separate, limited, audited child process.

What this is, honestly: a guard against careless or runaway model code, not a security boundary
against a determined attacker. The program never runs in the evaluating process; the child gets a
fresh temporary working directory, a scrubbed environment (``PATH``, ``LANG``, and ``HOME`` and
``TMPDIR`` pointing at that directory), no stdin, its own session (the whole process group is
killed on timeout), ``resource`` limits (address space, CPU seconds, file size, open files, no
core dumps) and a ``sys.addaudithook`` guard installed before the program runs. The guard ends
the child with :data:`BLOCKED_EXIT_CODE` through ``os._exit``, so no ``except`` in the program
can swallow it, on: opening for writing, creating, truncating, deleting, renaming or making
directories outside the working directory (inside it they are allowed, so ``tempfile`` works);
chmod, chown, hard and symbolic links anywhere; process creation (``subprocess``, ``os.system``,
``os.exec*``, ``os.spawn*``, ``os.posix_spawn``, ``os.fork``, ``os.forkpty``); ``os.kill``,
``os.killpg`` and ``signal.pthread_kill``; socket connect, bind, send-to and name lookups; any
``ctypes`` use beyond the ``dlopen(None)`` that ``import ctypes`` itself does; and changing
resource limits.

Known limits: PEP 578 itself warns that audit hooks are not a sandbox, since code that can run
arbitrary Python can find ways around them; calls that raise no audit event get through (for
instance ``_posixsubprocess.fork_exec``, or ``os.open(name, ..., dir_fd=...)`` relative to a
directory opened elsewhere, whose audit event omits ``dir_fd``); reading files is allowed
everywhere; ``os.putenv`` is allowed because ``import numpy`` calls it and no child process can
see it; a synthd running as root lends the child root's privileges. Run evals on a machine or
container you are willing to lose. Sources: PEP 578 (https://peps.python.org/pep-0578/), the
audit events table (https://docs.python.org/3/library/audit_events.html), OpenAI human-eval's
``execution.py`` (``reliability_guard``, which disables the same calls by monkeypatching).
"""

import contextlib
import inspect
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BLOCKED_EXIT_CODE = 121
"""Exit status of a child stopped by the audit guard."""

SETUP_EXIT_CODE = 122
"""Exit status of a child whose sandbox setup failed before the program ran."""

OUTPUT_TAIL_CHARS = 2000
"""Most characters of stdout and stderr kept (the end of each)."""

FILE_SIZE_LIMIT_BYTES = 10 * 2**20
OPEN_FILES_LIMIT = 64

SandboxStatus = Literal["ok", "failed", "timeout", "blocked", "error"]


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """How a sandboxed program ended.

    ``status``: ``ok`` (ran to its end, exit status 0), ``failed`` (an exception, a non-zero
    exit, an exit before the end, or a fatal signal), ``timeout`` (wall-clock or CPU limit),
    ``blocked`` (the audit guard stopped it), ``error`` (the sandbox itself could not run it).
    ``returncode`` is ``None`` when the child was killed for the timeout or never started;
    negative values are signal numbers. ``stdout``/``stderr`` keep their last
    :data:`OUTPUT_TAIL_CHARS` characters. ``blocked_event`` is the guard's description of the
    stopped call, e.g. ``os.remove('/tmp/x')``.
    """

    status: SandboxStatus
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    timeout_s: float
    memory_mb: int
    blocked_event: str | None = None

    @property
    def reason(self) -> str:
        """One line saying why the program ended as it did, e.g. ``timed out after 2.0 s``."""
        if self.status == "ok":
            return "ok"
        if self.status == "timeout":
            if self.returncode == -signal.SIGXCPU:
                return f"CPU time limit exceeded ({_cpu_limit_s(self.timeout_s)} s)"
            return f"timed out after {self.timeout_s} s"
        if self.status == "blocked":
            return f"blocked: {self.blocked_event}"
        if self.status == "error":
            return _last_line(self.stderr) or "the sandbox could not run the program"
        if self.returncode is not None and self.returncode < 0:
            return f"killed by {signal.Signals(-self.returncode).name}"
        if self.returncode == 0:
            return "exited before the end of the program (exit status 0)"
        last = _exception_line(self.stderr)
        if last.startswith("MemoryError"):
            return f"MemoryError (limit {self.memory_mb} MB)"
        return last or f"exit status {self.returncode}"


def run_sandboxed(source: str, *, timeout_s: float, memory_mb: int) -> SandboxResult:
    """Run the Python program ``source`` in a sandboxed child interpreter and wait for it.

    ``timeout_s`` is wall-clock seconds (CPU seconds are limited to ``ceil(timeout_s) + 1``);
    ``memory_mb`` caps the child's address space in MiB. The program runs as ``__main__`` from
    ``program.py`` in a fresh temporary directory that is its working directory and is deleted
    afterwards. Never raises for anything the program does; a failure to start the child is
    status ``error``. Thread-safe: no ``preexec_fn`` (unsafe with threads); the child sets its
    own limits before running the program.
    """
    with tempfile.TemporaryDirectory(prefix="synthd-sandbox-", ignore_cleanup_errors=True) as root:
        root_dir = Path(root)
        work_dir = root_dir / "work"
        work_dir.mkdir()
        program = work_dir / "program.py"
        program.write_text(source, encoding="utf-8")
        report = root_dir / "report"
        stdout_path, stderr_path = root_dir / "stdout", root_dir / "stderr"
        child_source = _child_source(str(program), str(report), memory_mb, timeout_s)
        timed_out = False
        start = time.monotonic()
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            try:
                process = subprocess.Popen(
                    [sys.executable, "-I", "-c", child_source], cwd=work_dir, env=_child_env(work_dir),
                    stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True,
                )
            except OSError as exc:
                return SandboxResult(status="error", returncode=None, stdout="",
                                     stderr=f"could not start the sandbox: {exc}", duration_s=0.0,
                                     timeout_s=float(timeout_s), memory_mb=memory_mb)
            try:
                returncode: int | None = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(process.pid)
                process.wait()
                returncode = None
        duration_s = time.monotonic() - start
        outcome = report.read_text(encoding="utf-8", errors="replace") if report.exists() else ""
        return _result(outcome, returncode, timed_out, _tail(stdout_path), _tail(stderr_path),
                       duration_s, timeout_s, memory_mb)


def _result(outcome: str, returncode: int | None, timed_out: bool, stdout: str, stderr: str,
            duration_s: float, timeout_s: float, memory_mb: int) -> SandboxResult:
    kind, _, detail = outcome.partition(" ")
    blocked_event = None
    status: SandboxStatus
    if timed_out or returncode == -signal.SIGXCPU:
        status = "timeout"
    elif kind == "blocked" and returncode == BLOCKED_EXIT_CODE:
        status, blocked_event = "blocked", detail
    elif kind == "setup" and returncode == SETUP_EXIT_CODE:
        status, stderr = "error", f"sandbox setup failed: {detail}"
    elif returncode == 0 and kind == "done":
        status = "ok"
    else:
        status = "failed"
    return SandboxResult(status=status, returncode=returncode, stdout=stdout, stderr=stderr,
                         duration_s=duration_s, timeout_s=float(timeout_s), memory_mb=memory_mb,
                         blocked_event=blocked_event)


def _cpu_limit_s(timeout_s: float) -> int:
    return math.ceil(timeout_s) + 1


def _child_env(work_dir: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(work_dir), "TMPDIR": str(work_dir),
            "LANG": "C.UTF-8"}


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _tail(path: Path) -> str:
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        # 4 bytes per character at most in UTF-8, so this always covers the kept characters.
        file.seek(max(0, size - 4 * OUTPUT_TAIL_CHARS))
        return file.read().decode("utf-8", errors="replace")[-OUTPUT_TAIL_CHARS:]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _exception_line(stderr: str) -> str:
    """The traceback's last line; a bare ``AssertionError`` gets the failing source line appended."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    if last == "AssertionError":
        source = [line for line in lines[:-1] if set(line) - set("^~ ")]
        if source and not source[-1].startswith(("File ", "Traceback")):
            return f"AssertionError: {source[-1]}"
    return last


def _child_source(program: str, report: str, memory_mb: int, timeout_s: float) -> str:
    limits = [("RLIMIT_AS", memory_mb * 2**20), ("RLIMIT_CPU", _cpu_limit_s(timeout_s)),
              ("RLIMIT_FSIZE", FILE_SIZE_LIMIT_BYTES), ("RLIMIT_NOFILE", OPEN_FILES_LIMIT), ("RLIMIT_CORE", 0)]
    arguments = (program, report, limits, BLOCKED_EXIT_CODE, SETUP_EXIT_CODE)
    return f"{textwrap.dedent(inspect.getsource(_child_main))}\n_child_main(*{arguments!r})\n"


def _child_main(program: str, report: str, limits: list[tuple[str, int]], blocked_exit: int,
                setup_exit: int) -> None:
    """Runs only inside the child, sent as source by ``run_sandboxed``: limit, guard, run.

    ``limits`` pairs ``resource.RLIMIT_*`` names with values, set as both soft and hard limits.
    Writes one outcome to ``report`` (outside the program's directory, opened before the guard):
    ``done``, ``blocked <call>`` or ``setup <error>``. The guard binds what it calls locally, so
    rebinding ``os._exit`` or ``os.path.realpath`` in the program does not weaken it.
    """
    import os
    import resource
    import sys

    exit_now, write, realpath, fsdecode = os._exit, os.write, os.path.realpath, os.fsdecode
    report_fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def finish(outcome: str, status: int) -> None:
        write(report_fd, outcome.encode("utf-8", errors="replace"))
        exit_now(status)

    try:
        for name, value in limits:
            limit = getattr(resource, name)
            hard = resource.getrlimit(limit)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(limit, (value, value))
    except (OSError, ValueError) as exc:
        finish(f"setup {type(exc).__name__}: {exc}", setup_exit)
    with open(program, encoding="utf-8") as file:
        code = compile(file.read(), program, "exec")

    sandbox = realpath(os.getcwd())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    always_blocked = frozenset({
        "os.chmod", "os.chown", "os.chflags", "os.link", "os.symlink", "subprocess.Popen", "os.system",
        "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg",
        "signal.pthread_kill", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
        "resource.setrlimit", "resource.prlimit",
    })
    # How many leading audit arguments make a readable description; the rest are fds and flags.
    shown_args = {"open": 2, "os.remove": 1, "os.rmdir": 1, "os.rename": 2, "shutil.rmtree": 1, "os.chmod": 2,
                  "os.link": 2, "os.symlink": 2, "os.mkdir": 1, "os.truncate": 1, "subprocess.Popen": 2,
                  "os.exec": 2, "os.posix_spawn": 2, "os.spawn": 3, "os.kill": 2, "os.killpg": 2,
                  "socket.connect": 2, "socket.bind": 2, "socket.sendto": 2, "socket.getaddrinfo": 2}

    def inside(path: object, dir_fd: object = -1, follow: bool = True) -> bool:
        """Whether ``path`` (relative to ``dir_fd`` when given) lies in the sandbox directory;
        ``follow=False`` judges a link itself (unlinking or renaming it), not its target."""
        if isinstance(path, int):
            return True  # an open descriptor: judged when it was opened
        name = fsdecode(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not name.startswith("/"):
            name = f"/proc/self/fd/{dir_fd}/{name}"
        if follow:
            real = realpath(name)
        else:
            head, _, tail = name.rstrip("/").rpartition("/")
            real = realpath(head or ".") + "/" + tail if tail not in ("", ".", "..") else realpath(name)
        return real == sandbox or real.startswith(sandbox + "/")

    def describe(event: str, args: tuple) -> str:
        shown = args[:shown_args.get(event, len(args))]
        if event.startswith("socket.") and shown and type(shown[0]).__name__ == "socket":
            shown = shown[1:]
        text = ", ".join(repr(arg)[:100] for arg in shown if arg is not None)
        return f"{event}({text})"[:300]

    def guard(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (args + (None, None, None))[:3]
            writes = (isinstance(flags, int) and flags & write_flags) or (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            blocked = bool(writes) and not inside(path)
        elif event in ("os.remove", "os.rmdir", "shutil.rmtree"):
            blocked = not inside(args[0], args[1] if len(args) > 1 else -1, follow=False)
        elif event == "os.rename":
            blocked = not (inside(args[0], args[2], follow=False) and inside(args[1], args[3], follow=False))
        elif event == "os.mkdir":
            blocked = not inside(args[0], args[2], follow=False)
        elif event == "os.truncate":
            blocked = not inside(args[0])
        elif event.startswith("ctypes."):
            blocked = not (event == "ctypes.dlopen" and args == (None,))
        else:
            blocked = event in always_blocked
        if blocked:
            description = describe(event, args)
            write(2, f"SANDBOX-BLOCKED: {description}\n".encode("utf-8", errors="replace"))
            finish(f"blocked {description}", blocked_exit)

    sys.addaudithook(guard)
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    write(report_fd, b"done")
