"""Which models the native engine runs, decided from the config before any weight is read.

The native engine runs a Hugging Face model's own forward with its own attention function
(``attention.slot_attention``), so it is exact for an architecture when that function does what the
architecture's attention asks for (causal attention, per-layer ``sliding_window``, ``softcap``,
``scaling``) and nothing in the model depends on the rest of the batch. Each architecture below is
checked against transformers' ``generate`` by tests/integration/test_conformance.py; anything else
is refused at load (``UnsupportedModel``, a 400 ``model_load_failed``), never served approximately,
as vLLM refuses an architecture it has no implementation for.
"""

from typing import Any

from transformers import PretrainedConfig

NATIVE_ARCHITECTURES: tuple[str, ...] = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "Phi3ForCausalLM",
    "Olmo2ForCausalLM",
)
"""Architectures (``config.json``'s ``architectures``) the native engine runs exactly as transformers
does: per-layer sliding windows (``sliding_window``, ``layer_types``), attention and final-logit
soft-capping, ``query_pre_attn_scalar``, grouped and single KV heads, ``head_dim`` apart from
``hidden_size / num_attention_heads``, attention biases, q/k norms, partial rotary, scaled and tied
embeddings. Other models need ``--engine vllm``."""

BATCH_DEPENDENT_ROPE = ("dynamic", "longrope")
"""RoPE types whose frequencies transformers picks from the longest position in the forward pass,
which in a continuous batch is another sequence's."""


class UnsupportedModel(ValueError):
    """The native engine cannot run this model exactly; the message names what and points to vLLM."""

    def __init__(self, architecture: str, what: str) -> None:
        super().__init__(
            f"the native engine does not support {architecture} ({what}); serve it with --engine vllm. "
            f"Native architectures: {', '.join(NATIVE_ARCHITECTURES)}"
        )


def check_native_support(config: PretrainedConfig) -> None:
    """Refuse a model the native engine would not answer exactly as transformers does.

    Raises:
        UnsupportedModel: its architecture is not in ``NATIVE_ARCHITECTURES``, or it uses a feature
            the native engine does not run (bidirectional attention, batch-dependent RoPE scaling).
    """
    architectures = list(getattr(config, "architectures", None) or [])
    architecture = architectures[0] if architectures else f"model_type '{config.model_type}'"
    if len(architectures) != 1 or architecture not in NATIVE_ARCHITECTURES:
        raise UnsupportedModel(architecture, "not a native architecture")
    if getattr(config, "use_bidirectional_attention", False):
        raise UnsupportedModel(architecture, "use_bidirectional_attention")
    for rope in _rope_settings(config):
        if rope.get("rope_type", rope.get("type")) in BATCH_DEPENDENT_ROPE:
            raise UnsupportedModel(architecture, f"rope_type '{rope.get('rope_type', rope.get('type'))}'")


def _rope_settings(config: PretrainedConfig) -> list[dict[str, Any]]:
    """Every RoPE settings dict of ``config``: ``rope_scaling`` / ``rope_parameters``, per layer type
    where there is one per type (Gemma 3)."""
    found = []
    for name in ("rope_scaling", "rope_parameters"):
        value = getattr(config, name, None)
        if isinstance(value, dict):
            nested = [v for v in value.values() if isinstance(v, dict)]
            found.extend(nested or [value])
    return found
