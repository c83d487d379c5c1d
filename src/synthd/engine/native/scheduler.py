"""Which sequences run in the next engine step: a pure scheduler, testable without a model.

After vLLM v1's ``Scheduler.schedule()``: every step it returns a ``StepPlan``: the waiting
sequences admitted this step (prefilled whole, then decoded with the batch) and the running ones
that decode one token. Admission is first come, first served within a priority (lower
``SamplingParams.priority`` first, as vLLM's priority policy: batch-API lines wait behind
interactive requests), bounded by ``max_num_seqs`` and by a KV-cache budget in tokens: a sequence
reserves ``prompt + max_tokens`` (its worst case) from admission to its end, so memory can never run out mid-generation; a sequence that does not fit
waits. The waiting queue itself is bounded: beyond ``max_waiting`` a new sequence is refused
(``QueueFull``), so a flood of requests cannot grow memory without bound.

Not thread-safe: the engine calls it under its own lock.
"""

import time
from collections import deque
from dataclasses import dataclass, field

from synthd.engine.native.sampler import SamplerState
from synthd.errors import TooManyRequests

QUEUE_FULL_RETRY_AFTER_S = 1


class QueueFull(TooManyRequests):
    """The engine's waiting queue is full; retry after ``retry_after_s``."""

    def __init__(self, max_waiting: int) -> None:
        super().__init__(f"The engine is overloaded ({max_waiting} requests already waiting); retry shortly.",
                         retry_after_s=QUEUE_FULL_RETRY_AFTER_S, code="engine_overloaded")


@dataclass(eq=False)
class Sequence:
    """One choice being generated: owned by the engine once added.

    ``lora`` names the adapter to apply (None: the base model). ``kv_tokens`` is what it reserves
    of the KV budget: prompt plus ``max_tokens``. Times are ``time.perf_counter()`` seconds.
    """

    request_id: str
    prompt_ids: list[int]
    sampler: SamplerState
    lora: str | None = None
    arrival_s: float = field(default_factory=time.perf_counter)
    scheduled_s: float | None = None
    aborted: bool = False

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.sampler.generated)

    @property
    def kv_tokens(self) -> int:
        """KV-cache tokens reserved for this sequence (its worst case)."""
        return len(self.prompt_ids) + self.sampler.params.max_tokens


@dataclass(frozen=True)
class StepPlan:
    """One engine step: ``prefill`` sequences join the batch (whole prompt), then every running
    sequence (those included) decodes; ``aborted`` ones leave without running."""

    prefill: tuple[Sequence, ...] = ()
    aborted: tuple[Sequence, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the step has nothing to do."""
        return not self.prefill and not self.aborted


class Scheduler:
    """Admission by priority, then arrival, under a sequence cap and a KV-token budget.

    Args:
        max_num_seqs: most sequences in the running batch (vLLM's ``--max-num-seqs``).
        max_kv_tokens: KV-cache budget in tokens, summed over running sequences' reservations.
        max_waiting: most sequences waiting; ``add`` raises ``QueueFull`` beyond it.
    """

    def __init__(self, max_num_seqs: int, max_kv_tokens: int, max_waiting: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_kv_tokens = max_kv_tokens
        self.max_waiting = max_waiting
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.kv_tokens_reserved = 0

    @property
    def has_work(self) -> bool:
        """True while anything waits or runs."""
        return bool(self.waiting or self.running)

    def add(self, sequence: Sequence) -> None:
        """Queue a sequence behind every waiting one of the same or a lower priority value.

        Raises:
            QueueFull: ``max_waiting`` sequences already wait.
        """
        if len(self.waiting) >= self.max_waiting:
            raise QueueFull(self.max_waiting)
        priority = sequence.sampler.params.priority
        if not self.waiting or self.waiting[-1].sampler.params.priority <= priority:
            self.waiting.append(sequence)
            return
        position = next(i for i, waiting in enumerate(self.waiting) if waiting.sampler.params.priority > priority)
        self.waiting.insert(position, sequence)

    def schedule(self) -> StepPlan:
        """Plan the next step: drop aborted sequences, then admit waiting ones in queue order
        while the batch has room and their reservation fits the budget. A sequence larger than the
        whole budget is admitted alone into an empty batch (it was already checked against the
        model's context), so it cannot wait forever."""
        aborted = [s for s in self.waiting if s.aborted]
        if aborted:
            self.waiting = deque(s for s in self.waiting if not s.aborted)
        for sequence in [s for s in self.running if s.aborted]:
            self.finish(sequence)
            aborted.append(sequence)
        admitted: list[Sequence] = []
        while self.waiting and len(self.running) < self.max_num_seqs:
            head = self.waiting[0]
            fits = self.kv_tokens_reserved + head.kv_tokens <= self.max_kv_tokens
            if not fits and self.running:
                break
            self.waiting.popleft()
            self.running.append(head)
            self.kv_tokens_reserved += head.kv_tokens
            admitted.append(head)
        return StepPlan(tuple(admitted), tuple(aborted))

    def finish(self, sequence: Sequence) -> None:
        """Take a sequence out of the batch and return its reservation (no-op if not running)."""
        if sequence in self.running:
            self.running.remove(sequence)
            self.kv_tokens_reserved -= sequence.kv_tokens

    def drain(self) -> list[Sequence]:
        """Remove and return every sequence (shutdown)."""
        everything = [*self.running, *self.waiting]
        self.running, self.waiting, self.kv_tokens_reserved = [], deque(), 0
        return everything

    @property
    def kv_cache_usage(self) -> float:
        """Share of the KV budget reserved (0…1, above 1 only for one oversized sequence)."""
        return self.kv_tokens_reserved / self.max_kv_tokens if self.max_kv_tokens else 0.0
