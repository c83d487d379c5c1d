"""The GPU preference grammar: ``TYPE[:COUNT]``, comma-separated fallbacks, or ``auto``.

Examples: ``H100``, ``h100:8``, ``L40S:2``, ``H100:2,A100-80GB:2`` (try in order), ``auto``.
COUNT is 1, 2, 4 or 8 (default 1). ``cpu`` takes no count other than 1.
"""

from dataclasses import dataclass

from synthd.errors import InvalidRequest
from synthd.gpus.catalog import CPU_NAME, VALID_COUNTS, GPUType, lookup, valid_types_text


class GPUSpecError(InvalidRequest):
    """A preference string that does not parse; the message lists the valid types and counts."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="gpu_preference", code="invalid_gpu_preference")


@dataclass(frozen=True)
class GPUOption:
    """One choice: ``count`` devices of ``gpu``. ``str()`` gives the canonical spec (``H100:2``)."""

    gpu_name: str
    count: int = 1

    @property
    def is_cpu(self) -> bool:
        """True for the host CPU (shared, never held whole)."""
        return self.gpu_name == CPU_NAME

    @property
    def gpu_count(self) -> int:
        """GPUs it takes: ``count``, none for the CPU (what a placement reserves, what Ray is asked for)."""
        return 0 if self.is_cpu else self.count

    def __str__(self) -> str:
        return self.gpu_name if self.count == 1 else f"{self.gpu_name}:{self.count}"


@dataclass(frozen=True)
class GPUPreference:
    """A parsed preference: ordered ``options``, or none at all for ``auto``."""

    options: tuple[GPUOption, ...] = ()

    @property
    def is_auto(self) -> bool:
        """True when synthd should choose."""
        return not self.options

    def __str__(self) -> str:
        return ",".join(str(o) for o in self.options) if self.options else "auto"


AUTO = GPUPreference()


def parse_gpu_preference(text: str | None) -> GPUPreference:
    """Parse a preference; None or ``auto`` means synthd picks.

    Raises:
        GPUSpecError: empty string, unknown type, bad or missing count, extra ``:`` parts.
    """
    if text is None:
        return AUTO
    stripped = text.strip()
    if stripped.lower() == "auto":
        return AUTO
    if not stripped:
        raise GPUSpecError(f"empty GPU preference; {valid_types_text()}")
    return GPUPreference(tuple(_parse_option(part, text) for part in stripped.split(",")))


def _parse_option(part: str, whole: str) -> GPUOption:
    pieces = part.strip().split(":")
    if not pieces[0] or len(pieces) > 2:
        raise GPUSpecError(
            f"invalid GPU preference '{whole}': '{part.strip()}' is not TYPE or TYPE:COUNT; {valid_types_text()}"
        )
    name = pieces[0].strip()
    if name.lower() == CPU_NAME:
        gpu_name = CPU_NAME
    else:
        gpu: GPUType | None = lookup(name)
        if gpu is None:
            raise GPUSpecError(f"unknown GPU type '{name}' in '{whole}'; {valid_types_text()}")
        gpu_name = gpu.name
    count = 1
    if len(pieces) == 2:
        raw = pieces[1].strip()
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 3 or int(raw) not in VALID_COUNTS:
            raise GPUSpecError(f"invalid GPU count '{raw}' in '{whole}'; {valid_types_text()}")
        count = int(raw)
    if gpu_name == CPU_NAME and count != 1:
        raise GPUSpecError(f"'cpu' takes no count; {valid_types_text()}")
    return GPUOption(gpu_name, count)
