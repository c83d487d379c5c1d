"""The code sandbox against escapes: each test is an attack that worked before bubblewrap and the
subinterpreter block, and must now be contained.

Reading files and ``/proc`` raises no audit event, and ``_posixsubprocess.fork_exec`` (what
``subprocess`` and ``asyncio`` use underneath) starts a child Python that has no audit hook at all:
the attacks below use that child so that only bubblewrap stands in their way. Tests marked
``needs_bubblewrap`` skip where bwrap cannot run (``make setup`` installs it with apt-get)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from importlib.util import find_spec
from pathlib import Path

import pytest

from synthd.evals.battery import Case
from synthd.evals.bubblewrap import bubblewrap_support
from synthd.evals.checkers import check_answer
from synthd.evals.sandbox import BLOCKED_EXIT_CODE, run_sandboxed

SUPPORT = bubblewrap_support()
needs_bubblewrap = pytest.mark.skipif(SUPPORT.bubblewrap is None, reason=f"needs bubblewrap: {SUPPORT.reason}")

UNGUARDED = textwrap.dedent('''\
    import multiprocessing.util, os, sys

    def spawn(code):
        """Start `code` in a child Python the audit hook never sees (fork_exec raises no event)."""
        return multiprocessing.util.spawnv_passfds(os.fsencode(sys.executable), [sys.executable, "-c", code], ())

    def unguarded(code):
        """Run `code` that way and return its exit status."""
        return os.waitstatus_to_exitcode(os.waitpid(spawn(code), 0)[1])
''')
"""Prepended to an attack program: ``spawn(code)`` and ``unguarded(code)``."""

FAKE_KEY = "sk-proj-FAKEfake0123456789abcdefABCDEF"


def sandboxed(source: str, timeout_s: float = 30, **options: bool):
    return run_sandboxed(source, timeout_s=timeout_s, memory_mb=512, **options)


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


@needs_bubblewrap
def test_the_parents_environment_is_out_of_reach() -> None:
    # The key must be in a parent's real environment block (what /proc/<pid>/environ shows), so a
    # parent process is started with it rather than set in this one with os.environ.
    program = textwrap.dedent("""\
        import glob, os
        seen = ["os.environ"] if "OPENAI_API_KEY" in os.environ else []
        for path in sorted({"/proc/PARENT/environ", f"/proc/{os.getppid()}/environ", *glob.glob("/proc/*/environ")}):
            try:
                with open(path, "rb") as file:
                    if b"OPENAI_API_KEY=" in file.read():
                        seen.append(path)
            except OSError:
                pass
        print(seen)
    """)
    parent = textwrap.dedent(f"""\
        import json, os
        from synthd.evals.sandbox import run_sandboxed
        result = run_sandboxed({program!r}.replace("PARENT", str(os.getpid())), timeout_s=30, memory_mb=512)
        print(json.dumps([result.status, result.isolation, result.stdout, result.stderr]))
    """)
    done = subprocess.run(
        [sys.executable, "-c", parent],
        env={**os.environ, "OPENAI_API_KEY": FAKE_KEY},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    status, isolation, stdout, stderr = json.loads(done.stdout)
    assert (status, isolation, stdout) == ("ok", "bubblewrap", "[]\n"), stderr


@needs_bubblewrap
def test_no_network_even_for_an_unguarded_child() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        connect = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).sendall(b'leak')"
        result = sandboxed(UNGUARDED + f"print(unguarded({connect!r}))\n")
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert (result.status, result.stdout) == ("ok", "1\n")
    assert "ConnectionRefusedError" in result.stderr or "Network is unreachable" in result.stderr


@needs_bubblewrap
def test_nothing_outside_the_work_folder_can_be_written(tmp_path: Path) -> None:
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    write = f"open({str(victim)!r}, 'w').write('overwritten')\nopen({str(tmp_path / 'new.txt')!r}, 'w')"
    result = sandboxed(UNGUARDED + f"print(unguarded({write!r}))\n")
    assert (result.status, result.stdout) == ("ok", "1\n")
    assert victim.read_text() == "precious" and sorted(tmp_path.iterdir()) == [victim]


@needs_bubblewrap
def test_the_real_home_is_not_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    secret = home / ".ssh" / "id_ed25519"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY----- marker")
    monkeypatch.setenv("HOME", str(home))
    program = textwrap.dedent(f"""\
        import os
        found = []
        for path in ({str(secret)!r}, os.path.expanduser("~/.ssh/id_ed25519")):
            try:
                found.append(open(path).read())
            except OSError:
                pass
        print(found, os.listdir(os.path.expanduser("~")), os.path.expanduser("~") != {str(home)!r})
    """)
    result = sandboxed(program)
    assert (result.status, result.stdout) == ("ok", "[] [] True\n")


@needs_bubblewrap
@pytest.mark.parametrize("ending", ["normal", "timeout"])
def test_no_process_outlives_the_run(ending: str) -> None:
    marker = f"synthd-sandbox-test-{uuid.uuid4().hex}"
    daemon = f"import os, time\nos.setsid()\ntime.sleep(300)  # {marker}"
    tail = "while True:\n    pass\n" if ending == "timeout" else ""
    result = sandboxed(UNGUARDED + f"spawn({daemon!r})\nprint('spawned', flush=True)\n" + tail, timeout_s=3)
    survivors = processes_with(marker)
    for pid in survivors:
        os.kill(pid, 9)
    assert survivors == []
    assert (result.status, result.stdout) == ("ok" if ending == "normal" else "timeout", "spawned\n")


SUBINTERPRETER_ROUTES = {
    "_xxsubinterpreters": "import _xxsubinterpreters as interpreters\n"
    "interpreters.run_string(interpreters.create(), CODE)\n",
    "importlib": "import importlib.util\n"
    "interpreters = importlib.util.module_from_spec(importlib.util.find_spec('_xxsubinterpreters'))\n"
    "interpreters.run_string(interpreters.create(), CODE)\n",
    "_testcapi": "import _testcapi\n_testcapi.run_in_subinterp(CODE)\n",
}


@pytest.mark.parametrize("route", SUBINTERPRETER_ROUTES)
def test_subinterpreters_are_blocked(route: str, tmp_path: Path) -> None:
    module = "_testcapi" if route == "_testcapi" else "_xxsubinterpreters"
    if find_spec(module) is None:
        pytest.skip(f"this Python has no {module}")
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    code = f"open({str(victim)!r}, 'w').write('escaped')"
    result = sandboxed(SUBINTERPRETER_ROUTES[route].replace("CODE", repr(code)), unsafe_sandbox=True)
    assert (result.status, result.returncode) == ("blocked", BLOCKED_EXIT_CODE)
    assert result.reason == f"blocked: import({module!r}): subinterpreters are not allowed"
    assert victim.read_text() == "precious"


SQUARE = Case.model_validate(
    {
        "id": "t",
        "category": "coding",
        "prompt": "p",
        "check": {"kind": "code", "entry_point": "f", "tests": "assert f(3) == 9\nassert f(-2) == 4\n"},
    }
)


@needs_bubblewrap
def test_correct_code_passes_and_wrong_code_fails_under_bubblewrap() -> None:
    right = check_answer(SQUARE, "```python\nimport numpy\n\ndef f(x):\n    return int(numpy.square(x))\n```")
    assert (right.passed, right.reason) == (True, "all tests passed")
    wrong = check_answer(SQUARE, "```python\ndef f(x):\n    return x + x\n```")
    assert (wrong.passed, wrong.reason) == (False, "AssertionError: assert f(3) == 9")
    result = sandboxed("import os\nprint(os.getcwd(), os.environ['HOME'], sorted(os.environ))\n")
    assert (result.status, result.isolation) == ("ok", "bubblewrap")
    assert result.stdout == "/sandbox/work /home/sandbox ['HOME', 'LANG', 'PATH', 'PWD', 'TMPDIR']\n"


@pytest.mark.parametrize("bwrap", ["missing", "refused"])
def test_without_bubblewrap_code_is_refused_unless_unsafe(
    bwrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if bwrap == "refused":  # what bwrap prints where user namespaces are not allowed
        fake = tmp_path / "bwrap"
        fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    refused = sandboxed("print('ran')\n")
    assert (refused.status, refused.isolation, refused.stdout) == ("error", "none", "")
    expected = (
        "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
        if bwrap == "missing"
        else f"{tmp_path}/bwrap cannot run here (full: bwrap: No permissions to create new namespace; "
        "no user namespace: bwrap: No permissions to create new namespace)"
    )
    assert refused.stderr == (
        f"not run: {expected}; unsafe_sandbox (--unsafe-sandbox) runs code under the audit-hook guard alone"
    )
    assert refused.reason.startswith(f"not run: {expected[:200]}")
    unsafe = sandboxed("print('ran')\n", unsafe_sandbox=True)
    assert (unsafe.status, unsafe.isolation, unsafe.stdout) == ("ok", "guard only", "ran\n")
    failed = check_answer(SQUARE, "```python\ndef f(x):\n    return x * x\n```")
    assert failed.passed is False and failed.reason.startswith("not run: ")
