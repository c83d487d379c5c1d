"""Sizing vLLM's LoRA slots from the adapters a server will serve (no vLLM import).

vLLM reserves LoRA buffers for ``max_lora_rank`` at start-up and refuses adapters of a higher rank,
and accepts only the ranks in ``VLLM_LORA_RANKS`` (``vllm/config/lora.py``, ``MaxLoRARanks``).
"""

from collections.abc import Iterable

from synthd.training.config import LoRASettings

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""``max_lora_rank`` values vLLM 0.32 accepts."""


def max_lora_rank_for(ranks: Iterable[int]) -> int:
    """The smallest rank vLLM accepts that covers every adapter rank in ``ranks`` and synthd's
    default training rank (``LoRASettings.r``: always served, so that a fine-tune finished after
    the server started fits). Ranks above vLLM's largest are left out (those adapters are refused when
    requested, saying why)."""
    needed = max([LoRASettings.r, *(r for r in ranks if r <= VLLM_LORA_RANKS[-1])])
    return next(allowed for allowed in VLLM_LORA_RANKS if allowed >= needed)
