"""Memory a model needs, estimated from its config, for inference, LoRA training and full fine-tuning.

Formulas (all in bytes, reported in GiB):

- Parameters P are counted from the config for decoder-only transformers (Llama-style: embeddings,
  per layer q/k/v/o projections with grouped KV heads, gated MLP of three matrices, norms, and an
  LM head unless tied).
- Inference = weights + KV cache + overhead, with weights = P × dtype bytes; KV cache =
  2 (K and V) × layers × kv_heads × head_dim × dtype bytes × context × batch (the standard KV size,
  e.g. vLLM docs "Memory"); overhead = 10 % of weights (activations, allocator slack) + 1 GiB per
  device (CUDA context).
- Full fine-tuning with mixed-precision Adam = 16 bytes per parameter (2 weights + 2 gradients +
  4 fp32 master copy + 8 Adam moments), from "Transformer Math 101" (Anthony, Biderman, Schoelkopf,
  EleutherAI blog, 2023), plus activations.
- LoRA = frozen weights (P × dtype bytes) + 16 bytes per adapter parameter (adapter parameters
  = r × (d_in + d_out) per adapted matrix, Hu et al. 2021 "LoRA") plus activations.
- Activations with gradient checkpointing = layers × seq × batch × hidden × 2 bytes (saved layer
  inputs) + one layer recomputed without checkpointing: seq × batch × hidden × (34 + 5 × heads × seq
  / hidden) bytes, from Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", eq. 1.
"""

from dataclasses import dataclass
from typing import Any

GIB = 1024**3
PURPOSES = ("inference", "sft", "dpo")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
DEVICE_OVERHEAD_GIB = 1.0
ADAM_MIXED_PRECISION_BYTES = 16


@dataclass(frozen=True)
class ModelShape:
    """The config numbers the estimate needs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, config: Any) -> "ModelShape":
        """From a ``transformers`` config object or a ``config.json`` dict."""
        get = (
            (lambda k, d=None: config.get(k, d))
            if isinstance(config, dict)
            else (lambda k, d=None: getattr(config, k, d))
        )
        hidden = get("hidden_size")
        heads = get("num_attention_heads")
        return cls(
            vocab_size=get("vocab_size"),
            hidden_size=hidden,
            intermediate_size=get("intermediate_size") or 4 * hidden,
            num_layers=get("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or hidden // heads,
            max_position_embeddings=get("max_position_embeddings") or 2048,
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        )

    @property
    def parameters(self) -> int:
        """Parameter count P."""
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        attention = h * self.num_heads * self.head_dim * 2 + h * kv * 2
        mlp = 3 * h * self.intermediate_size
        per_layer = attention + mlp + 2 * h
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embeddings + h

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV-cache bytes of one token: 2 (K and V) × layers × kv_heads × head_dim × dtype bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    def lora_parameters(self, rank: int) -> int:
        """Adapter parameters for LoRA of rank ``rank`` on q, k, v, o and the three MLP matrices."""
        h, kv, inter = self.hidden_size, self.num_kv_heads * self.head_dim, self.intermediate_size
        q_out = self.num_heads * self.head_dim
        pairs = [(h, q_out), (h, kv), (h, kv), (q_out, h), (h, inter), (h, inter), (inter, h)]
        return self.num_layers * sum(rank * (d_in + d_out) for d_in, d_out in pairs)


@dataclass(frozen=True)
class MemoryEstimate:
    """Required memory in GiB for one purpose, with its parts."""

    purpose: str
    parameters: int
    weights_gib: float
    kv_cache_gib: float
    optimizer_gib: float
    activations_gib: float
    overhead_gib: float

    @property
    def total_gib(self) -> float:
        """Everything added up."""
        return self.weights_gib + self.kv_cache_gib + self.optimizer_gib + self.activations_gib + self.overhead_gib


def estimate_memory(
    shape: ModelShape,
    purpose: str,
    *,
    dtype_bytes: int = 2,
    context: int | None = None,
    batch: int = 1,
    lora_rank: int = 16,
    full_fine_tune: bool = False,
) -> MemoryEstimate:
    """Estimate memory for ``purpose`` (``inference``, ``sft`` or ``dpo``); see the module docstring.

    ``context`` defaults to the model's ``max_position_embeddings`` for inference and 1024 tokens for
    training. DPO holds a chosen and a rejected sequence per example, so its activations double (the
    reference model is the frozen base with the adapter disabled, so no second copy of weights).

    Raises:
        ValueError: unknown purpose.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, not '{purpose}'")
    params = shape.parameters
    weights = params * dtype_bytes / GIB
    if purpose == "inference":
        tokens = (context or shape.max_position_embeddings) * batch
        kv = shape.kv_bytes_per_token(dtype_bytes) * tokens / GIB
        return MemoryEstimate(purpose, params, weights, kv, 0.0, 0.0, 0.1 * weights + DEVICE_OVERHEAD_GIB)
    seq = context or 1024
    rows = batch * (2 if purpose == "dpo" else 1)
    h, heads = shape.hidden_size, shape.num_heads
    activations = (shape.num_layers * seq * rows * h * 2 + seq * rows * h * (34 + 5 * heads * seq / h)) / GIB
    if full_fine_tune:
        optimizer = params * (ADAM_MIXED_PRECISION_BYTES - dtype_bytes) / GIB
    else:
        optimizer = shape.lora_parameters(lora_rank) * ADAM_MIXED_PRECISION_BYTES / GIB
    return MemoryEstimate(purpose, params, weights, 0.0, optimizer, activations, 0.1 * weights + DEVICE_OVERHEAD_GIB)
