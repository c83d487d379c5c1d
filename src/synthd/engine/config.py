"""Engine settings shared by both engines, and the dtype rule."""

import os
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
        max_num_batched_tokens: tokens computed per engine step, prompt chunks and decode tokens
            together (vLLM's ``--max-num-batched-tokens``; None: the engine's default).
        enable_prefix_caching: reuse the keys and values of cached prompt prefixes
            (``--enable-prefix-caching``).
        batch_invariant: a request's greedy output does not depend on what runs beside it (vLLM's
            batch-invariant mode; costs throughput).
        cpu_threads: torch's intra-op threads for a native engine on the CPU (None: every core this
            process may use but one, which is left to the API server; vLLM-CPU reserves one the same way).
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
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    batch_invariant: bool = False
    cpu_threads: int | None = None


def default_cpu_threads() -> int:
    """Every core this process may use but one (at least one): the engine's matrix work gets those,
    the API server (HTTP, detokenization) the last. On a 2-core machine that is one thread, as
    vLLM-CPU's ``VLLM_CPU_OMP_THREADS_BIND=auto`` chooses; two threads there also measured up to 10×
    slower per GEMM whenever other processes kept the cores busy (each OpenMP barrier waits for the
    descheduled thread)."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


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
