"""Engine settings shared by both engines, and the dtype rule."""

from dataclasses import dataclass
from typing import Literal

import torch

EngineKind = Literal["native", "vllm", "auto"]


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine for one model.

    Attributes:
        kind: ``native`` (synthd's engine), ``vllm`` (vLLM's ``AsyncLLM``) or ``auto`` (vLLM when it
            is importable and a CUDA device is present, else native).
        dtype: ``auto`` | ``bfloat16`` | ``float32`` (``auto``: see ``pick_dtype``).
        max_num_seqs: most sequences per batch (vLLM's ``--max-num-seqs``).
        max_model_len: context cap in tokens (None: the model's own).
        max_loras: resident LoRA adapters per model (vLLM's ``--max-loras``).
        max_lora_rank: largest adapter rank the vLLM engine reserves for (``--max-lora-rank``).
        kv_cache_tokens: the native engine's KV budget in tokens (None: sized from memory).
        max_waiting: most sequences waiting in the native engine before requests are refused (429).
        gpu_memory_utilization: share of each GPU's memory vLLM may use (``--gpu-memory-utilization``).
    """

    kind: EngineKind = "native"
    dtype: str = "auto"
    max_num_seqs: int = 64
    max_model_len: int | None = None
    max_loras: int = 8
    max_lora_rank: int = 64
    kv_cache_tokens: int | None = None
    max_waiting: int = 1024
    gpu_memory_utilization: float = 0.9


def pick_dtype(requested: str, device_type: str) -> str:
    """The dtype to load weights in on ``device_type`` (``cpu`` or ``cuda``): ``requested`` unless
    ``auto``; else bfloat16 where the hardware runs it natively (CUDA, or a CPU with AVX512-BF16 or
    AMX), else float32.

    On this project's reference CPU (AVX-512 + AMX) bf16 decoding measured about 2x fp32.
    """
    if requested != "auto":
        return requested
    if device_type == "cuda":
        return "bfloat16"
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bfloat16" if native_bf16 else "float32"
