"""What ``/warmup`` and ``/warmup/status`` answer: a model's readiness and a warmup call's outcome."""

from dataclasses import dataclass
from enum import StrEnum


class WarmupState(StrEnum):
    """A model's readiness, as ``/warmup/status`` reports it."""

    COLD = "cold"
    WARMING = "warming"
    WARMED = "warmed"
    FAILED = "failed"


class WarmupOutcome(StrEnum):
    """What one ``POST /v1/warmup`` did: started a load, or found one running or done."""

    WARMING = "warming"
    ALREADY_WARMING = "already_warming"
    ALREADY_WARMED = "already_warmed"

    @classmethod
    def found(cls, state: WarmupState) -> "WarmupOutcome":
        """The outcome of a warmup that found a load already started and now in ``state``."""
        return cls.ALREADY_WARMED if state == WarmupState.WARMED else cls.ALREADY_WARMING


@dataclass(frozen=True)
class ModelStatus:
    """What ``/warmup/status`` and ``/v1/models`` say of a model."""

    model: str
    state: WarmupState
    gpu: str | None = None
    node: str | None = None
    load_seconds: float | None = None
    error: str | None = None
