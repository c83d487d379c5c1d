"""Bubblewrap (``bwrap``) command lines for the code sandbox, and which isolation works here.

Bubblewrap (https://github.com/containers/bubblewrap, Debian package ``bubblewrap``) starts a
program in new Linux namespaces with a mount tree built from its arguments. The sandbox's tree:
the system read-only (``/usr`` and the ``/bin``, ``/sbin``, ``/lib*`` links or folders beside it,
the few files of :data:`ETC_FILES` from ``/etc``, and the Python installation and virtual
environment that run the program), a fresh ``/proc`` of the new PID namespace and a minimal
``/dev``, small empty tmpfs folders for ``/tmp`` and the home :data:`HOME_DIR`, and the run's own
folder at :data:`SANDBOX_DIR`, the only writable place on disk. The root itself is remounted
read-only. Everything else on the machine (other homes, ``/root``, ``/work``, the real ``/tmp``,
sockets under ``/run``) is absent. Every run gets ``--cap-drop ALL``, ``--die-with-parent``,
``--new-session`` (no terminal to inject input into) and ``--clearenv`` with only ``PATH``,
``HOME``, ``LANG`` and ``TMPDIR`` set.

Namespaces come from the first of :data:`PROFILES` that runs Python on this machine (probed once
per ``bwrap`` executable): ``full`` unshares every namespace (user, mount, PID, network, IPC, UTS,
cgroup) and forbids further user namespaces inside; ``no user namespace`` is for hosts that
refuse user namespaces to root (the child is root in the parent's user namespace with every
capability dropped) and keeps the mount, PID, network, IPC and UTS namespaces. Network, PID and
mount isolation are required: where no profile gets them, :func:`bubblewrap_support` says why
and callers refuse to run code unless told to run it unisolated.

Not isolated: CPU and memory beyond the ``resource`` limits the child sets on itself (no
cgroup), the kernel's attack surface (no seccomp filter), and reading the files listed above.
"""

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SANDBOX_DIR = "/sandbox"
"""Where the run's folder (the program's working folder ``work`` and the report file) appears."""

HOME_DIR = "/home/sandbox"
"""``HOME`` inside: an empty tmpfs."""

TMPFS_BYTES = 16 * 2**20
"""Size of each tmpfs (``/tmp`` and the home)."""

CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"

ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/alternatives",
)
"""What the sandbox sees of ``/etc`` (where present): the dynamic linker's cache, the time zone,
user and group names and the alternatives links; not ``shadow``, keys, certificates or hosts."""

SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Top-level system folders: links into ``/usr`` on merged-usr systems, else bound read-only."""

LAUNCH_ENV = {"PATH": CHILD_PATH, "LANG": "C.UTF-8"}
"""The environment ``bwrap`` itself starts with. Its PID 1 stays in the sandbox and its
``/proc/1/environ`` is readable there, so it must not inherit the caller's variables."""

PROFILES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("full", ("--unshare-all", "--unshare-user", "--disable-userns")),
    ("no user namespace", ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try")),
)
"""Namespace flags, tried in order; see the module docstring."""

_PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Bubblewrap:
    """A ``bwrap`` executable and the namespace profile (one of :data:`PROFILES`) that runs here."""

    executable: str
    profile: str
    namespace_flags: tuple[str, ...]

    def command(self, run_dir: str, argv: Sequence[str], *, info_fd: int | None = None) -> list[str]:
        """The ``bwrap`` command line that runs ``argv`` with the host folder ``run_dir`` (which must
        hold a ``work`` folder) bound read-write at :data:`SANDBOX_DIR` and ``SANDBOX_DIR/work`` as
        working folder. ``info_fd``: a descriptor that bwrap writes ``{"child-pid": N, ...}`` to,
        N being the sandbox's PID 1 as the host sees it. Start it with :data:`LAUNCH_ENV`."""
        work = f"{SANDBOX_DIR}/work"
        args = [
            self.executable,
            *self.namespace_flags,
            "--cap-drop",
            "ALL",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--setenv",
            "PATH",
            CHILD_PATH,
            "--setenv",
            "HOME",
            HOME_DIR,
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--setenv",
            "TMPDIR",
            work,
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for path in SYSTEM_LINKS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for path in ETC_FILES:
            args += ["--ro-bind-try", path, path]
        args += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            str(TMPFS_BYTES),
            "--tmpfs",
            "/tmp",
            "--size",
            str(TMPFS_BYTES),
            "--tmpfs",
            HOME_DIR,
        ]
        for path in python_folders():
            args += ["--ro-bind", path, path]
        args += ["--bind", run_dir, SANDBOX_DIR, "--chdir", work, "--remount-ro", "/"]
        if info_fd is not None:
            args += ["--info-fd", str(info_fd)]
        return [*args, "--", *argv]


@dataclass(frozen=True, slots=True)
class BubblewrapSupport:
    """Whether code can run under bubblewrap here: ``bubblewrap`` is ``None`` when it cannot, and
    ``reason`` says why (else which profile runs, e.g. ``bubblewrap (full)``)."""

    bubblewrap: Bubblewrap | None
    reason: str


def bubblewrap_support() -> BubblewrapSupport:
    """Find ``bwrap`` on ``PATH`` and the first of :data:`PROFILES` under which this Python runs
    (probed by running it once; cached per executable path). Never raises."""
    executable = shutil.which("bwrap")
    if executable is None:
        return BubblewrapSupport(None, "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)")
    return _probe(executable)


def python_folders() -> list[str]:
    """The folders the running Python needs, bound read-only: its installation and virtual
    environment (``sys.prefix``, ``sys.base_prefix``, their ``exec`` twins, the real executable's
    folder); those under ``/usr`` or inside another one are left out."""
    candidates = {
        os.path.realpath(p)
        for p in (
            sys.prefix,
            sys.exec_prefix,
            sys.base_prefix,
            sys.base_exec_prefix,
            os.path.dirname(os.path.realpath(sys.executable)),
        )
    }
    candidates |= {os.path.abspath(p) for p in (sys.prefix, sys.exec_prefix)}  # a venv reached through a link
    kept: list[str] = []
    for path in sorted(candidates, key=len):
        if path == "/" or _under(path, "/usr") or any(_under(path, outer) for outer in kept):
            continue
        kept.append(path)
    return kept


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


@functools.lru_cache(maxsize=8)
def _probe(executable: str) -> BubblewrapSupport:
    failures = []
    for profile, flags in PROFILES:
        bubblewrap = Bubblewrap(executable, profile, flags)
        with tempfile.TemporaryDirectory(prefix="synthd-bwrap-probe-") as run_dir:
            (Path(run_dir) / "work").mkdir()
            try:
                done = subprocess.run(
                    bubblewrap.command(run_dir, [sys.executable, "-I", "-c", "import sys"]),
                    env=LAUNCH_ENV,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=_PROBE_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                failures.append(f"{profile}: {exc}")
                continue
        if done.returncode == 0:
            return BubblewrapSupport(bubblewrap, f"bubblewrap ({profile})")
        lines = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
        failures.append(f"{profile}: {(lines[-1] if lines else f'exit status {done.returncode}')[:160]}")
    return BubblewrapSupport(None, f"{executable} cannot run here ({'; '.join(failures)})")
