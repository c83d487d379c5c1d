"""Run model-written Python in a separate, limited, audited child process, under bubblewrap.

Two layers. The outer one is bubblewrap (:mod:`synthd.evals.bubblewrap`): the child runs in new
namespaces with no network (only its own loopback), its own PID namespace and ``/proc`` (no other
process, the parent's ``/proc/<pid>/environ`` included, can be seen or signalled), an empty tmpfs
home and ``/tmp``, a read-only system and Python, its run folder as the only writable place,
no capabilities, a cleared environment, and no process that outlives the run: when the program
ends (or times out) the sandbox's PID 1 is killed, which kills everything left in its namespace,
and the parent waits for that before returning. When bubblewrap cannot run here
(:func:`synthd.evals.bubblewrap.bubblewrap_support` says why), :func:`run_sandboxed` refuses
(status ``error``) unless ``unsafe_sandbox=True``, which runs the child with the inner layer alone.

The inner layer runs in either case. The child gets a fresh temporary working directory, a
scrubbed environment (``PATH``, ``LANG``, and ``HOME`` and ``TMPDIR``; without bubblewrap these
point at that directory), no stdin, its own session (the whole process group is killed on
timeout), ``resource`` limits (address space, CPU seconds, file size, open files, no core dumps)
and a ``sys.addaudithook`` guard installed before the program runs. The guard ends the child with
:data:`BLOCKED_EXIT_CODE` through ``os._exit``, so no ``except`` in the program can swallow it, on:
opening for writing, creating, truncating, deleting, renaming or making directories outside the
working directory (inside it they are allowed, so ``tempfile`` works); creating more than
:data:`CREATED_FILES_LIMIT` files and directories, or creating one while the working directory
already holds more than :data:`DISK_LIMIT_BYTES`; opening the report file or any
``/proc/<pid>/mem``; chmod, chown, hard and symbolic links anywhere; process creation
(``subprocess``, ``os.system``, ``os.exec*``, ``os.spawn*``, ``os.posix_spawn``, ``os.fork``,
``os.forkpty``); ``os.kill``, ``os.killpg`` and ``signal.pthread_kill``; socket connect, bind,
send-to and name lookups; any ``ctypes`` use beyond the ``dlopen(None)`` that ``import ctypes``
itself does; changing resource limits; and subinterpreters. Audit hooks added with
``sys.addaudithook`` belong to one interpreter, so code run in a subinterpreter would escape the
guard: creating an interpreter (the ``cpython.PyInterpreterState_New`` event) and importing any
of :data:`SUBINTERPRETER_MODULES` (by the last part of the name, so a renamed copy of the
extension is caught too; ``_testcapi.run_in_subinterp`` creates one without raising that event)
are blocked.

How success is told apart from a program that merely claims it: the parent makes a random nonce
per run (``secrets.token_hex``) and sends it through a pipe that the child's prelude reads and
closes before the program runs (it is in neither the command line nor the environment). While
the program runs the child holds no descriptor for reporting: stdout and stderr are pipes read by
the parent (which keeps only their tails, so a flood neither fills the disk nor fails the
program), stdin is ``/dev/null``. Only after the program and the tests appended to it have run to
the end does the prelude open the report file by name (outside the working directory; the guard
blocks the program from opening it) and append ``<nonce> done``. A run is ``ok`` only with exit
status 0 and that exact last line; writing to inherited descriptors, ``os._exit(0)`` or
``sys.exit(0)`` before the end are failures. Disk use: each file is capped at
:data:`FILE_SIZE_LIMIT_BYTES` by ``RLIMIT_FSIZE`` and at most :data:`CREATED_FILES_LIMIT` files
can be created, so a run can never write more than their product; in addition, a run whose
working directory holds more than :data:`DISK_LIMIT_BYTES` when it ends is ``failed``.

Known limits of the guard, which is why bubblewrap is the boundary: PEP 578 itself warns that
audit hooks are not a sandbox. Calls that raise no audit event pass it: ``_posixsubprocess.fork_exec``
(which ``subprocess`` and ``asyncio`` need, so it cannot be blocked) starts an unguarded child,
contained by bubblewrap alone; ``os.open(name, ..., dir_fd=...)`` relative to a directory opened
elsewhere. The nonce can be found by frame inspection (``sys._getframe(1).f_locals`` reaches the
prelude), through ``gc`` or by monkeypatching what ``os.path.realpath`` calls, so a deliberate
attacker can forge a pass (a wrong verdict, not an escape). Writing many files first and filling
them afterwards is bounded only by the product above until the check at the end; directories made
unreadable with ``os.mkdir(name, 0)`` hide their contents from the size check. Reading files is
allowed everywhere the sandbox can see; ``os.putenv`` is allowed because ``import numpy`` calls it.
Under bubblewrap a program that exits with status 128+N reads as killed by signal N (bwrap reports
signals that way). Without bubblewrap the child can read whatever the parent's user can (other
processes' environments, home directories), reach the network through an unguarded child, and a
synthd running as root lends it root's privileges: run ``--unsafe-sandbox`` evals on a machine or
container you are willing to lose.
Sources: PEP 578 (https://peps.python.org/pep-0578/), the audit events table
(https://docs.python.org/3/library/audit_events.html), OpenAI human-eval's ``execution.py``
(``reliability_guard``, which disables the same calls by monkeypatching), bwrap(1).
"""

import contextlib
import inspect
import json
import math
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Literal

from synthd.evals.bubblewrap import LAUNCH_ENV, SANDBOX_DIR, Bubblewrap, bubblewrap_support

BLOCKED_EXIT_CODE = 121
"""Exit status of a child stopped by the audit guard."""

SETUP_EXIT_CODE = 122
"""Exit status of a child whose sandbox setup failed before the program ran."""

OUTPUT_TAIL_CHARS = 2000
"""Most characters of stdout and stderr kept (the end of each)."""

REASON_MAX_CHARS = 300
"""Most characters of :attr:`SandboxResult.reason`."""

FILE_SIZE_LIMIT_BYTES = 10 * 2**20
"""Largest file the program can write (``RLIMIT_FSIZE``)."""

DISK_LIMIT_BYTES = 64 * 2**20
"""Most bytes the working directory may hold: checked when a file is created, and at the end."""

CREATED_FILES_LIMIT = 64
"""Most files and directories the program may create (deleted ones still count)."""

OPEN_FILES_LIMIT = 64

SUBINTERPRETER_MODULES = frozenset(
    {
        "_xxsubinterpreters",
        "_xxinterpchannels",
        "_interpreters",
        "_interpchannels",
        "_interpqueues",
        "interpreters",
        "_testcapi",
        "_testinternalcapi",
    }
)
"""Modules whose import the guard blocks: they create subinterpreters, which the guard cannot see
into (CPython 3.11 has ``_xxsubinterpreters`` and ``_testcapi.run_in_subinterp``; later versions
rename them ``_interpreters`` and ``concurrent.interpreters``)."""

SandboxStatus = Literal["ok", "failed", "timeout", "blocked", "error"]
Isolation = Literal["bubblewrap", "guard only", "none"]

_TAIL_BYTES = 4 * OUTPUT_TAIL_CHARS  # 4 bytes per character at most in UTF-8
_READER_JOIN_S = 5.0
_TEARDOWN_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """How a sandboxed program ended.

    ``status``: ``ok`` (ran to its end, exit status 0), ``failed`` (an exception, a non-zero
    exit, an exit before the end, a fatal signal, or more than :data:`DISK_LIMIT_BYTES` left in
    its directory), ``timeout`` (wall-clock or CPU limit), ``blocked`` (the audit guard stopped
    it), ``error`` (the sandbox itself could not run it). ``returncode`` is ``None`` when the
    child was killed for the timeout or never started; negative values are signal numbers.
    ``stdout``/``stderr`` keep their last :data:`OUTPUT_TAIL_CHARS` characters.
    ``blocked_event`` is the guard's description of the stopped call, e.g. ``os.remove('/tmp/x')``.
    ``disk_bytes`` is what the working directory held when the program ended. ``isolation`` is
    how it ran: under ``bubblewrap``, under the audit-hook ``guard only`` (``unsafe_sandbox``), or
    ``none`` (refused: bubblewrap cannot run and unsafe runs were not allowed).
    """

    status: SandboxStatus
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    timeout_s: float
    memory_mb: int
    blocked_event: str | None = None
    disk_bytes: int = 0
    isolation: Isolation = "bubblewrap"

    @property
    def reason(self) -> str:
        """One line (at most :data:`REASON_MAX_CHARS` characters) saying why the program ended as
        it did, e.g. ``timed out after 2.0 s``."""
        reason = self._reason()
        return reason if len(reason) <= REASON_MAX_CHARS else reason[: REASON_MAX_CHARS - 1] + "…"

    def _reason(self) -> str:
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
        if self.disk_bytes > DISK_LIMIT_BYTES:
            return f"wrote {self.disk_bytes / 2**20:.1f} MB to its directory (limit {DISK_LIMIT_BYTES // 2**20} MB)"
        if self.returncode is not None and self.returncode < 0:
            return f"killed by {signal.Signals(-self.returncode).name}"
        if self.returncode == 0:
            return "exited before the end of the program (exit status 0)"
        last = _exception_line(self.stderr)
        if last.startswith("MemoryError"):
            return f"MemoryError (limit {self.memory_mb} MB)"
        return last or f"exit status {self.returncode}"


def run_sandboxed(source: str, *, timeout_s: float, memory_mb: int, unsafe_sandbox: bool = False) -> SandboxResult:
    """Run the Python program ``source`` in a sandboxed child interpreter and wait for it.

    ``timeout_s`` is wall-clock seconds (CPU seconds are limited to ``ceil(timeout_s) + 1``);
    ``memory_mb`` caps the child's address space in MiB. The program runs as ``__main__`` from
    ``program.py`` in a fresh temporary directory that is its working directory and is deleted
    afterwards. It runs under bubblewrap when bubblewrap can run here; otherwise it is not run
    (status ``error``, isolation ``none``) unless ``unsafe_sandbox``, which runs it under the
    audit-hook guard alone. Never raises for anything the program does; a failure to start the
    child is status ``error``. Thread-safe: no ``preexec_fn`` (unsafe with threads); the child sets
    its own limits before running the program. Returns after every process the program started
    has ended (under bubblewrap; without it, only the program's process group is killed).
    """
    support = bubblewrap_support()
    if support.bubblewrap is None and not unsafe_sandbox:
        return SandboxResult(
            status="error",
            returncode=None,
            stdout="",
            duration_s=0.0,
            timeout_s=float(timeout_s),
            stderr=f"not run: {support.reason}; unsafe_sandbox (--unsafe-sandbox) runs code "
            "under the audit-hook guard alone",
            memory_mb=memory_mb,
            isolation="none",
        )
    with tempfile.TemporaryDirectory(prefix="synthd-sandbox-", ignore_cleanup_errors=True) as root:
        root_dir = Path(root)
        work_dir = root_dir / "work"
        work_dir.mkdir()
        (work_dir / "program.py").write_text(source, encoding="utf-8")
        report = root_dir / "report"
        nonce = secrets.token_hex(16)
        nonce_read, nonce_write = os.pipe()  # not inheritable; pass_fds hands the read end over
        try:
            os.write(nonce_write, nonce.encode("ascii"))
        finally:
            os.close(nonce_write)
        try:
            if support.bubblewrap is not None:
                process, sandbox_pid1 = _start_in_bubblewrap(support.bubblewrap, root, nonce_read, memory_mb, timeout_s)
            else:
                child_source = _child_source(
                    str(work_dir / "program.py"), str(report), nonce_read, memory_mb, timeout_s
                )
                process = subprocess.Popen(
                    [sys.executable, "-I", "-c", child_source],
                    cwd=work_dir,
                    env=_child_env(work_dir),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    pass_fds=(nonce_read,),
                    start_new_session=True,
                )
                sandbox_pid1 = None
        except OSError as exc:
            return SandboxResult(
                status="error",
                returncode=None,
                stdout="",
                stderr=f"could not start the sandbox: {exc}",
                duration_s=0.0,
                timeout_s=float(timeout_s),
                memory_mb=memory_mb,
                isolation="bubblewrap" if support.bubblewrap is not None else "guard only",
            )
        finally:
            os.close(nonce_read)
        isolation: Isolation = "bubblewrap" if support.bubblewrap is not None else "guard only"
        return _wait(process, isolation, sandbox_pid1, report, nonce, work_dir, timeout_s, memory_mb)


def _start_in_bubblewrap(
    bubblewrap: Bubblewrap, root: str, nonce_read: int, memory_mb: int, timeout_s: float
) -> tuple[subprocess.Popen, int | None]:
    """Start the child under ``bubblewrap``; returns it and a pidfd of the sandbox's PID 1 (``None``
    if bwrap failed before reporting it). Raises ``OSError`` if bwrap cannot be started."""
    inside = f"{SANDBOX_DIR}/work/program.py", f"{SANDBOX_DIR}/report"
    child_source = _child_source(*inside, nonce_read, memory_mb, timeout_s)
    info_read, info_write = os.pipe()
    try:
        process = subprocess.Popen(
            bubblewrap.command(root, [sys.executable, "-I", "-c", child_source], info_fd=info_write),
            cwd=root,
            env=LAUNCH_ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(nonce_read, info_write),
            start_new_session=True,
        )
    except OSError:
        os.close(info_read)
        raise
    finally:
        os.close(info_write)
    with open(info_read, "rb") as info:  # bwrap writes it and closes its end once the sandbox exists
        text = info.read()
    try:
        pid1 = int(json.loads(text)["child-pid"])
        return process, os.pidfd_open(pid1)
    except (ValueError, KeyError, TypeError, OSError):
        return process, None


def _wait(
    process: subprocess.Popen,
    isolation: Isolation,
    sandbox_pid1: int | None,
    report: Path,
    nonce: str,
    work_dir: Path,
    timeout_s: float,
    memory_mb: int,
) -> SandboxResult:
    """Drain the child's output, wait for it (killing it at ``timeout_s``), end the sandbox, judge."""
    assert process.stdout is not None and process.stderr is not None
    start = time.monotonic()
    stdout, stderr = bytearray(), bytearray()
    readers = [
        threading.Thread(target=_drain, args=(stream, tail), daemon=True)
        for stream, tail in ((process.stdout, stdout), (process.stderr, stderr))
    ]
    for reader in readers:
        reader.start()
    timed_out = False
    try:
        returncode: int | None = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        returncode = None
    finally:
        _end(process, sandbox_pid1)
    duration_s = time.monotonic() - start
    for reader in readers:
        reader.join(_READER_JOIN_S)
    if isolation == "bubblewrap" and returncode is not None and 128 < returncode < 128 + signal.NSIG:
        returncode = 128 - returncode  # bwrap exits 128+N for a child killed by signal N
    outcome = report.read_text(encoding="utf-8", errors="replace") if report.exists() else ""
    result = _result(
        outcome,
        nonce,
        returncode,
        timed_out,
        _decode_tail(stdout),
        _decode_tail(stderr),
        duration_s,
        timeout_s,
        memory_mb,
        _folder_bytes(work_dir),
    )
    last = _last_line(result.stderr)
    if isolation == "bubblewrap" and result.status == "failed" and returncode == 1 and last.startswith("bwrap: "):
        return replace(result, status="error", stderr=f"sandbox setup failed: {last}", isolation=isolation)
    return replace(result, isolation=isolation)


def _end(process: subprocess.Popen, sandbox_pid1: int | None) -> None:
    """Kill whatever is left of the run and wait until it is gone. Under bubblewrap: the sandbox's
    PID 1, whose death kills every process in its PID namespace (the kernel finishes that before
    PID 1 itself is reported dead, which the pidfd tells). Then the child's process group, while
    the child is not yet reaped (its pid is still that group's id, so no other group is hit)."""
    if sandbox_pid1 is not None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(sandbox_pid1, signal.SIGKILL)
        select.select([sandbox_pid1], [], [], _TEARDOWN_WAIT_S)
        os.close(sandbox_pid1)
    if process.returncode is None:
        _kill_group(process.pid)
    process.wait()


def _result(
    outcome: str,
    nonce: str,
    returncode: int | None,
    timed_out: bool,
    stdout: str,
    stderr: str,
    duration_s: float,
    timeout_s: float,
    memory_mb: int,
    disk_bytes: int,
) -> SandboxResult:
    lines = outcome.split("\n")
    last = lines[-2] if len(lines) >= 2 and lines[-1] == "" else ""  # the last complete line
    token, _, rest = last.partition(" ")
    kind, detail = ("", "")
    if secrets.compare_digest(token.encode(), nonce.encode()):
        kind, _, detail = rest.partition(" ")
    blocked_event = None
    status: SandboxStatus
    if timed_out or returncode == -signal.SIGXCPU:
        status = "timeout"
    elif kind == "blocked" and returncode == BLOCKED_EXIT_CODE:
        status, blocked_event = "blocked", detail
    elif kind == "setup" and returncode == SETUP_EXIT_CODE:
        status, stderr = "error", f"sandbox setup failed: {detail}"
    elif returncode == 0 and kind == "done" and not detail and disk_bytes <= DISK_LIMIT_BYTES:
        status = "ok"
    else:
        status = "failed"
    return SandboxResult(
        status=status,
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        duration_s=duration_s,
        timeout_s=float(timeout_s),
        memory_mb=memory_mb,
        blocked_event=blocked_event,
        disk_bytes=disk_bytes,
    )


def _cpu_limit_s(timeout_s: float) -> int:
    return math.ceil(timeout_s) + 1


def _child_env(work_dir: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(work_dir),
        "TMPDIR": str(work_dir),
        "LANG": "C.UTF-8",
    }


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _drain(stream: IO[bytes], tail: bytearray) -> None:
    """Read ``stream`` to its end, keeping (at least) its last ``_TAIL_BYTES`` bytes in ``tail``."""
    with stream:
        while chunk := os.read(stream.fileno(), 1 << 16):
            tail += chunk
            if len(tail) > 2 * _TAIL_BYTES:
                del tail[:-_TAIL_BYTES]


def _decode_tail(tail: bytearray) -> str:
    return bytes(tail[-_TAIL_BYTES:]).decode("utf-8", errors="replace")[-OUTPUT_TAIL_CHARS:]


def _folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder``, links not followed, unreadable parts skipped."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total


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


def _child_source(program: str, report: str, nonce_fd: int, memory_mb: int, timeout_s: float) -> str:
    limits = [
        ("RLIMIT_AS", memory_mb * 2**20),
        ("RLIMIT_CPU", _cpu_limit_s(timeout_s)),
        ("RLIMIT_FSIZE", FILE_SIZE_LIMIT_BYTES),
        ("RLIMIT_NOFILE", OPEN_FILES_LIMIT),
        ("RLIMIT_CORE", 0),
    ]
    arguments = (
        program,
        report,
        nonce_fd,
        limits,
        BLOCKED_EXIT_CODE,
        SETUP_EXIT_CODE,
        CREATED_FILES_LIMIT,
        DISK_LIMIT_BYTES,
        sorted(SUBINTERPRETER_MODULES),
    )
    return f"{textwrap.dedent(inspect.getsource(_child_main))}\n_child_main(*{arguments!r})\n"


def _child_main(
    program: str,
    report: str,
    nonce_fd: int,
    limits: list[tuple[str, int]],
    blocked_exit: int,
    setup_exit: int,
    max_created: int,
    disk_limit: int,
    subinterpreter_modules: list[str],
) -> None:
    """Runs only inside the child, sent as source by ``run_sandboxed``: limit, guard, run.

    Reads the run's nonce from ``nonce_fd`` and closes it. ``limits`` pairs ``resource.RLIMIT_*``
    names with values, set as both soft and hard limits. Appends one outcome line to ``report``
    (outside the program's directory), opening it by name only once the outcome is known:
    ``<nonce> done``, ``<nonce> blocked <call>`` or ``<nonce> setup <error>``. The guard binds
    what it calls locally, so rebinding ``os._exit`` or ``os.path.realpath`` in the program does
    not weaken it.
    """
    import os
    import resource
    import sys

    exit_now, write, realpath, fsdecode = os._exit, os.write, os.path.realpath, os.fsdecode
    os_open, close, exists, scandir = os.open, os.close, os.path.exists, os.scandir
    report_flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND

    chunks = []
    while chunk := os.read(nonce_fd, 64):
        chunks.append(chunk)
    close(nonce_fd)
    nonce = b"".join(chunks).decode("ascii")
    del chunks, chunk
    report_real = realpath(report)
    report_allowed = [False]  # set only by this prelude, once the outcome is known

    def report_outcome(outcome: str) -> None:
        report_allowed[0] = True
        fd = os_open(report, report_flags, 0o600)
        write(fd, f"{nonce} {outcome}\n".encode("utf-8", errors="replace"))
        close(fd)
        report_allowed[0] = False

    def finish(outcome: str, status: int) -> None:
        report_outcome(outcome)
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
    create_flag = os.O_CREAT
    created = [0]
    no_import = frozenset(subinterpreter_modules)
    always_blocked = frozenset(
        {
            "os.chmod",
            "os.chown",
            "os.chflags",
            "os.link",
            "os.symlink",
            "subprocess.Popen",
            "os.system",
            "os.exec",
            "os.posix_spawn",
            "os.spawn",
            "os.fork",
            "os.forkpty",
            "os.kill",
            "os.killpg",
            "signal.pthread_kill",
            "socket.connect",
            "socket.bind",
            "socket.sendto",
            "socket.sendmsg",
            "socket.getaddrinfo",
            "socket.gethostbyname",
            "socket.gethostbyaddr",
            "socket.getnameinfo",
            "resource.setrlimit",
            "resource.prlimit",
        }
    )
    # How many leading audit arguments make a readable description; the rest are fds and flags.
    shown_args = {
        "import": 1,
        "open": 2,
        "os.remove": 1,
        "os.rmdir": 1,
        "os.rename": 2,
        "shutil.rmtree": 1,
        "os.chmod": 2,
        "os.link": 2,
        "os.symlink": 2,
        "os.mkdir": 1,
        "os.truncate": 1,
        "subprocess.Popen": 2,
        "os.exec": 2,
        "os.posix_spawn": 2,
        "os.spawn": 3,
        "os.kill": 2,
        "os.killpg": 2,
        "socket.connect": 2,
        "socket.bind": 2,
        "socket.sendto": 2,
        "socket.getaddrinfo": 2,
    }

    def real_path(path: object, dir_fd: object = -1, follow: bool = True) -> str:
        """The real path of ``path`` (relative to ``dir_fd`` when given); ``follow=False`` judges a
        link itself (unlinking or renaming it), not its target."""
        name = fsdecode(path)
        if isinstance(dir_fd, int) and dir_fd >= 0 and not name.startswith("/"):
            name = f"/proc/self/fd/{dir_fd}/{name}"
        if follow:
            return realpath(name)
        head, _, tail = name.rstrip("/").rpartition("/")
        return realpath(head or ".") + "/" + tail if tail not in ("", ".", "..") else realpath(name)

    def inside(path: object, dir_fd: object = -1, follow: bool = True) -> bool:
        """Whether ``path`` lies in the sandbox directory (see ``real_path``)."""
        if isinstance(path, int):
            return True  # an open descriptor: judged when it was opened
        real = real_path(path, dir_fd, follow)
        return real == sandbox or real.startswith(sandbox + "/")

    def used_bytes(folder: str) -> int:
        total = 0
        try:
            with scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        total += used_bytes(entry.path)
                    else:
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
        return total

    def over_creation_limits() -> str | None:
        """Counts one more created file or directory; says why it is one too many, if it is."""
        created[0] += 1
        if created[0] > max_created:
            return f"more than {max_created} files created"
        if used_bytes(sandbox) > disk_limit:
            return f"its directory holds more than {disk_limit // 2**20} MB"
        return None

    def describe(event: str, args: tuple) -> str:
        shown = args[: shown_args.get(event, len(args))]
        if event.startswith("socket.") and shown and type(shown[0]).__name__ == "socket":
            shown = shown[1:]
        text = ", ".join(repr(arg)[:100] for arg in shown if arg is not None)
        return f"{event}({text})"[:240]

    def guard(event: str, args: tuple) -> None:
        why = None
        if event == "open":
            path, mode, flags = (args + (None, None, None))[:3]
            if isinstance(path, int):
                return  # an open descriptor: judged when it was opened
            writes = (isinstance(flags, int) and flags & write_flags) or (
                isinstance(mode, str) and any(c in mode for c in "wax+")
            )
            # Links cannot be made, so the report and /proc/<pid>/mem are reached only by their names.
            special = fsdecode(path).rstrip("/").rpartition("/")[2] in ("report", "mem")
            if not (writes or special):
                return  # reading is allowed; skips realpath on every import
            real = real_path(path)
            if real == report_real:
                blocked = not report_allowed[0]
            elif real.startswith("/proc/") and real.endswith("/mem"):
                blocked = True
            else:
                blocked = bool(writes) and not (real == sandbox or real.startswith(sandbox + "/"))
                if not blocked and isinstance(flags, int) and flags & create_flag and not exists(real):
                    why = over_creation_limits()
                    blocked = why is not None
        elif event in ("os.remove", "os.rmdir", "shutil.rmtree"):
            blocked = not inside(args[0], args[1] if len(args) > 1 else -1, follow=False)
        elif event == "os.rename":
            blocked = not (inside(args[0], args[2], follow=False) and inside(args[1], args[3], follow=False))
        elif event == "os.mkdir":
            blocked = not inside(args[0], args[2], follow=False)
            if not blocked:
                why = over_creation_limits()
                blocked = why is not None
        elif event == "os.truncate":
            blocked = not inside(args[0])
        elif event == "import":
            blocked = str(args[0]).rpartition(".")[2] in no_import
            why = "subinterpreters are not allowed" if blocked else None
        elif event == "cpython.PyInterpreterState_New":
            blocked, why = True, "subinterpreters are not allowed"
        elif event.startswith("ctypes."):
            blocked = not (event == "ctypes.dlopen" and args == (None,))
        else:
            blocked = event in always_blocked
        if blocked:
            description = describe(event, args) + (f": {why}" if why else "")
            write(2, f"SANDBOX-BLOCKED: {description}\n".encode("utf-8", errors="replace"))
            finish(f"blocked {description}", blocked_exit)

    sys.dont_write_bytecode = True
    sys.addaudithook(guard)
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102 -- running it is the sandbox's job
    report_outcome("done")
