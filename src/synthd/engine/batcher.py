"""Continuous batching on a Hugging Face causal LM, in one background thread.

Every iteration the thread admits waiting sequences (prefilled together, left-padded), merges
their KV cache into the running batch, then runs one decode step for all running sequences.
Finished or cancelled sequences leave the batch at once and their cache rows are dropped, so a new
request never waits for a whole batch to drain (Yu et al. 2022, "Orca: A Distributed Serving
System for Transformer-Based Generative Models", iteration-level scheduling).

The cache is made of ``GrowableLayer``s (see ``kv_cache``) of shape
``[batch, kv_heads, time, head_dim]``; rows are left-padded and masked with a 2-D attention mask
``[batch, time]``. Position ids are each row's own count of real tokens.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from synthd.engine.kv_cache import GrowableLayer, cache_kwargs, new_cache, stack_caches
from synthd.engine.sampling import sample_batch
from synthd.engine.sequence import (
    FINISH_ABORT,
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    Sequence,
    SequenceEvent,
)

log = logging.getLogger(__name__)

FinishObserver = Callable[[Sequence], None]


class BatchEngine:
    """Runs generation for one loaded model; thread-safe ``submit``, results through callbacks.

    Args:
        model: a causal LM in eval mode, on its device.
        eos_token_ids: token ids that end a sequence (unless its params say ``ignore_eos``).
        pad_token_id: id used for left padding (masked out, never attended).
        max_num_seqs: most sequences in the running batch (vLLM's ``--max-num-seqs``).
        on_finish: called in the engine thread once per sequence when it ends, for metrics.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        eos_token_ids: set[int],
        pad_token_id: int,
        max_num_seqs: int = 64,
        on_finish: FinishObserver | None = None,
    ) -> None:
        self.model = model
        self.eos_token_ids = frozenset(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.max_num_seqs = max_num_seqs
        self.on_finish = on_finish
        self.device = next(model.parameters()).device
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._cache: Cache | None = None
        self._mask: torch.Tensor | None = None
        self._last_tokens: torch.Tensor | None = None
        self._cond = threading.Condition()
        self.model_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="synthd-engine", daemon=True)
        self._thread.start()

    @property
    def num_waiting(self) -> int:
        """Sequences submitted but not yet in the batch."""
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        """Sequences in the running batch."""
        return len(self._running)

    def submit(self, sequence: Sequence) -> None:
        """Queue a sequence; its events arrive through ``sequence.emit`` from the engine thread.

        Raises:
            RuntimeError: the engine was shut down.
        """
        with self._cond:
            if self._closed:
                raise RuntimeError("engine is shut down")
            self._waiting.append(sequence)
            self._cond.notify()

    def shutdown(self) -> None:
        """Stop the thread; sequences still queued or running end with ``abort``."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._running:
                    self._cond.wait()
                if self._closed:
                    break
                admitted = []
                while self._waiting and len(self._running) + len(admitted) < self.max_num_seqs:
                    admitted.append(self._waiting.popleft())
            try:
                with self.model_lock, torch.inference_mode():
                    self._drop_cancelled()
                    live = [s for s in admitted if not self._finish_if_cancelled(s)]
                    if live:
                        self._prefill(live)
                    if self._running:
                        self._decode_step()
            except Exception as exc:  # a failed step must not kill the thread or leave a request waiting
                log.exception("engine step failed")
                for sequence in {*self._running, *admitted}:
                    if sequence.finish_reason is None:
                        self._finish(sequence, FINISH_ERROR, "", error=f"{type(exc).__name__}: {exc}")
                self._reset_batch()
        for sequence in [*self._running, *self._waiting]:
            self._finish(sequence, FINISH_ABORT, "")
        self._reset_batch()

    def _prefill(self, group: list[Sequence]) -> None:
        now = time.perf_counter()
        for sequence in group:
            sequence.scheduled_s = now
        width = max(len(s.prompt_ids) for s in group)
        ids = torch.full((len(group), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, sequence in enumerate(group):
            ids[row, width - len(sequence.prompt_ids):] = torch.tensor(sequence.prompt_ids)
            mask[row, width - len(sequence.prompt_ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = new_cache(self.model.config.num_hidden_layers)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            use_cache=True,
            logits_to_keep=1,
            **cache_kwargs(self.model, cache),
            **self._adapter_kwargs(group),
        )
        tokens = sample_batch(out.logits[:, -1].float().cpu(), [s.sampler for s in group])
        keep = [row for row, (s, t) in enumerate(zip(group, tokens)) if not self._accept(s, t)]
        if not keep:
            return
        if len(keep) < len(group):
            index = torch.tensor(keep, device=self.device)
            for layer in cache.layers:
                layer.select_rows(index)
        self._merge(
            [group[i] for i in keep], cache, mask[keep].to(self.device),
            torch.tensor([tokens[i] for i in keep], device=self.device),
        )

    def _decode_step(self) -> None:
        batch = len(self._running)
        assert self._mask is not None and self._last_tokens is not None
        self._mask = torch.cat([self._mask, torch.ones((batch, 1), dtype=torch.long, device=self.device)], dim=1)
        positions = (self._mask.sum(dim=1, keepdim=True) - 1)
        out = self.model(
            input_ids=self._last_tokens[:, None],
            attention_mask=self._mask,
            position_ids=positions,
            use_cache=True,
            **cache_kwargs(self.model, self._cache),
            **self._adapter_kwargs(self._running),
        )
        tokens = sample_batch(out.logits[:, -1].float().cpu(), [s.sampler for s in self._running])
        finished = [self._accept(s, t) for s, t in zip(self._running, tokens)]
        self._last_tokens = torch.tensor(tokens, device=self.device)
        if any(finished):
            self._keep_rows([row for row, done in enumerate(finished) if not done])

    def adapters_in_use(self) -> set[str]:
        """Adapter names of running or waiting sequences (call with ``model_lock`` held)."""
        with self._cond:
            return {s.adapter for s in [*self._running, *self._waiting] if s.adapter}

    def _adapter_kwargs(self, rows: list[Sequence]) -> dict:
        # PEFT's mixed-batch LoRA: one adapter name per row, "__base__" for the plain base model.
        if not hasattr(self.model, "peft_config"):
            return {}
        return {"adapter_names": [s.adapter or "__base__" for s in rows]}

    def _accept(self, sequence: Sequence, token: int) -> bool:
        """Record one sampled token; emit its text; return True when the sequence has ended."""
        if sequence.first_token_s is None:
            sequence.first_token_s = time.perf_counter()
        sequence.sampler.generated.append(token)
        params = sequence.sampler.params
        if token in self.eos_token_ids and not params.ignore_eos:
            self._finish(sequence, FINISH_STOP, sequence.assembler.flush())
            return True
        delta = sequence.assembler.add(token)
        if sequence.assembler.stopped:
            self._finish(sequence, FINISH_STOP, delta)
            return True
        if sequence.completion_tokens >= params.max_tokens:
            self._finish(sequence, FINISH_LENGTH, delta + sequence.assembler.flush())
            return True
        if delta:
            sequence.emit(SequenceEvent(delta, sequence.completion_tokens))
        return False

    def _finish(self, sequence: Sequence, reason: str, text: str, error: str | None = None) -> None:
        sequence.finish_reason = reason
        sequence.finished_s = time.perf_counter()
        sequence.emit(SequenceEvent(text, sequence.completion_tokens, reason, error))
        if self.on_finish is not None:
            self.on_finish(sequence)

    def _finish_if_cancelled(self, sequence: Sequence) -> bool:
        if sequence.cancelled:
            self._finish(sequence, FINISH_ABORT, "")
        return sequence.cancelled

    def _drop_cancelled(self) -> None:
        keep = [row for row, s in enumerate(self._running) if not self._finish_if_cancelled(s)]
        if len(keep) < len(self._running):
            self._keep_rows(keep)

    def _merge(self, group: list[Sequence], cache: Cache, mask: torch.Tensor, last: torch.Tensor) -> None:
        if not self._running:
            self._running, self._cache, self._mask, self._last_tokens = group, cache, mask, last
            return
        assert self._cache is not None and self._mask is not None and self._last_tokens is not None
        width = max(self._mask.shape[1], mask.shape[1])
        self._cache = stack_caches(self._cache, cache)
        self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)])
        self._last_tokens = torch.cat([self._last_tokens, last])
        self._running = self._running + group

    def _keep_rows(self, rows: list[int]) -> None:
        if not rows:
            self._reset_batch()
            return
        assert self._cache is not None and self._mask is not None and self._last_tokens is not None
        index = torch.tensor(rows, device=self.device)
        self._running = [self._running[i] for i in rows]
        self._mask = self._mask[index]
        self._last_tokens = self._last_tokens[index]
        unused = int((self._mask.sum(dim=0) == 0).long().cumprod(dim=0).sum())
        self._mask = self._mask[:, unused:]
        for layer in self._cache.layers:
            assert isinstance(layer, GrowableLayer)
            layer.select_rows(index)
            if unused:
                layer.drop_left(unused)

    def _reset_batch(self) -> None:
        self._running, self._cache, self._mask, self._last_tokens = [], None, None, None


def _left_pad(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad a ``[batch, time]`` attention mask on the left to ``width`` columns."""
    missing = width - mask.shape[1]
    return mask if missing == 0 else torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)
