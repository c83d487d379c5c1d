"""Attention for a flattened batch over a per-sequence ("slot") KV cache, run inside a Hugging Face
model through transformers' attention-function registry.

transformers lets a backend register its own attention function (``AttentionInterface.register``)
and select it with ``set_attn_implementation``; a name without a mask function of its own makes the
model skip mask creation (masking_utils: "custom attention without equivalent mask creation"). vLLM's
Transformers modeling backend runs HF models the same way. The model is fed every token of the step
as a batch of ``T`` one-token rows (``input_ids`` ``[T, 1]``, ``position_ids`` ``[T, 1]``), so linear
layers see one ``[T, hidden]`` matrix whatever mix of decode tokens and prompt chunks it holds (and
PEFT's mixed-adapter forward gets one adapter name per token). Attention is the only place where
tokens meet: ``slot_attention`` writes each token's key and value into its sequence's slot at its
position, then

- single-token rows (decoding sequences) attend in one ``scaled_dot_product_attention`` call over
  their own cache rows (gathered when the slots are not ``0 … D-1``: a slot index can be as high as
  ``max_num_seqs``, and attending over every row up to it cost up to that many times the work), each
  masked to its own length; the grouped query heads of one KV head are laid out as that row's
  queries, so no KV head is repeated;
- each longer chunk (a prompt, or part of one) attends causally over its own slot, one call each.

``StepAttention.per_sequence`` (batch-invariant mode) runs each decoding row over exactly its own
length instead: masked-out padding changes the kernel's blocking, and so the last bits of results.

What the model's attention asks for per layer is honoured as transformers' own implementations do
it: a ``sliding_window`` masks keys older than the window (every key is still cached, so prefix
caching and chunking are unchanged), a ``softcap`` runs the eager form with capped scores. The
architectures this is checked on are ``support.NATIVE_ARCHITECTURES``; the loader refuses others.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTENTION_NAME = "synthd_slots"
MIN_CAPACITY = 128


class SlotCache:
    """Keys and values of every layer: ``[slots, kv_heads, capacity, head_dim]`` each, zero-filled
    (masked positions must hold finite numbers: a masked score is zero, but 0 × NaN is NaN).
    Rows and capacity grow on demand (capacity doubles), copying what is held."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.shape = (kv_heads, head_dim)
        self.dtype, self.device = dtype, device
        self.keys: list[torch.Tensor] = [self._empty(0, 0) for _ in range(num_layers)]
        self.values: list[torch.Tensor] = [self._empty(0, 0) for _ in range(num_layers)]

    @property
    def slots(self) -> int:
        """Rows allocated."""
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        """Positions allocated per row."""
        return self.keys[0].shape[2]

    def ensure(self, slots: int, tokens: int) -> None:
        """Grow to at least ``slots`` rows of ``tokens`` positions."""
        if slots <= self.slots and tokens <= self.capacity:
            return
        new_slots = max(slots, self.slots)
        capacity = self.capacity or MIN_CAPACITY
        while capacity < tokens:
            capacity *= 2
        for tensors in (self.keys, self.values):
            for layer, old in enumerate(tensors):
                grown = self._empty(new_slots, capacity)
                grown[: old.shape[0], :, : old.shape[2]] = old
                tensors[layer] = grown

    def copy(self, source: int, target: int, tokens: int) -> None:
        """Copy the first ``tokens`` positions of slot ``source`` into slot ``target``, every layer."""
        for tensors in (self.keys, self.values):
            for layer in tensors:
                layer[target, :, :tokens] = layer[source, :, :tokens]

    def _empty(self, slots: int, capacity: int) -> torch.Tensor:
        return torch.zeros((slots, self.shape[0], capacity, self.shape[1]), dtype=self.dtype, device=self.device)


@dataclass(frozen=True)
class PrefillSpan:
    """``rows`` ``[first, first + n)`` of the step are one sequence's chunk at positions
    ``[end - n, end)`` of ``slot``; ``mask`` ``[n, end]`` (None: plain causal, the chunk starts at 0)."""

    first: int
    n: int
    slot: int
    end: int
    mask: torch.Tensor | None
    windowed: dict[int, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    def mask_for(self, sliding_window: int | None, device: torch.device) -> torch.Tensor | None:
        """``mask`` for a full-attention layer; for a sliding one, causal and within the window
        (built once per step and window, shared by the layers)."""
        if not sliding_window or self.end <= sliding_window:
            return self.mask
        if sliding_window not in self.windowed:
            keys = torch.arange(self.end, device=device)[None, :]
            queries = torch.arange(self.end - self.n, self.end, device=device)[:, None]
            self.windowed[sliding_window] = (keys <= queries) & (keys > queries - sliding_window)
        return self.windowed[sliding_window]


@dataclass(frozen=True)
class StepAttention:
    """Everything ``slot_attention`` needs for one step, built once and used by every layer.

    ``write_slots``/``write_positions`` (``[T]``): where each token's key and value go. The first
    ``num_decode`` rows are single-token rows in slot order: ``decode_slots`` (``[D]``),
    ``decode_lengths`` (positions each attends to) and ``decode_mask`` ``[D, 1, 1, max length]`` for
    the shared call (``decode_dense``: the slots are exactly ``0 … D-1``, no gather needed).
    ``prefills``: the longer chunks.
    """

    cache: SlotCache
    write_slots: torch.Tensor
    write_positions: torch.Tensor
    num_decode: int
    decode_slots: torch.Tensor
    decode_lengths: tuple[int, ...]
    decode_mask: torch.Tensor | None
    decode_dense: bool
    prefills: tuple[PrefillSpan, ...]
    per_sequence: bool = False
    windowed: dict[int, torch.Tensor | None] = field(default_factory=dict, compare=False, repr=False)

    def decode_mask_for(self, sliding_window: int | None) -> torch.Tensor | None:
        """``decode_mask`` for a full-attention layer; for a sliding one, each row's last
        ``sliding_window`` positions only (built once per step and window)."""
        if not sliding_window or max(self.decode_lengths) <= sliding_window:
            return self.decode_mask
        if sliding_window not in self.windowed:
            device = self.decode_slots.device
            lengths = torch.tensor(self.decode_lengths, device=device)[:, None]
            keys = torch.arange(max(self.decode_lengths), device=device)[None, :]
            self.windowed[sliding_window] = ((keys < lengths) & (keys >= lengths - sliding_window))[:, None, None, :]
        return self.windowed[sliding_window]


def slot_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``query`` ``[T, heads, 1, head_dim]``, ``key`` and
    ``value`` ``[T, kv_heads, 1, head_dim]`` (after RoPE); returns ``[T, 1, heads, head_dim]``.
    Needs the step's ``StepAttention`` as the ``synthd_step`` keyword (passed through the model's
    forward); ``attention_mask`` is unused (none is built for this implementation).

    ``sliding_window`` (the layer's, None for full attention) lets a query at position ``q`` see the
    keys at ``(q - sliding_window, q]``, transformers' ``sliding_window_overlay``; ``softcap`` caps
    the scores as ``softcap * tanh(score / softcap)`` before the mask and softmax (Gemma 2's eager
    attention), which ``scaled_dot_product_attention`` cannot, so those layers run the eager form."""
    step: StepAttention = kwargs["synthd_step"]
    total, heads, head_dim = query.shape[0], query.shape[1], query.shape[-1]
    kv_heads = key.shape[1]
    q = query.transpose(1, 2).reshape(total, heads, head_dim)
    keys, values = step.cache.keys[module.layer_idx], step.cache.values[module.layer_idx]
    keys[step.write_slots, :, step.write_positions] = key.transpose(1, 2).reshape(total, kv_heads, head_dim)
    values[step.write_slots, :, step.write_positions] = value.transpose(1, 2).reshape(total, kv_heads, head_dim)
    out = q.new_empty((total, heads, head_dim))
    decode = step.num_decode
    if decode:
        grouped = q[:decode].view(decode, kv_heads, heads // kv_heads, head_dim)
        if step.per_sequence:
            for row, (slot, length) in enumerate(zip(step.decode_slots.tolist(), step.decode_lengths)):
                first = max(0, length - sliding_window) if sliding_window else 0
                out[row] = _attend(
                    grouped[row : row + 1],
                    keys[slot : slot + 1, :, first:length],
                    values[slot : slot + 1, :, first:length],
                    None,
                    scaling,
                    softcap,
                ).view(heads, head_dim)
        else:
            length = max(step.decode_lengths)
            if step.decode_dense:
                rows_keys, rows_values = keys[:decode, :, :length], values[:decode, :, :length]
            else:
                rows_keys = keys[:, :, :length].index_select(0, step.decode_slots)
                rows_values = values[:, :, :length].index_select(0, step.decode_slots)
            result = _attend(grouped, rows_keys, rows_values, step.decode_mask_for(sliding_window), scaling, softcap)
            out[:decode] = result.reshape(decode, heads, head_dim)
    for span in step.prefills:
        chunk = q[span.first : span.first + span.n].transpose(0, 1).unsqueeze(0)
        result = _attend(
            chunk,
            keys[span.slot : span.slot + 1, :, : span.end],
            values[span.slot : span.slot + 1, :, : span.end],
            span.mask_for(sliding_window, keys.device),
            scaling,
            softcap,
            causal=True,
        )
        out[span.first : span.first + span.n] = result[0].transpose(0, 1)
    return out.view(total, 1, heads, head_dim), None


def _attend(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
    softcap: float | None,
    causal: bool = False,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` (``mask`` boolean, True = attend; None and ``causal``: plain
    causal), or its eager form with soft-capped scores; query heads may be a multiple of key heads."""
    if softcap is None:
        return F.scaled_dot_product_attention(
            query,
            keys,
            values,
            attn_mask=mask,
            is_causal=causal and mask is None,
            scale=scaling,
            enable_gqa=query.shape[-3] != keys.shape[-3],
        )
    if query.shape[-3] != keys.shape[-3]:
        repeat = query.shape[-3] // keys.shape[-3]
        keys, values = keys.repeat_interleave(repeat, dim=-3), values.repeat_interleave(repeat, dim=-3)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, keys.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    if mask is None and causal:
        n, length = scores.shape[-2:]
        mask = torch.ones((n, length), dtype=torch.bool, device=scores.device).tril(length - n)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, values)


AttentionInterface.register(ATTENTION_NAME, slot_attention)
