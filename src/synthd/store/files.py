"""Bytes on disk under ``$SYNTHD_HOME``: uploads streamed to a locked temporary file and renamed
into place, atomic small writes, and atomic folder copies for kept checkpoint adapters.

A reader never sees a partial file: uploads are written to ``.part-…`` files held under an
exclusive ``flock`` while they grow, then fsynced and renamed. ``sweep_partial`` removes parts whose
writer died (the lock is free), so a server killed mid-upload leaves nothing behind after a restart,
while another live server's uploads on the same home are untouched.
"""

import fcntl
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO

from synthd.errors import PayloadTooLarge
from synthd.store import failpoints

PART_PREFIX = ".part-"


def write_atomic(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` via a temporary file in the same folder and a rename, so a
    reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_tree_atomic(source: Path, target: Path, names: tuple[str, ...], failpoint: str) -> None:
    """Copy the files ``names`` of ``source`` into a fresh folder ``target`` (staged beside it, then
    renamed). ``failpoint`` names the write for fault injection.

    Raises:
        OSError: a copy failed (e.g. ENOSPC); nothing is left at ``target``.
        FileNotFoundError: a named file is missing in ``source``.
    """
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for name in names:
            failpoints.check(failpoint, staging / name)
            shutil.copyfile(source / name, staging / name)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class Upload:
    """One upload being written: ``write`` chunks (counted against ``limit_bytes``), then ``commit``
    to its final path, or ``abort``. Not thread-safe; call from one thread at a time.

    Raises (``write``):
        PayloadTooLarge: the running count passed ``limit_bytes`` (the part is removed).
    """

    def __init__(self, directory: Path, limit_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.limit_bytes = limit_bytes
        self.size = 0
        self.path = directory / f"{PART_PREFIX}{uuid.uuid4().hex}"
        self._handle: BinaryIO | None = open(self.path, "xb")  # noqa: SIM115 -- closed by commit or abort
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        assert self._handle is not None, "upload already closed"
        self.size += len(data)
        if self.size > self.limit_bytes:
            self.abort()
            raise PayloadTooLarge(
                f"File is larger than the limit of {self.limit_bytes} bytes.", param="file", code="file_too_large"
            )
        failpoints.check("upload_write", self.path)
        self._handle.write(data)

    def commit(self, target: Path) -> None:
        """fsync and rename to ``target``; the lock goes with the closed handle."""
        assert self._handle is not None, "upload already closed"
        self._handle.flush()
        os.fsync(self._handle.fileno())
        os.replace(self.path, target)
        self._handle.close()
        self._handle = None

    def abort(self) -> None:
        """Remove the partial file (idempotent)."""
        if self._handle is not None:
            self.path.unlink(missing_ok=True)
            self._handle.close()
            self._handle = None


def sweep_partial(directory: Path) -> list[Path]:
    """Remove ``.part-…`` files no live process is writing (their lock is free); return them."""
    removed = []
    for path in directory.glob(f"{PART_PREFIX}*") if directory.is_dir() else ():
        try:
            with open(path, "rb") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)
                removed.append(path)
        except (BlockingIOError, FileNotFoundError):
            continue
    return removed
