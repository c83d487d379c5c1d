"""Which KV-cache slot each sequence writes to, and which prompt prefixes are already in a slot.

Pure bookkeeping (no tensors), used by the scheduler; the model runner holds the tensors. The cache
is one row ("slot") per sequence: slot ``i`` holds the keys and values of one sequence's tokens at
positions ``0 … n-1``. A finished sequence's slot is not wiped: it stays free but keeps its tokens,
so a later prompt that starts with them can reuse them (prefix caching, as vLLM's automatic prefix
caching does; its design doc "Automatic Prefix Caching" describes the block hashing used here).

Tokens are indexed in blocks of ``block_size``: block ``i`` of a token sequence is keyed by
``sha256(key of block i-1, the block's token ids)``, the first block's parent being the LoRA
adapter's key (an adapter changes every key and value; the engine keys each load of an adapter
apart, so a new adapter under a reused name never hits the old one's blocks). Equal keys therefore mean equal whole
prefixes. A lookup walks the new prompt's blocks and stops at the first one no slot holds; the hit
is always shorter than the prompt (its last token must run to give the next token's logits).
A free slot that holds the hit is taken over as it is; a running one is copied from.
"""

import hashlib
from array import array
from dataclasses import dataclass, field

DEFAULT_BLOCK_SIZE = 16
"""Tokens per hashed block (vLLM's default ``--block-size`` on CPU and GPU)."""


@dataclass
class _Slot:
    """One cache row: the hashes of the full blocks it holds, whether a sequence owns it, and when it
    was last released (a counter, for least-recently-used eviction)."""

    blocks: list[bytes] = field(default_factory=list)
    owned: bool = False
    released_at: int = 0


@dataclass(frozen=True)
class Allocation:
    """Where a sequence's keys and values go: ``slot``; its first ``cached_tokens`` prompt tokens are
    already there, or are to be copied there from ``copy_from`` (another slot) before the step."""

    slot: int
    cached_tokens: int = 0
    copy_from: int | None = None


def block_hashes(
    token_ids: list[int], block_size: int, lora: str | None = None, parent: bytes | None = None, start: int = 0
) -> list[bytes]:
    """The chained keys of the full blocks of ``token_ids`` from token ``start`` (a block boundary)
    on; ``parent`` is the key of the block before ``start`` (None at 0: see the module docstring)."""
    if parent is None:
        parent = hashlib.sha256((lora or "").encode()).digest()
    keys = []
    for first in range(start, len(token_ids) - block_size + 1, block_size):
        block = array("q", token_ids[first : first + block_size]).tobytes()
        parent = hashlib.sha256(parent + block).digest()
        keys.append(parent)
    return keys


class KVCacheManager:
    """Slots for at most ``max_slots`` sequences and the prefix index over them.

    Args:
        max_slots: most slots (the engine's ``max_num_seqs``: every running sequence owns one).
        block_size: tokens per hashed block.
        enable_prefix_caching: False: every lookup misses and nothing is indexed.
    """

    def __init__(
        self, max_slots: int, block_size: int = DEFAULT_BLOCK_SIZE, enable_prefix_caching: bool = True
    ) -> None:
        self.max_slots = max_slots
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.slots: list[_Slot] = []
        self._index: dict[bytes, set[int]] = {}
        self._clock = 0

    @property
    def num_slots(self) -> int:
        """Slots ever used (the runner's cache has at least this many rows)."""
        return len(self.slots)

    def lookup(self, token_ids: list[int], lora: str | None = None) -> tuple[int, list[int]]:
        """``(tokens, slots)``: the longest cached prefix of ``token_ids`` (whole blocks, at most
        ``len(token_ids) - 1`` tokens) and the slots that hold it (empty on a miss)."""
        if not self.enable_prefix_caching:
            return 0, []
        usable = (len(token_ids) - 1) // self.block_size * self.block_size
        holders: set[int] = set()
        hit = 0
        for key in block_hashes(token_ids[:usable], self.block_size, lora):
            found = self._index.get(key)
            if not found:
                break
            holders, hit = found, hit + self.block_size
        return hit, sorted(holders)

    def allocate(self, token_ids: list[int], lora: str | None = None) -> Allocation:
        """Give a new sequence a slot, reusing the longest cached prefix of its prompt ``token_ids``.

        Raises:
            RuntimeError: every slot is owned (the scheduler admits at most ``max_slots`` sequences).
        """
        hit, holders = self.lookup(token_ids, lora)
        free_holders = [s for s in holders if not self.slots[s].owned]
        if free_holders:
            slot = max(free_holders, key=lambda s: self.slots[s].released_at)
            self._claim(slot, keep_blocks=hit // self.block_size)
            return Allocation(slot, hit)
        slot = self._free_slot()
        self._claim(slot, keep_blocks=0)
        if hit:
            self.slots[slot].blocks = list(self.slots[holders[0]].blocks[: hit // self.block_size])
            for key in self.slots[slot].blocks:
                self._index[key].add(slot)
            return Allocation(slot, hit, copy_from=holders[0])
        return Allocation(slot)

    def commit(self, slot: int, token_ids: list[int], lora: str | None = None) -> None:
        """Index the full blocks of ``token_ids``, the tokens whose keys and values ``slot`` now holds."""
        if not self.enable_prefix_caching:
            return
        held = self.slots[slot].blocks
        full = len(token_ids) // self.block_size
        if full <= len(held):
            return
        keys = block_hashes(
            token_ids[: full * self.block_size],
            self.block_size,
            lora,
            parent=held[-1] if held else None,
            start=len(held) * self.block_size,
        )
        for key in keys:
            self._index.setdefault(key, set()).add(slot)
        held.extend(keys)

    def held_blocks(self, slot: int) -> int:
        """Full blocks of ``slot`` in the prefix index."""
        return len(self.slots[slot].blocks)

    def free(self, slot: int) -> None:
        """Release a sequence's slot; its indexed blocks stay reusable until the slot is reclaimed."""
        self._clock += 1
        self.slots[slot].owned = False
        self.slots[slot].released_at = self._clock

    def reset(self) -> None:
        """Forget every slot and every cached prefix (after a failed step, the cache is suspect)."""
        self.slots, self._index = [], {}

    def _free_slot(self) -> int:
        """A slot no sequence owns: an empty one first, else the least recently released."""
        free = [i for i, s in enumerate(self.slots) if not s.owned]
        empty = [i for i in free if not self.slots[i].blocks]
        if empty:
            return empty[0]
        if len(self.slots) < self.max_slots:
            self.slots.append(_Slot())
            return len(self.slots) - 1
        if not free:
            raise RuntimeError("no free KV-cache slot")
        return min(free, key=lambda i: self.slots[i].released_at)

    def _claim(self, slot: int, keep_blocks: int) -> None:
        """Make ``slot`` owned, dropping from the index the blocks past ``keep_blocks`` it held."""
        state = self.slots[slot]
        for key in state.blocks[keep_blocks:]:
            holders = self._index.get(key)
            if holders is not None:
                holders.discard(slot)
                if not holders:
                    del self._index[key]
        del state.blocks[keep_blocks:]
        state.owned = True
