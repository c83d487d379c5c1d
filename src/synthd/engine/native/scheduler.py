"""Which sequences run in the next engine step, and how many tokens each: a pure scheduler,
testable without a model.

After vLLM v1's ``Scheduler.schedule()``: there are no separate prefill and decode phases, only a
number of tokens to compute per sequence per step. Every step gets a budget of
``max_num_batched_tokens``. Running sequences that are decoding come first (one token each), then
running sequences whose prompt is only partly computed (the next chunk of it), then waiting
sequences in arrival order, each with as much of its prompt as the budget still allows. So a long
prompt is prefilled in chunks mixed into the decode steps of the running streams, and never stalls
them for longer than one budget's worth of compute (chunked prefill, Agrawal et al. 2024,
"Sarathi-Serve"). A sequence whose prompt is complete after its chunk gets its first token sampled
in that step; a partial chunk samples nothing.

Admission is first come, first served within a priority (lower ``SamplingParams.priority`` first,
as vLLM's priority policy: batch-API lines wait behind interactive requests), bounded by ``max_num_seqs`` and by a KV-cache budget in
tokens: a sequence reserves ``prompt + max_tokens`` (its worst case) from admission to its end, so
memory can never run out mid-generation; a sequence that does not fit waits. The waiting queue is
bounded: beyond ``max_waiting`` a new sequence is refused (``QueueFull``). On admission the
``KVCacheManager`` gives the sequence a slot and the part of its prompt already cached there (prefix
caching), which is not computed again.

``batch_invariant`` (see the engine): prompts are never split into chunks and the prefix cache is
off, so what a sequence computes never depends on what else runs.

Not thread-safe: the engine calls it under its own lock.
"""

import time
from collections import deque
from dataclasses import dataclass, field

from synthd.engine.native.kv_manager import DEFAULT_BLOCK_SIZE, KVCacheManager
from synthd.engine.native.sampler import SamplerState
from synthd.engine.protocol import QueueFull

DEFAULT_MAX_NUM_BATCHED_TOKENS = 512
"""Tokens computed per step when not configured (vLLM's ``--max-num-batched-tokens``)."""


@dataclass(eq=False)
class Sequence:
    """One choice being generated: owned by the engine once added.

    ``lora`` names the adapter to apply (None: the base model); ``lora_key`` is the adapter's
    identity, not its name, which a new adapter may reuse (see ``prefix_key``). ``kv_tokens`` is what it reserves
    of the KV budget: prompt plus ``max_tokens``. ``num_computed_tokens`` of its tokens (prompt, then
    generated) have keys and values in its cache ``slot``; ``num_cached_tokens`` of the prompt came
    from the prefix cache. Times are ``time.perf_counter()`` seconds.
    """

    request_id: str
    prompt_ids: list[int]
    sampler: SamplerState
    lora: str | None = None
    lora_key: str | None = None
    arrival_s: float = field(default_factory=time.perf_counter)
    scheduled_s: float | None = None
    aborted: bool = False
    slot: int | None = None
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.sampler.generated)

    @property
    def kv_tokens(self) -> int:
        """KV-cache tokens reserved for this sequence (its worst case)."""
        return len(self.prompt_ids) + self.sampler.params.max_tokens

    @property
    def prefix_key(self) -> str | None:
        """What its prefix-cache blocks are keyed by: the adapter's ``lora_key``, else its name
        (sequences built without the engine), None for the base model."""
        return self.lora_key or self.lora

    @property
    def token_ids(self) -> list[int]:
        """Prompt then generated token ids."""
        return self.prompt_ids + self.sampler.generated

    @property
    def prefilling(self) -> bool:
        """True while part of the prompt has no keys and values yet."""
        return self.num_computed_tokens < len(self.prompt_ids)


@dataclass(frozen=True)
class ScheduledChunk:
    """``token_ids`` of ``sequence`` computed this step, from position ``start``; ``sample``: the step
    ends with the sequence's next token (the chunk reaches its last known token)."""

    sequence: Sequence
    start: int
    token_ids: tuple[int, ...]
    sample: bool

    @property
    def num_tokens(self) -> int:
        """Tokens computed this step."""
        return len(self.token_ids)


@dataclass(frozen=True)
class StepPlan:
    """One engine step. ``chunks``: every sequence computed this step, decoding ones first.
    ``joined``: sequences admitted this step (they are in ``chunks`` too). ``copies``: prefix-cache
    copies ``(from slot, to slot, tokens)`` to make before the step. ``aborted`` leave without running."""

    chunks: tuple[ScheduledChunk, ...] = ()
    joined: tuple[Sequence, ...] = ()
    copies: tuple[tuple[int, int, int], ...] = ()
    aborted: tuple[Sequence, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the step has nothing to do."""
        return not self.chunks and not self.aborted

    @property
    def num_tokens(self) -> int:
        """Tokens computed this step."""
        return sum(c.num_tokens for c in self.chunks)


class Scheduler:
    """Admission by priority, then arrival, and chunked prefill under per-step and KV budgets.

    Args:
        max_num_seqs: most sequences in the running batch (vLLM's ``--max-num-seqs``).
        max_kv_tokens: KV-cache budget in tokens, summed over running sequences' reservations.
        max_waiting: most sequences waiting; ``add`` raises ``QueueFull`` beyond it.
        max_num_batched_tokens: tokens computed per step (at least ``max_num_seqs``, so every
            running sequence decodes each step).
        enable_prefix_caching: reuse cached prompt prefixes (see ``KVCacheManager``).
        batch_invariant: whole prompts only, no prefix cache (see the module docstring).
        block_size: tokens per prefix-cache block.
    """

    def __init__(
        self,
        max_num_seqs: int,
        max_kv_tokens: int,
        max_waiting: int,
        max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
        *,
        enable_prefix_caching: bool = True,
        batch_invariant: bool = False,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_kv_tokens = max_kv_tokens
        self.max_waiting = max_waiting
        self.max_num_batched_tokens = max(max_num_batched_tokens, max_num_seqs)
        self.batch_invariant = batch_invariant
        self.kv = KVCacheManager(max_num_seqs, block_size, enable_prefix_caching and not batch_invariant)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.kv_tokens_reserved = 0
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

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
        """Plan the next step (see the module docstring) and count its tokens as computed.

        A sequence larger than the whole KV budget is admitted alone into an empty batch (it was
        already checked against the model's context), so it cannot wait forever. In batch-invariant
        mode a prompt longer than the token budget is admitted whole when nothing else is prefilled
        in the step."""
        aborted = [s for s in self.waiting if s.aborted]
        if aborted:
            self.waiting = deque(s for s in self.waiting if not s.aborted)
        for sequence in [s for s in self.running if s.aborted]:
            self.finish(sequence)
            aborted.append(sequence)
        budget = self.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        for sequence in self.running:
            if not sequence.prefilling:
                chunks.append(self._chunk(sequence, sequence.num_computed_tokens, 1))
                budget -= 1
        prefilled = False
        for sequence in self.running:
            if sequence.prefilling and budget > 0:
                size = self._prefill_size(sequence, budget, prefilled)
                if size == 0:
                    break
                chunks.append(self._chunk(sequence, sequence.num_computed_tokens, size))
                budget -= size
                prefilled = True
        joined: list[Sequence] = []
        copies: list[tuple[int, int, int]] = []
        while self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            head = self.waiting[0]
            fits = self.kv_tokens_reserved + head.kv_tokens <= self.max_kv_tokens
            if not fits and self.running:
                break
            if self.batch_invariant and prefilled and len(head.prompt_ids) > budget:
                break
            self.waiting.popleft()
            allocation = self.kv.allocate(head.prompt_ids, head.prefix_key)
            head.slot, head.num_computed_tokens = allocation.slot, allocation.cached_tokens
            head.num_cached_tokens = allocation.cached_tokens
            if allocation.copy_from is not None:
                copies.append((allocation.copy_from, allocation.slot, allocation.cached_tokens))
            self.prefix_cache_queries += len(head.prompt_ids)
            self.prefix_cache_hits += allocation.cached_tokens
            self.running.append(head)
            self.kv_tokens_reserved += head.kv_tokens
            joined.append(head)
            size = self._prefill_size(head, budget, prefilled)
            chunks.append(self._chunk(head, head.num_computed_tokens, size))
            budget -= size
            prefilled = True
        return StepPlan(tuple(chunks), tuple(joined), tuple(copies), tuple(aborted))

    def _prefill_size(self, sequence: Sequence, budget: int, prefilled: bool) -> int:
        remaining = len(sequence.prompt_ids) - sequence.num_computed_tokens
        if self.batch_invariant:
            return remaining if remaining <= budget or not prefilled else 0
        return min(remaining, budget)

    @staticmethod
    def _chunk(sequence: Sequence, start: int, size: int) -> ScheduledChunk:
        prompt, generated = sequence.prompt_ids, sequence.sampler.generated
        if start >= len(prompt):
            ids = tuple(generated[start - len(prompt) : start - len(prompt) + size])
        else:
            ids = tuple(prompt[start : start + size])
        sequence.num_computed_tokens = start + size
        return ScheduledChunk(sequence, start, ids, start + size >= len(prompt) + len(generated))

    def commit(self, sequence: Sequence) -> None:
        """Offer the computed tokens of a running sequence to the prefix cache (after its step)."""
        if sequence.slot is None or sequence not in self.running:
            return
        if sequence.num_computed_tokens // self.kv.block_size > self.kv.held_blocks(sequence.slot):
            self.kv.commit(sequence.slot, sequence.token_ids[: sequence.num_computed_tokens], sequence.prefix_key)

    def finish(self, sequence: Sequence) -> None:
        """Take a sequence out of the batch and return its reservation and slot (no-op if not running)."""
        if sequence in self.running:
            self.running.remove(sequence)
            self.kv_tokens_reserved -= sequence.kv_tokens
            if sequence.slot is not None:
                self.kv.free(sequence.slot)

    def drain(self) -> list[Sequence]:
        """Remove and return every sequence (shutdown)."""
        everything = [*self.running, *self.waiting]
        for sequence in self.running:
            if sequence.slot is not None:
                self.kv.free(sequence.slot)
        self.running, self.waiting, self.kv_tokens_reserved = [], deque(), 0
        return everything

    def reset_cache(self) -> None:
        """Fail every running sequence's cache: forget cached prefixes (after a failed step)."""
        self.kv.reset()

    @property
    def kv_cache_usage(self) -> float:
        """Share of the KV budget reserved (0…1, above 1 only for one oversized sequence)."""
        return self.kv_tokens_reserved / self.max_kv_tokens if self.max_kv_tokens else 0.0
