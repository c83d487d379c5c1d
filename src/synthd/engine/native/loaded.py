"""A model loaded for serving: weights, tokenizer, prompt encoding and its batching engine."""

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
)

from synthd.engine.guided import GuidedDecoding
from synthd.engine.native.batcher import BatchEngine, FinishObserver
from synthd.models.adapters import AdapterRef, check_adapter
from synthd.models.resolve import ModelSource

log = logging.getLogger(__name__)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """bfloat16 where the hardware runs it natively (CUDA, or a CPU with AVX512-BF16 or AMX);
    else float32. ``requested`` may force ``bfloat16`` or ``float32``.

    On this project's reference CPU (AVX-512 + AMX) bf16 decoding measured about 2x fp32.
    """
    if requested != "auto":
        return {"bfloat16": torch.bfloat16, "float32": torch.float32}[requested]
    if device.type == "cuda":
        return torch.bfloat16
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if native_bf16 else torch.float32


class AdapterBusy(RuntimeError):
    """An adapter cannot be unloaded while requests use it."""


def adapter_name(model_id: str) -> str:
    """A PEFT-safe adapter name for a fine-tune id (ids hold ':' and '.', which module keys cannot)."""
    return "ft_" + hashlib.sha1(model_id.encode()).hexdigest()[:16]


@dataclass
class LoadedModel:
    """One resident base model and the LoRA adapters loaded on it (least recently used first).

    ``max_model_len`` is its context in tokens (prompt + completion); ``max_adapters`` caps the
    resident adapters, the least recently used idle one being unloaded beyond it.
    """

    source: ModelSource
    tokenizer: PreTrainedTokenizerBase
    engine: BatchEngine
    max_model_len: int
    dtype: torch.dtype
    device: torch.device
    created: int
    max_adapters: int = 8
    adapters: "OrderedDict[str, str]" = field(default_factory=OrderedDict)
    guided: GuidedDecoding = field(init=False)

    def __post_init__(self) -> None:
        self.guided = GuidedDecoding(self.tokenizer)

    @property
    def model_id(self) -> str:
        """The id this model is served under."""
        return self.source.model_id

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered with the model's chat template plus the assistant cue.

        Raises:
            ValueError: the tokenizer has no chat template.
        """
        if not self.tokenizer.chat_template:
            raise ValueError(f"model '{self.model_id}' has no chat template; use /v1/completions")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a raw prompt (no special tokens added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def ensure_adapter(self, ref: AdapterRef) -> str:
        """Load ``ref`` on this base if it is not resident; return its adapter name.

        Raises:
            AdapterMismatch: the adapter does not fit this base (checked before loading).
        """
        from peft import PeftModel

        name = adapter_name(ref.model_id)
        with self.engine.model_lock:
            if name in self.adapters:
                self.adapters.move_to_end(name)
                return name
            check_adapter(ref.path, self.source.path)
            model = self.engine.model
            if isinstance(model, PeftModel):
                model.load_adapter(str(ref.path), adapter_name=name)
            else:
                self.engine.model = PeftModel.from_pretrained(model, str(ref.path), adapter_name=name).eval()
            self.adapters[name] = ref.model_id
            busy = self.engine.adapters_in_use() | {name}
            for old in [n for n in self.adapters if n not in busy][: max(0, len(self.adapters) - self.max_adapters)]:
                self._delete_adapter(old)
        return name

    def remove_adapter(self, model_id: str) -> bool:
        """Unload a fine-tune's adapter if resident; False if it was not.

        Raises:
            AdapterBusy: requests are using it.
        """
        name = adapter_name(model_id)
        with self.engine.model_lock:
            if name not in self.adapters:
                return False
            if name in self.engine.adapters_in_use():
                raise AdapterBusy(f"'{model_id}' is serving requests")
            self._delete_adapter(name)
        return True

    def _delete_adapter(self, name: str) -> None:
        model = self.engine.model
        del self.adapters[name]
        if self.adapters:
            model.delete_adapter(name)
        else:  # PEFT keeps at least one adapter: drop the wrapper and go back to the bare base
            self.engine.model = model.unload()

    def close(self) -> None:
        """Stop the engine thread; in-flight sequences end with ``abort``."""
        self.engine.shutdown()


def load_model(
    source: ModelSource,
    *,
    dtype: str = "auto",
    max_num_seqs: int = 64,
    max_model_len: int | None = None,
    on_finish: FinishObserver | None = None,
    gpu_indices: list[int] | None = None,
    max_adapters: int = 8,
) -> LoadedModel:
    """Load weights and tokenizer from ``source.path`` and start its batching engine.

    ``gpu_indices`` are the CUDA ordinals the placement chose: none → CPU, one → that GPU, several →
    layers spread over exactly those GPUs (accelerate's ``device_map="auto"`` limited by ``max_memory``).

    Raises:
        OSError / ValueError: the folder is not a loadable causal LM.
    """
    indices = gpu_indices or []
    device = torch.device(f"cuda:{indices[0]}") if indices else torch.device("cpu")
    torch_dtype = pick_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if len(indices) > 1:
        max_memory = {i: torch.cuda.get_device_properties(i).total_memory for i in indices}
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch_dtype, device_map="auto",
                                                     max_memory=max_memory).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch_dtype).to(device).eval()
    eos = _eos_token_ids(model.generation_config, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    engine = BatchEngine(model, eos, pad, max_num_seqs=max_num_seqs, on_finish=on_finish)
    log.info("loaded %s from %s (%s on %s)", source.model_id, source.path, torch_dtype, device)
    return LoadedModel(
        source=source,
        tokenizer=tokenizer,
        engine=engine,
        max_model_len=min(context, max_model_len or context),
        dtype=torch_dtype,
        device=device,
        created=int(time.time()),
        max_adapters=max_adapters,
    )


def _eos_token_ids(generation: GenerationConfig, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    configured = generation.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        ids.add(vocab["<|endoftext|>"])
    return ids
