"""The body of a replica actor: one engine on one node, serving the API process's ``RemoteEngine``.

Started by ``RayEngineFactory`` in bundle 0 of its placement group, asking Ray for no resources
itself (the group's bundles hold the GPUs). It is told the GPU ids of the group's bundles, makes
exactly those visible (``CUDA_VISIBLE_DEVICES``, set before anything initializes CUDA) and builds
the engine on them — their count is the engine's tensor-parallel size. Where CUDA is absent (a node
that declares GPUs it does not have, as in tests) the engine runs on the CPU and the ids stay what
the placement reports.

Every method is a coroutine, so the actor is an asyncio actor and ``generate`` a streaming
generator (``num_returns="streaming"``): cancelling the caller's stream cancels the method, which
closes the engine's iterator and so aborts the request. Domain errors come back as
``RemoteFailure`` values, never as exceptions.
"""

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from synthd.cluster.wire import AdapterFiles, RemoteFailure
from synthd.engine.config import EngineConfig
from synthd.engine.factory import create_engine
from synthd.engine.prompts import CHAT_ADD_SPECIAL_TOKENS, COMPLETION_ADD_SPECIAL_TOKENS
from synthd.engine.protocol import EngineStats, Guide, LoRARef, RequestOutput, SamplingParams

ADAPTER_CACHE = Path(tempfile.gettempdir()) / "synthd-adapters"
"""Where adapters shipped through the object store are written on a replica's node."""


@dataclass(frozen=True)
class ReplicaInfo:
    """What a loaded replica reports: Ray node id, GPU ids, pid, the engine's context and dtype,
    and whether it runs on CUDA."""

    node_id: str
    gpu_ids: tuple[int, ...]
    pid: int
    max_model_len: int
    dtype: str
    on_cuda: bool


def _wall_offset() -> float:
    """``time.time() - time.perf_counter()``: turns this process's perf-counter times into Unix time."""
    return time.time() - time.perf_counter()


class EngineReplica:
    """See the module docstring. Blocking in ``__init__`` (the load); Ray runs that before any call.

    Args:
        kind: engine kind (``native`` | ``vllm``). model_id, path: the model and its folder (readable
            on this node). config: engine settings. gpu_ids: the placement group's GPU ids on this
            node (empty: CPU). memory_bytes: the placement's memory, to size the KV budget.
    """

    def __init__(
        self, kind: str, model_id: str, path: str, config: EngineConfig, gpu_ids: list[int], memory_bytes: float
    ) -> None:
        import ray
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the bars would stream into the server's log through Ray
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
        on_cuda = bool(gpu_ids) and _cuda_available()
        self.engine = create_engine(
            kind, model_id, Path(path), config, list(range(len(gpu_ids))) if on_cuda else [], memory_bytes
        )
        self.info = ReplicaInfo(
            ray.get_runtime_context().get_node_id(),
            tuple(gpu_ids),
            os.getpid(),
            self.engine.max_model_len,
            self.engine.dtype,
            on_cuda,
        )

    async def describe(self) -> ReplicaInfo:
        """See ``ReplicaInfo``."""
        return self.info

    async def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        add_special_tokens: bool = CHAT_ADD_SPECIAL_TOKENS,
        chat_template: str | None = None,
    ) -> list[int] | RemoteFailure:
        """``Engine.render_chat``, or the failure."""
        return await self._call(self.engine.render_chat, messages, tools, add_special_tokens, chat_template)

    async def encode(
        self, text: str, add_special_tokens: bool = COMPLETION_ADD_SPECIAL_TOKENS
    ) -> list[int] | RemoteFailure:
        """``Engine.encode``, or the failure."""
        return await self._call(self.engine.encode, text, add_special_tokens)

    async def check_guide(self, guide: Guide) -> RemoteFailure | None:
        """``Engine.check_guide``: None when it compiles, else the failure."""
        return await self._call(self.engine.check_guide, guide)

    @staticmethod
    async def _call(function, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(function, *args)
        except Exception as exc:  # noqa: BLE001  sent back as data, raised again in the API process
            return RemoteFailure.of(exc)

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        lora: LoRARef | None,
        guide: Guide | None,
    ) -> AsyncIterator[RequestOutput | RemoteFailure]:
        """``Engine.generate``; ``scheduled_s`` goes out as Unix time. A failure is the last item."""
        offset = _wall_offset()
        try:
            async with aclosing(self.engine.generate(request_id, prompt_token_ids, params, lora, guide)) as outputs:
                async for output in outputs:
                    if output.scheduled_s is not None:
                        output = replace(output, scheduled_s=output.scheduled_s + offset)
                    yield output
        except Exception as exc:  # noqa: BLE001  this request's failure, sent as data
            yield RemoteFailure.of(exc)

    async def abort(self, request_id: str) -> None:
        """``Engine.abort``."""
        await self.engine.abort(request_id)

    async def stage_adapter(self, files: AdapterFiles) -> str:
        """Write an adapter shipped through the object store on this node; return its folder."""
        return str(await asyncio.to_thread(files.write, ADAPTER_CACHE))

    async def add_lora(self, lora: LoRARef) -> list[str] | RemoteFailure:
        """``Engine.add_lora``; the resident adapters after it, or the failure."""
        try:
            await self.engine.add_lora(lora)
        except Exception as exc:  # noqa: BLE001  sent back as data
            return RemoteFailure.of(exc)
        return self.engine.list_loras()

    async def remove_lora(self, name: str) -> tuple[bool, list[str]]:
        """``Engine.remove_lora`` and the resident adapters after it."""
        removed = await self.engine.remove_lora(name)
        return removed, self.engine.list_loras()

    async def snapshot(self) -> tuple[EngineStats, list[str]]:
        """The engine's stats and resident adapters."""
        return self.engine.stats(), self.engine.list_loras()

    async def shutdown(self) -> None:
        """``Engine.shutdown``."""
        await self.engine.shutdown()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
