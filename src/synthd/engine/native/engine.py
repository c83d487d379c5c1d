"""synthd's own engine behind the ``Engine`` protocol: continuous batching in one engine thread.

The engine thread loops: take the scheduler's ``StepPlan`` (decode tokens and prompt chunks under a
per-step token budget), load any adapter a joining sequence needs, run the step as one forward pass,
sample the sequences whose next token is due, and hand each request its new token ids. Requests
live on the asyncio side: ``generate`` turns token ids into text with an ``OutputProcessor``
(DecodeStream, stop strings) and tells the engine to stop a sequence whose stop string appeared. A
request that fails alone (its adapter cannot load, its guide breaks) ends with a
``GenerationError``; the batch goes on. Only a failed forward pass fails every sequence in it.

LoRA residency is the engine's: adapters load on demand when a sequence that needs one joins, up to
``max_loras`` resident; beyond it the least recently used adapter that no sequence uses is unloaded.
The prefix cache keys an adapter's blocks by its load (name and a generation that is new whenever
the engine meets a name it has forgotten or a new folder under a known name), never by the name
alone: an adapter unloaded and another loaded under its name must not reuse the old one's keys and
values. When PEFT fails midway through changing its adapters (or a forward pass fails), every
adapter is dropped and the sequences running on one fail; the others go on, and adapters load again
on demand.

Batch-invariant mode (``batch_invariant``, as vLLM's ``VLLM_BATCH_INVARIANT`` and SGLang's
deterministic inference): a sequence's greedy output does not depend on what runs beside it. Linear
layers already compute each row alone (their GEMMs reduce over the hidden size only; the engine
checks at start that row results do not depend on the number of rows for the model's dtype, and
otherwise runs every sequence in a forward pass of its own); attention runs per sequence over
exactly its own length, prompts are never split across steps and the prefix cache is off.
"""

import asyncio
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from synthd.engine import prompts
from synthd.engine.guided import GuidedDecoding
from synthd.engine.native.model_runner import ModelRunner, rows_are_batch_invariant
from synthd.engine.native.output_processor import OutputProcessor
from synthd.engine.native.sampler import Sample, SamplerState, sample_batch
from synthd.engine.native.scheduler import DEFAULT_MAX_NUM_BATCHED_TOKENS, ScheduledChunk, Scheduler, Sequence
from synthd.engine.protocol import (
    EngineStats,
    GenerationError,
    Guide,
    LoRARef,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
)
from synthd.engine.token_bytes import TokenPieces
from synthd.errors import InvalidRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Step:
    """What the engine thread reports for one sequence after one step."""

    token_ids: tuple[int, ...] = ()
    samples: tuple[Sample, ...] = ()
    finish_reason: str | None = None
    error: str | None = None
    scheduled_s: float | None = None


@dataclass
class _Request:
    sequence: Sequence
    loop: asyncio.AbstractEventLoop
    queue: "asyncio.Queue[_Step]"


class NativeEngine(prompts.TokenizerPrompts):
    """Continuous batching on a Hugging Face causal LM (see the module docstring).

    Args:
        model_id: the id served. model, tokenizer: loaded, in eval mode, on their device.
        dtype: torch's name of the weights' dtype. max_model_len: context in tokens.
        eos_token_ids: ids that end a sequence (unless ``ignore_eos``).
        max_num_seqs: most sequences per batch. max_kv_tokens: KV budget in tokens (see
        ``Scheduler``). max_waiting: most waiting sequences. max_loras: resident adapters.
        max_num_batched_tokens: tokens per step (prompt chunks and decode tokens together).
        enable_prefix_caching: reuse the keys and values of cached prompt prefixes.
        batch_invariant: see the module docstring.
    """

    def __init__(
        self,
        model_id: str,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        dtype: str,
        max_model_len: int,
        eos_token_ids: set[int],
        max_num_seqs: int,
        max_kv_tokens: int,
        max_waiting: int,
        max_loras: int,
        max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
        enable_prefix_caching: bool = True,
        batch_invariant: bool = False,
    ) -> None:
        self.model_id = model_id
        self.tokenizer = tokenizer
        self._token_pieces = TokenPieces(tokenizer)
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.max_loras = max_loras
        self.batch_invariant = batch_invariant
        self._eos = frozenset(eos_token_ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_token_ids)
        self._runner = ModelRunner(model, pad, batch_invariant=batch_invariant)
        self._one_sequence_per_pass = batch_invariant and not rows_are_batch_invariant(model)
        if self._one_sequence_per_pass:
            log.info(
                "batch-invariant mode: %s GEMMs depend on the batch size here; one forward pass per sequence", dtype
            )
        self._scheduler = Scheduler(
            max_num_seqs,
            max_kv_tokens,
            max_waiting,
            max_num_batched_tokens,
            enable_prefix_caching=enable_prefix_caching,
            batch_invariant=batch_invariant,
        )
        self._guided = GuidedDecoding(tokenizer)
        self._requests: dict[str, _Request] = {}
        self._loras: dict[str, LoRARef] = {}
        self._lora_keys: dict[str, tuple[LoRARef, str]] = {}
        self._load_generations = itertools.count(1)
        self._resident: OrderedDict[str, None] = OrderedDict()
        self._retiring: set[str] = set()
        self._commands: deque[Callable[[], None]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"synthd-engine-{model_id}", daemon=True)
        self._thread.start()

    # --- prompts (render_chat, encode: prompts.TokenizerPrompts) ---------------------------------
    def check_guide(self, guide: Guide) -> None:
        """See ``Engine.check_guide``."""
        self._guided.compile(guide.json_schema)

    # --- generation ----------------------------------------------------------------------------
    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        lora: LoRARef | None = None,
        guide: Guide | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """See ``Engine.generate``.

        Raises:
            QueueFull: too many sequences wait. GuideError: the guide does not compile.
            GenerationError: this sequence failed in the engine.
        """
        matcher = self._guided.matcher(guide.json_schema) if guide is not None else None
        sequence = Sequence(
            request_id, list(prompt_token_ids), SamplerState(params, matcher), lora=lora.name if lora else None
        )
        queue: asyncio.Queue[_Step] = asyncio.Queue()
        with self._cond:
            if self._closed:
                raise GenerationError("The engine is shutting down.")
            if request_id in self._requests:
                raise InvalidRequest(f"request id '{request_id}' is already running")
            if lora is not None:
                sequence.lora_key = self._lora_key(lora)
                self._commands.append(lambda: self._remember_lora(lora))
            self._scheduler.add(sequence)
            self._requests[request_id] = _Request(sequence, asyncio.get_running_loop(), queue)
            self._cond.notify()
        processor = OutputProcessor(self.tokenizer, params.stop)
        finished = False
        try:
            while True:
                step = await queue.get()
                if step.error is not None:
                    finished = True
                    raise GenerationError(f"Generation failed: {step.error}")
                text = processor.add(step.token_ids)
                finish = step.finish_reason
                if processor.stopped and finish is None:
                    finish = "stop"
                    self._abort_now(request_id)
                elif finish is not None:
                    text += processor.flush()
                finished = finish is not None
                yield RequestOutput(
                    request_id=request_id,
                    text=text,
                    token_ids=step.token_ids,
                    prompt_tokens=len(sequence.prompt_ids),
                    completion_tokens=sequence.completion_tokens,
                    finish_reason=finish,
                    logprobs=self._logprobs(step.samples) if params.logprobs is not None else (),
                    scheduled_s=step.scheduled_s,
                )
                if finished:
                    return
        finally:
            if not finished:
                self._abort_now(request_id)
            with self._cond:
                self._requests.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        """See ``Engine.abort``."""
        self._abort_now(request_id)

    def _abort_now(self, request_id: str) -> None:
        with self._cond:
            request = self._requests.get(request_id)
            if request is not None:
                request.sequence.aborted = True
                self._cond.notify()

    # --- LoRA ------------------------------------------------------------------------------------
    async def add_lora(self, lora: LoRARef) -> None:
        """See ``Engine.add_lora``."""
        await self._run_command(lambda: self._ensure_lora(lora.name, self._remember_lora(lora)))

    async def remove_lora(self, name: str) -> bool:
        """See ``Engine.remove_lora``: unloads now if idle, else once its last sequence ends."""
        return await self._run_command(lambda: self._retire_lora(name))

    def list_loras(self) -> list[str]:
        """See ``Engine.list_loras``."""
        with self._cond:
            return list(self._resident)

    async def _run_command(self, command: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()

        def run() -> None:
            try:
                result = command()
            except Exception as exc:  # noqa: BLE001 -- reported to the caller, not to the engine loop
                loop.call_soon_threadsafe(_settle, done, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, result, None)

        with self._cond:
            if self._closed:
                raise GenerationError("The engine is shutting down.")
            self._commands.append(run)
            self._cond.notify()
        return await done

    def _remember_lora(self, lora: LoRARef) -> LoRARef:
        with self._cond:
            self._retiring.discard(lora.name)
            self._loras[lora.name] = lora
        return lora

    def _lora_key(self, lora: LoRARef) -> str:
        """The prefix-cache key of ``lora``'s blocks (under the lock): kept while the engine knows
        this adapter, new for a name it forgot (retired) or a known name with another folder."""
        known = self._lora_keys.get(lora.name)
        if known is None or known[0] != lora:
            known = (lora, f"{lora.name}\0{next(self._load_generations)}")
            self._lora_keys[lora.name] = known
        return known[1]

    def _forget_lora(self, name: str) -> None:
        """Forget a retired adapter and its prefix-cache key (under the lock)."""
        self._loras.pop(name, None)
        self._lora_keys.pop(name, None)

    def _ensure_lora(self, name: str, lora: LoRARef | None = None) -> None:
        """Make an adapter resident (engine thread; the slow PEFT load runs outside the lock).
        Raises what PEFT raises."""
        with self._cond:
            if name in self._resident:
                self._resident.move_to_end(name)
                return
            ref = lora or self._loras[name]
        self._runner.load_adapter(name, ref.path)
        if self.batch_invariant and not self._one_sequence_per_pass:
            self._one_sequence_per_pass = not rows_are_batch_invariant(self._runner.model)
        with self._cond:
            self._loras[name] = ref
            self._resident[name] = None
            in_use = self._loras_in_use()
            idle = [n for n in self._resident if n not in in_use and n != name]
            evict = idle[: max(0, len(self._resident) - self.max_loras)]
        for old in evict:
            self._unload_lora(old)
        if name not in self._resident:
            raise RuntimeError("PEFT failed while unloading another adapter; every adapter was dropped")

    def _retire_lora(self, name: str) -> bool:
        with self._cond:
            if name not in self._loras:
                return False
            if name in self._loras_in_use():
                self._retiring.add(name)
                return True
            self._forget_lora(name)
        self._unload_lora(name)
        return True

    def _unload_lora(self, name: str) -> None:
        with self._cond:
            self._retiring.discard(name)
            resident = name in self._resident
            self._resident.pop(name, None)
        if resident:
            try:
                self._runner.delete_adapter(name)
            except Exception as exc:  # PEFT's state is suspect: repaired, never left half done
                log.exception("unloading adapter %s failed", name)
                self._drop_adapters(f"adapter '{name}' failed to unload: {type(exc).__name__}: {exc}")

    def _drop_adapters(self, reason: str) -> None:
        """Back to the bare base (PEFT's adapter state is suspect): the running sequences on an
        adapter fail with ``reason`` (their rows would run without it); the others go on and
        adapters load again on demand."""
        self._runner.drop_adapters()
        with self._cond:
            self._resident.clear()
            victims = [s for s in self._scheduler.running if s.lora]
        for sequence in victims:
            self._leave(sequence)
        self._deliver({s.request_id: _Step(error=reason, scheduled_s=s.scheduled_s) for s in victims})

    def _loras_in_use(self) -> set[str]:
        with self._cond:
            return {s.lora for s in [*self._scheduler.running, *self._scheduler.waiting] if s.lora}

    # --- stats and shutdown ----------------------------------------------------------------------
    def stats(self) -> EngineStats:
        """See ``Engine.stats``."""
        with self._cond:
            return EngineStats(
                running=len(self._scheduler.running),
                waiting=len(self._scheduler.waiting),
                kv_cache_usage=self._scheduler.kv_cache_usage,
                prefix_cache_queries=self._scheduler.prefix_cache_queries,
                prefix_cache_hits=self._scheduler.prefix_cache_hits,
            )

    async def shutdown(self) -> None:
        """See ``Engine.shutdown``."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join, 30)

    # --- the engine thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._closed and not self._commands and not self._scheduler.has_work:
                    self._cond.wait()
                if self._closed:
                    break
                commands = list(self._commands)
                self._commands.clear()
                plan = self._scheduler.schedule()
                slots = self._scheduler.kv.num_slots
            for command in commands:
                command()
            outputs: dict[str, _Step] = {s.request_id: _Step(finish_reason="abort") for s in plan.aborted}
            try:
                with torch.inference_mode():
                    self._step(list(plan.chunks), plan.joined, plan.copies, slots, outputs)
            except Exception as exc:  # a failed forward pass fails its batch, never the thread
                log.exception("engine step failed")
                with self._cond:
                    batch = list(self._scheduler.running)
                for sequence in batch:
                    outputs[sequence.request_id] = _Step(error=f"{type(exc).__name__}: {exc}")
                    self._leave(sequence)
                with self._cond:
                    self._scheduler.reset_cache()
                self._runner.reset()
                self._drop_adapters("the engine step failed")
            with self._cond:
                idle = [n for n in self._retiring if n not in self._loras_in_use()]
                for name in idle:
                    self._forget_lora(name)
            for name in idle:
                self._unload_lora(name)
            self._deliver(outputs)
        with self._cond:
            remaining = self._scheduler.drain()
        self._deliver({s.request_id: _Step(finish_reason="abort") for s in remaining})

    def _step(
        self,
        chunks: list[ScheduledChunk],
        joined: tuple[Sequence, ...],
        copies: tuple[tuple[int, int, int], ...],
        slots: int,
        outputs: dict[str, _Step],
    ) -> None:
        now = time.perf_counter()
        failed: set[Sequence] = set()
        for sequence in joined:
            sequence.scheduled_s = now
            try:
                if sequence.lora is not None:
                    self._ensure_lora(sequence.lora)
            except Exception as exc:  # noqa: BLE001 -- this adapter fails its own request only
                log.warning("adapter %s failed to load: %s", sequence.lora, exc)
                outputs[sequence.request_id] = _Step(
                    error=f"adapter '{sequence.lora}' failed to load: {exc}", scheduled_s=now
                )
                failed.add(sequence)
                self._leave(sequence)
        with self._cond:
            running = set(self._scheduler.running)
        chunks = [c for c in chunks if c.sequence not in failed and c.sequence in running]
        if not chunks:
            return
        passes = [[c] for c in chunks] if self._one_sequence_per_pass else [chunks]
        for group in passes:
            sampled, logits = self._runner.execute(group, copies, slots)
            copies = ()
            self._accept(sampled, sample_batch(logits, [c.sequence.sampler for c in sampled]), outputs)
        with self._cond:
            for chunk in chunks:
                self._scheduler.commit(chunk.sequence)

    def _accept(self, chunks: list[ScheduledChunk], samples: list[Sample], outputs: dict[str, _Step]) -> None:
        """Record each sampled sequence's token and decide which sequences end."""
        for chunk, sample in zip(chunks, samples):
            sequence = chunk.sequence
            if sample.token is None:
                outputs[sequence.request_id] = _Step(error=sample.error, scheduled_s=sequence.scheduled_s)
                self._leave(sequence)
                continue
            params = sequence.sampler.params
            finish = None
            if sample.token in self._eos and not params.ignore_eos:
                finish = "stop"
            elif (
                sequence.completion_tokens >= params.max_tokens
                or len(sequence.prompt_ids) + sequence.completion_tokens >= self.max_model_len
            ):
                finish = "length"
            outputs[sequence.request_id] = _Step((sample.token,), (sample,), finish, scheduled_s=sequence.scheduled_s)
            if finish is not None:
                self._leave(sequence)

    def _leave(self, sequence: Sequence) -> None:
        with self._cond:
            self._scheduler.finish(sequence)

    def _deliver(self, outputs: dict[str, _Step]) -> None:
        with self._cond:
            targets = [(self._requests.get(rid), step) for rid, step in outputs.items()]
        for loop, group in itertools.groupby(
            sorted(((r.loop, r.queue, s) for r, s in targets if r is not None), key=lambda t: id(t[0])),
            key=lambda t: t[0],
        ):
            items = [(queue, step) for _, queue, step in group]
            if not loop.is_closed():
                loop.call_soon_threadsafe(_put_all, items)

    def _logprobs(self, samples: tuple[Sample, ...]) -> tuple[TokenLogprob, ...]:
        entry = self._token_pieces
        result = []
        for sample in samples:
            if sample.token is None or sample.logprob is None:
                continue
            text, raw = entry(sample.token)
            top = tuple((t, lp, b) for t, b, lp in ((*entry(i), lp) for i, lp in sample.top))
            result.append(TokenLogprob(text, sample.logprob, raw, top))
        return tuple(result)


def _put_all(items: list[tuple[asyncio.Queue, _Step]]) -> None:
    for queue, step in items:
        queue.put_nowait(step)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
