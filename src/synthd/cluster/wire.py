"""What crosses between the API process and a replica actor besides the engine's own dataclasses:
domain errors as plain data (an exception with keyword-only arguments does not survive pickling
by its ``args``), and an adapter's files for nodes that cannot read its folder."""

import os
import shutil
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from synthd.engine.protocol import GenerationError
from synthd.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServerFault,
    SynthdError,
    TooManyRequests,
)

KINDS: tuple[type[SynthdError], ...] = (
    TooManyRequests,
    Overloaded,
    InvalidRequest,
    NotFound,
    Conflict,
    PayloadTooLarge,
    ServerFault,
)
"""Error kinds kept across the wire, most specific first (each maps to one HTTP status)."""


@dataclass(frozen=True)
class RemoteFailure:
    """A domain error raised in a replica, as data: ``kind`` is the name of its base kind."""

    kind: str
    message: str
    param: str | None = None
    code: str | None = None
    retry_after_s: int | None = None

    @classmethod
    def of(cls, exc: BaseException) -> "RemoteFailure":
        """``exc`` as data; anything that is not a ``SynthdError`` becomes a ``GenerationError``."""
        if not isinstance(exc, SynthdError):
            return cls(ServerFault.__name__, f"Generation failed: {type(exc).__name__}: {exc}")
        kind = next(k for k in (*KINDS, SynthdError) if isinstance(exc, k))
        return cls(kind.__name__, exc.message, exc.param, exc.code, getattr(exc, "retry_after_s", None))

    def error(self) -> SynthdError:
        """The domain error to raise in the API process (same kind, message, param and code)."""
        kind = next((k for k in KINDS if k.__name__ == self.kind), None)
        if kind is None or kind is ServerFault:
            return GenerationError(self.message, param=self.param, code=self.code)
        if issubclass(kind, Overloaded):
            return kind(self.message, retry_after_s=self.retry_after_s or 1, param=self.param, code=self.code)
        return kind(self.message, param=self.param, code=self.code)


@dataclass(frozen=True)
class AdapterFiles:
    """A PEFT adapter folder's files (name → bytes), put in Ray's object store for replicas on
    nodes that cannot read the folder. ``digest`` names the content (SHA-256 over names and bytes)."""

    name: str
    digest: str
    files: dict[str, bytes]

    @classmethod
    def read(cls, name: str, folder: Path) -> "AdapterFiles":
        """The regular files directly in ``folder`` (a PEFT adapter is flat: config and weights).

        Raises:
            OSError: the folder cannot be read.
        """
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        digest = sha256()
        for file_name, content in files.items():
            digest.update(file_name.encode() + b"\0" + sha256(content).digest())
        return cls(name, digest.hexdigest(), files)

    def write(self, root: Path) -> Path:
        """Materialize under ``root/<digest>`` (once; a finished copy is reused) and return the folder."""
        target = root / self.digest
        if target.is_dir():
            return target
        staging = root / f".{self.digest}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for file_name, content in self.files.items():
            (staging / file_name).write_bytes(content)
        try:
            staging.rename(target)
        except OSError:  # another replica on this node wrote it first
            shutil.rmtree(staging, ignore_errors=True)
            if not target.is_dir():
                raise
        return target
