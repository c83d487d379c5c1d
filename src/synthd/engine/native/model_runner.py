"""Forward passes for the running batch of a Hugging Face causal LM: inputs, masks, KV cache, LoRA.

The batch's cache is made of ``GrowableLayer``s (see ``kv_cache``) of shape
``[batch, kv_heads, time, head_dim]``; rows are left-padded and masked with a 2-D attention mask
``[batch, time]``; position ids are each row's own count of real tokens. Joining sequences are
prefilled together (left-padded) and their cache rows stacked under the running ones; finished rows
are dropped at once (Yu et al. 2022, "Orca", iteration-level scheduling).

LoRA adapters are PEFT adapters on the shared base; a batch mixes them through PEFT's mixed-batch
forward (``adapter_names``, one per row, ``__base__`` for the plain base).
"""

import hashlib
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from synthd.engine.native.kv_cache import GrowableLayer, cache_kwargs, new_cache, stack_caches
from synthd.engine.native.scheduler import Sequence

BASE_ADAPTER = "__base__"


def peft_adapter_name(lora_name: str) -> str:
    """A PEFT-safe adapter name for a fine-tune id (ids hold ':' and '.', which module keys cannot)."""
    return "ft_" + hashlib.sha1(lora_name.encode()).hexdigest()[:16]


class ModelRunner:
    """Owns the model and the running batch's KV cache; used only from the engine thread.

    ``rows`` are the running sequences in cache-row order; each has a pending last token (set by
    ``advance``) that the next ``decode`` feeds.
    """

    def __init__(self, model: PreTrainedModel, pad_token_id: int) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.device = next(model.parameters()).device
        self.rows: list[Sequence] = []
        self._last: list[int] = []
        self._cache: Cache | None = None
        self._mask: torch.Tensor | None = None
        self.adapters: set[str] = set()

    def prefill(self, group: list[Sequence]) -> torch.Tensor:
        """Run ``group``'s prompts, add them to the batch, return their next-token logits
        (``[len(group), vocab]``, float32, CPU). Call ``advance`` with their tokens next."""
        width = max(len(s.prompt_ids) for s in group)
        ids = torch.full((len(group), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, sequence in enumerate(group):
            ids[row, width - len(sequence.prompt_ids):] = torch.tensor(sequence.prompt_ids)
            mask[row, width - len(sequence.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = new_cache(self.model.config.num_hidden_layers)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), use_cache=True, logits_to_keep=1,
                         **cache_kwargs(self.model, cache),
                         **self._adapter_kwargs(group))
        self._merge(group, cache, mask.to(self.device))
        return out.logits[:, -1].float().cpu()

    def decode(self) -> torch.Tensor:
        """One decode step for every row; their next-token logits (``[rows, vocab]``, float32, CPU)."""
        assert self._mask is not None and self._cache is not None
        batch = len(self.rows)
        self._mask = torch.cat([self._mask, torch.ones((batch, 1), dtype=torch.long, device=self.device)], dim=1)
        positions = self._mask.sum(dim=1, keepdim=True) - 1
        out = self.model(input_ids=torch.tensor(self._last, device=self.device)[:, None], attention_mask=self._mask,
                         position_ids=positions, use_cache=True, **cache_kwargs(self.model, self._cache),
                         **self._adapter_kwargs(self.rows))
        return out.logits[:, -1].float().cpu()

    def advance(self, tokens: list[int], start: int = 0) -> None:
        """Set the pending tokens of rows ``start …`` (the last ``len(tokens)`` rows after a prefill)."""
        self._last[start:start + len(tokens)] = tokens

    def remove(self, leaving: set[Sequence]) -> None:
        """Drop the rows of ``leaving`` from the batch (and the cache columns no row needs any more)."""
        keep = [row for row, s in enumerate(self.rows) if s not in leaving]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.reset()
            return
        assert self._cache is not None and self._mask is not None
        index = torch.tensor(keep, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        self._last = [self._last[i] for i in keep]
        self._mask = self._mask[index]
        unused = int((self._mask.sum(dim=0) == 0).long().cumprod(dim=0).sum())
        self._mask = self._mask[:, unused:]
        for layer in self._cache.layers:
            assert isinstance(layer, GrowableLayer)
            layer.select_rows(index)
            if unused:
                layer.drop_left(unused)

    def reset(self) -> None:
        """Forget the whole batch."""
        self.rows, self._last, self._cache, self._mask = [], [], None, None

    # --- LoRA ------------------------------------------------------------------------------------
    def load_adapter(self, lora_name: str, path: Path) -> None:
        """Load a PEFT LoRA adapter under ``lora_name`` (the batch may keep running around it).

        Raises:
            Exception: whatever PEFT raises for an unloadable folder.
        """
        from peft import PeftModel

        name = peft_adapter_name(lora_name)
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name).eval()
        self.adapters.add(lora_name)

    def delete_adapter(self, lora_name: str) -> None:
        """Unload an adapter (no running row may use it)."""
        self.adapters.discard(lora_name)
        if self.adapters:
            self.model.delete_adapter(peft_adapter_name(lora_name))
        else:  # PEFT keeps at least one adapter: drop the wrapper and go back to the bare base
            self.model = self.model.unload()

    def _adapter_kwargs(self, rows: list[Sequence]) -> dict:
        if not self.adapters:
            return {}
        return {"adapter_names": [peft_adapter_name(s.lora) if s.lora else BASE_ADAPTER for s in rows]}

    def _merge(self, group: list[Sequence], cache: Cache, mask: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self._last, self._cache, self._mask = list(group), [self.pad_token_id] * len(group), cache, mask
            return
        assert self._cache is not None and self._mask is not None
        width = max(self._mask.shape[1], mask.shape[1])
        self._cache = stack_caches(self._cache, cache)
        self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)])
        self.rows += group
        self._last += [self.pad_token_id] * len(group)


def _left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad a ``[batch, time]`` attention mask on the left to ``width`` columns."""
    missing = width - mask.shape[1]
    return mask if missing == 0 else torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)
