"""One forward pass per engine step for a Hugging Face causal LM: inputs, KV cache, LoRA, logits.

A step is the scheduler's list of chunks (one decode token, or part or all of a prompt, per
sequence). The runner flattens them into one batch of single-token rows (see ``attention``): decode
rows first in slot order, then each prompt chunk; positions are each token's own position in its
sequence, so nothing is padded and a sequence joining the batch copies nothing (Yu et al. 2022,
"Orca", iteration-level scheduling; chunked prefill as in vLLM v1). Keys and values live in a
``SlotCache`` row per sequence. The LM head runs only on the rows whose next token is wanted (a
forward pre-hook selects them), not on every prompt token.

LoRA adapters are PEFT adapters on the shared base; a batch mixes them through PEFT's mixed-batch
forward (``adapter_names``, one per row, ``__base__`` for the plain base).
"""

import functools
import hashlib
from pathlib import Path

import torch
from transformers import PreTrainedModel

from synthd.engine.native.attention import ATTENTION_NAME, PrefillSpan, SlotCache, StepAttention
from synthd.engine.native.linear import can_prepack, packed_linear, prepack_linears
from synthd.engine.native.scheduler import ScheduledChunk

BASE_ADAPTER = "__base__"


def peft_adapter_name(lora_name: str) -> str:
    """A PEFT-safe adapter name for a fine-tune id (ids hold ':' and '.', which module keys cannot)."""
    return "ft_" + hashlib.sha1(lora_name.encode()).hexdigest()[:16]


def rows_are_batch_invariant(model: torch.nn.Module) -> bool:
    """True when every linear layer of ``model`` (LoRA adapters' included) gives each row the same
    bits whatever the number of rows, i.e. its GEMM kernel's reduction order does not depend on the
    batch. Checked per (shape, dtype, device, packed or not) on random data (see
    ``_gemm_rows_invariant``)."""
    shapes = {
        (m.in_features, m.out_features, m.weight.dtype, m.weight.device, hasattr(m, "packed_weight"))
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    }
    return all(_gemm_rows_invariant(*shape) for shape in shapes)


@functools.cache
def _gemm_rows_invariant(
    in_features: int,
    out_features: int,
    dtype: torch.dtype,
    device: torch.device,
    packed: bool,
    sizes: tuple[int, ...] = (*range(1, 33), 48, 64, 100, 128, 256, 512),
) -> bool:
    """On this project's CPU bf16 (oneDNN) passes and float32 (MKL) does not: its kernels for 1-3
    rows sum in another order than for more. Every row count up to 32 is tried (decode batches) and
    larger ones up to 512 (prompts), since a kernel may change its blocking at any size and CPUs
    differ in where."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn((out_features, in_features), generator=generator).to(dtype=dtype, device=device)
    rows = torch.randn((max(sizes), in_features), generator=generator).to(dtype=dtype, device=device)
    with torch.inference_mode():
        if packed:
            packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
            linear = lambda x: packed_linear(x, packed_weight, None, out_features)
        else:
            linear = lambda x: torch.nn.functional.linear(x, weight)
        reference = linear(rows)
        return all(torch.equal(linear(rows[:n]), reference[:n]) for n in sizes)


class ModelRunner:
    """Owns the model and the KV cache; used only from the engine thread.

    Args:
        model: a causal LM in eval mode whose attention layers take a registered attention function
            (Llama, Qwen2, Mistral and most decoder-only models in transformers).
        pad_token_id: kept for callers that need a harmless token id.
        batch_invariant: decode attention per sequence (see ``attention``).
    """

    def __init__(self, model: PreTrainedModel, pad_token_id: int, batch_invariant: bool = False) -> None:
        model.set_attn_implementation(ATTENTION_NAME)
        if can_prepack(model):
            prepack_linears(model)
        self.model = model
        self.pad_token_id = pad_token_id
        self.batch_invariant = batch_invariant
        self.device = next(model.parameters()).device
        config = model.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        self.cache = SlotCache(
            config.num_hidden_layers,
            getattr(config, "num_key_value_heads", None) or heads,
            head_dim,
            model.dtype,
            self.device,
        )
        self.adapters: set[str] = set()
        self._logit_rows: torch.Tensor | None = None
        model.get_output_embeddings().register_forward_pre_hook(self._select_logit_rows)

    def execute(
        self, chunks: list[ScheduledChunk], copies: tuple[tuple[int, int, int], ...] = (), slots: int = 0
    ) -> tuple[list[ScheduledChunk], torch.Tensor]:
        """Run one step: make the prefix-cache ``copies`` ``(from, to, tokens)``, compute ``chunks``
        (``slots``: cache rows the scheduler has handed out), return the chunks that sample and their
        next-token logits (``[len(those), vocab]``, the model's dtype, on its device)."""
        decode = sorted((c for c in chunks if c.num_tokens == 1), key=lambda c: c.sequence.slot)
        longer = [c for c in chunks if c.num_tokens > 1]
        order = decode + longer
        self.cache.ensure(
            max(slots, max(c.sequence.slot for c in order) + 1), max(c.start + c.num_tokens for c in order)
        )
        for source, target, tokens in copies:
            self.cache.copy(source, target, tokens)
        ids: list[int] = []
        positions: list[int] = []
        write_slots: list[int] = []
        sampled: list[ScheduledChunk] = []
        logit_rows: list[int] = []
        prefills: list[PrefillSpan] = []
        for chunk in order:
            first = len(ids)
            n = chunk.num_tokens
            ids.extend(chunk.token_ids)
            positions.extend(range(chunk.start, chunk.start + n))
            write_slots.extend([chunk.sequence.slot] * n)
            if chunk.sample:
                sampled.append(chunk)
                logit_rows.append(first + n - 1)
            if n > 1:
                end = chunk.start + n
                mask = None
                if chunk.start:
                    mask = (
                        torch.arange(end, device=self.device)[None, :]
                        <= torch.arange(chunk.start, end, device=self.device)[:, None]
                    )
                prefills.append(PrefillSpan(first, n, chunk.sequence.slot, end, mask))
        step = self._attention(decode, write_slots, positions, prefills)
        self._logit_rows = torch.tensor(logit_rows, dtype=torch.long, device=self.device)
        try:
            out = self.model(
                input_ids=torch.tensor(ids, device=self.device)[:, None],
                position_ids=step.write_positions[:, None],
                use_cache=False,
                synthd_step=step,
                **self._adapter_kwargs(order),
            )
        finally:
            self._logit_rows = None
        return sampled, out.logits[:, -1]

    def _attention(
        self, decode: list[ScheduledChunk], write_slots: list[int], positions: list[int], prefills: list[PrefillSpan]
    ) -> StepAttention:
        slots = [c.sequence.slot for c in decode]
        lengths = tuple(c.start + 1 for c in decode)
        mask = None
        if decode and not self.batch_invariant:
            mask = (
                torch.arange(max(lengths), device=self.device)[None, :]
                < torch.tensor(lengths, device=self.device)[:, None]
            )[:, None, None, :]
        return StepAttention(
            cache=self.cache,
            write_slots=torch.tensor(write_slots, device=self.device),
            write_positions=torch.tensor(positions, device=self.device),
            num_decode=len(decode),
            decode_slots=torch.tensor(slots, dtype=torch.long, device=self.device),
            decode_lengths=lengths,
            decode_mask=mask,
            decode_dense=slots == list(range(len(slots))),
            prefills=tuple(prefills),
            per_sequence=self.batch_invariant,
        )

    def _select_logit_rows(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        """LM-head pre-hook: keep only the rows whose logits are wanted."""
        if self._logit_rows is None:
            return None
        return (args[0][self._logit_rows], *args[1:])

    def reset(self) -> None:
        """Forget every cached key and value (after a failed step)."""
        self.cache = SlotCache(len(self.cache.keys), *self.cache.shape, self.cache.dtype, self.cache.device)

    # --- LoRA ------------------------------------------------------------------------------------
    def load_adapter(self, lora_name: str, path: Path) -> None:
        """Load a PEFT LoRA adapter under ``lora_name`` (the batch may keep running around it).

        Raises:
            Exception: whatever PEFT raises for an unloadable folder.
        """
        from peft import PeftModel

        name = peft_adapter_name(lora_name)
        with torch.inference_mode():  # always inference tensors, whether a step or a command loads it
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name).eval()
            if self.batch_invariant:  # PEFT upcasts bf16 adapters to float32, whose small-batch GEMMs differ
                self._cast_adapter(name, self.cache.dtype)
        self.adapters.add(lora_name)

    def _cast_adapter(self, name: str, dtype: torch.dtype) -> None:
        for module in self.model.modules():
            for attribute in ("lora_A", "lora_B"):
                layers = getattr(module, attribute, None)
                if isinstance(layers, torch.nn.ModuleDict) and name in layers:
                    layers[name].to(dtype)

    def delete_adapter(self, lora_name: str) -> None:
        """Unload an adapter (no running row may use it).

        Deleting PEFT's active adapter activates another, which sets ``requires_grad`` on its
        weights: outside inference mode that raises for inference tensors midway through the
        layers, leaving PEFT's state half changed (every later forward failed, base rows included).
        So it runs in inference mode, as loads do.

        Raises:
            Exception: whatever PEFT raises (then ``drop_adapters``: its state is suspect).
        """
        self.adapters.discard(lora_name)
        with torch.inference_mode():
            if self.adapters:
                self.model.delete_adapter(peft_adapter_name(lora_name))
            else:  # PEFT keeps at least one adapter: drop the wrapper and go back to the bare base
                self.model = self.model.unload()

    def drop_adapters(self) -> None:
        """Remove every adapter and go back to the bare base (after PEFT failed midway)."""
        from peft import PeftModel

        self.adapters.clear()
        if isinstance(self.model, PeftModel):
            self.model = self.model.unload()

    def _adapter_kwargs(self, chunks: list[ScheduledChunk]) -> dict:
        if not self.adapters:
            return {}
        names = []
        for chunk in chunks:
            lora = chunk.sequence.lora
            names.extend([peft_adapter_name(lora) if lora else BASE_ADAPTER] * chunk.num_tokens)
        return {"adapter_names": names}
