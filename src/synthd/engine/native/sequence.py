"""One sequence being generated: its prompt, sampling state, timings and output channel."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from synthd.engine.native.detokenize import TextAssembler
from synthd.engine.native.sampling import SamplerState

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"
FINISH_ERROR = "error"


@dataclass(frozen=True)
class SequenceEvent:
    """What the engine reports after each step of one sequence.

    ``text`` is the new text since the previous event (may be empty). ``completion_tokens``
    counts every token generated so far, an end-of-sequence token included (as vLLM and OpenAI
    count). ``finish_reason`` is None while running, else ``stop`` | ``length`` | ``abort`` |
    ``error`` (then ``error`` holds the message).
    """

    text: str
    completion_tokens: int
    finish_reason: str | None = None
    error: str | None = None


@dataclass(eq=False)
class Sequence:
    """A request for one completion, owned by the engine thread once submitted.

    ``adapter`` names the LoRA adapter to apply (None: the base model). Timestamps are ``time.perf_counter()`` seconds; ``emit`` is called from the engine thread.
    """

    prompt_ids: list[int]
    sampler: SamplerState
    assembler: TextAssembler
    emit: Callable[[SequenceEvent], None]
    adapter: str | None = None
    arrival_s: float = field(default_factory=time.perf_counter)
    scheduled_s: float | None = None
    first_token_s: float | None = None
    finished_s: float | None = None
    finish_reason: str | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Ask the engine to stop this sequence at its next step (thread-safe, idempotent)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """True once ``cancel`` was called."""
        return self._cancelled.is_set()

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.sampler.generated)
