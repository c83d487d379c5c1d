"""Failpoints: named places in the storage layer where a fault can be switched on from outside.

``SYNTHD_FAILPOINTS="checkpoint_write=enospc"`` (comma-separated ``name=action``) makes the named
write fail as the disk would. Used by the crash-safety tests on a real server and its workers (the
variable reaches workers through the environment); unset in normal operation. The pattern is
etcd's gofail / TiKV's fail-rs ``FAILPOINTS``.

Failpoints: ``checkpoint_write`` (copying a checkpoint's adapter to its kept folder) and
``upload_write`` (writing an uploaded file's bytes), action ``enospc`` (``OSError`` ENOSPC, "No
space left on device"); ``worker_start``, action ``long_stderr_line`` (the training worker writes a
100 kB line to stderr and exits with code 3 without a word, as a crashing library might).
"""

import errno
import os

from synthd.config import Settings


def active() -> dict[str, str]:
    """``{name: action}`` from the ``failpoints`` setting, read from the environment at every call
    (not the cached settings), so a test can set it per process."""
    spec = Settings().failpoints
    pairs = (item.partition("=") for item in spec.split(",") if item.strip())
    return {name.strip(): action.strip() for name, _, action in pairs}


def check(name: str, path: os.PathLike | str) -> None:
    """Raise the fault configured for ``name`` (writing ``path``), if any.

    Raises:
        OSError: ENOSPC for action ``enospc``.
    """
    if active().get(name) == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
