"""Load a Hugging Face causal LM folder into a ``NativeEngine``."""

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from synthd.engine.config import EngineConfig, default_cpu_threads, pick_dtype, serving_context
from synthd.engine.native.engine import NativeEngine
from synthd.engine.native.support import check_native_support
from synthd.engine.prompts import eos_token_ids
from synthd.gpus.memory import DTYPE_BYTES, ModelShape

log = logging.getLogger(__name__)
KV_BUDGET_SHARE = 0.25
"""Share of the device's free memory the native engine's KV reservations may take when
``kv_cache_tokens`` is not set."""


def load_weights(path: Path, **kwargs: Any) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path, **kwargs)``, refusing a checkpoint that lacks
    weights the architecture needs: transformers would start those randomly initialised (it only
    logs them), and the model would answer, wrongly.

    Raises:
        ValueError: weights missing from the folder (the first few named).
    """
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    if missing := sorted(info["missing_keys"]):
        shown = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
        raise ValueError(f"{len(missing)} weights are missing from the checkpoint in {path.name} ({shown})")
    return model


def load_native_engine(
    model_id: str,
    path: Path,
    config: EngineConfig,
    gpu_indices: list[int] | None = None,
    memory_bytes: float | None = None,
) -> NativeEngine:
    """Load weights and tokenizer from ``path`` and start the engine thread.

    ``gpu_indices`` are the CUDA ordinals the placement chose: none → CPU, one → that GPU, several →
    layers spread over exactly those GPUs (accelerate's ``device_map="auto"`` limited by
    ``max_memory``). ``memory_bytes`` is the placement's memory, used to size the KV budget.

    Raises:
        OSError, ValueError: the folder is not a loadable causal LM. UnsupportedModel (a ValueError):
            the native engine does not run it exactly (``support.NATIVE_ARCHITECTURES``).
    """
    check_native_support(AutoConfig.from_pretrained(path))
    indices = gpu_indices or []
    device = torch.device(f"cuda:{indices[0]}") if indices else torch.device("cpu")
    dtype = pick_dtype(config.dtype, device.type)
    if device.type == "cpu":
        torch.set_num_threads(config.cpu_threads or default_cpu_threads())
    tokenizer = AutoTokenizer.from_pretrained(path)
    if len(indices) > 1:
        max_memory = {i: torch.cuda.get_device_properties(i).total_memory for i in indices}
        model = load_weights(path, dtype=getattr(torch, dtype), device_map="auto", max_memory=max_memory).eval()
    else:
        model = load_weights(path, dtype=getattr(torch, dtype)).to(device).eval()
    context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    max_model_len = serving_context(config.max_model_len, context)
    kv_tokens = config.kv_cache_tokens or _kv_budget_tokens(
        model, dtype, memory_bytes, max_model_len, config.max_num_seqs
    )
    log.info(
        "loaded %s from %s (%s on %s, %d threads, KV budget %d tokens)",
        model_id,
        path,
        dtype,
        device,
        torch.get_num_threads(),
        kv_tokens,
    )
    return NativeEngine(
        model_id,
        model,
        tokenizer,
        dtype=dtype,
        max_model_len=max_model_len,
        eos_token_ids=eos_token_ids(model.generation_config, tokenizer),
        max_num_seqs=config.max_num_seqs,
        max_kv_tokens=kv_tokens,
        max_waiting=config.max_waiting,
        max_loras=config.max_loras,
        enable_prefix_caching=config.enable_prefix_caching,
        batch_invariant=config.batch_invariant,
        **({"max_num_batched_tokens": config.max_num_batched_tokens} if config.max_num_batched_tokens else {}),
    )


def _kv_budget_tokens(model, dtype: str, memory_bytes: float | None, max_model_len: int, max_num_seqs: int) -> int:
    """``KV_BUDGET_SHARE`` of the placement's memory in KV tokens, at least one full context, at most
    every sequence at full context."""
    ceiling = max_model_len * max_num_seqs
    if not memory_bytes:
        return ceiling
    per_token = ModelShape.from_config(model.config).kv_bytes_per_token(DTYPE_BYTES[dtype])
    tokens = int(memory_bytes * KV_BUDGET_SHARE / per_token)
    return max(max_model_len, min(ceiling, tokens))
