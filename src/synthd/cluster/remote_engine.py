"""Replicas on a Ray cluster behind the ``Engine`` protocol, so the model pool and the serving code
work unchanged.

``RayEngineFactory`` (the pool's ``EngineFactory`` on a cluster) turns a placement into a replica:
a placement group of one ``{"GPU": 1}`` bundle per device (plus a sliver of the node's
``accelerator_type:<TYPE>`` resource), ``STRICT_PACK`` on the chosen node (a label selector on
``ray.io/node-id``), so Ray itself keeps serving and training off each other's GPUs; a probe task
per bundle reads the GPU id Ray holds for it; then an ``EngineReplica`` actor in bundle 0 loads
the model on exactly those GPUs. A ``cpu`` placement needs no group: the actor is pinned to the
node (``NodeAffinitySchedulingStrategy``) and asks for no resources.

``RemoteEngine`` is the API process's side. Prompt rendering, tokenizing and guide checks run in
the replica (so both engines behave as they do in-process); the tokenizer is also loaded here for
what the serving code reads from it. ``generate`` streams outputs through a Ray streaming
generator; closing it early cancels the actor's generator, which aborts the request. Adapters of
``ft:`` models reach the replica through a path every node reads (under ``SYNTHD_SHARED_DIR``) or
else through Ray's object store: the folder's files are sent once per replica and written on its
node (``synthd.cluster.wire.AdapterFiles``).

A replica whose actor died (killed, crashed, its node lost) fails the requests on it with
``ReplicaLost`` (503, retry) and is reported to ``on_lost`` so the pool drops it.
"""

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from synthd.cluster.replica import EngineReplica, ReplicaInfo
from synthd.cluster.runtime import RayCluster
from synthd.cluster.wire import AdapterFiles, RemoteFailure
from synthd.engine.config import EngineConfig
from synthd.engine.prompts import CHAT_ADD_SPECIAL_TOKENS, COMPLETION_ADD_SPECIAL_TOKENS
from synthd.engine.protocol import EngineStats, GenerationError, Guide, LoRARef, RequestOutput, SamplingParams
from synthd.errors import Overloaded
from synthd.gpus.inventory import GIB, Device
from synthd.gpus.selection import GPUBusy, Placement

log = logging.getLogger(__name__)
NODE_ID_LABEL = "ray.io/node-id"
ACCELERATOR_SLIVER = 0.001
"""Share of a node's ``accelerator_type:<TYPE>`` resource each bundle takes (what Ray's own
``accelerator_type=`` option asks for): it pins the bundle to that GPU type without limiting count."""
CALL_TIMEOUT_S = 120.0
"""Longest wait for a blocking call to a replica (rendering, tokenizing, a guide compile)."""
SHUTDOWN_TIMEOUT_S = 30.0
SNAPSHOT_TIMEOUT_S = 10.0
LOST_RETRY_AFTER_S = 1


class ReplicaLost(Overloaded):
    """The replica serving the request died (killed, crashed, or its node left the cluster); a retry
    is served by a new replica."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after_s=LOST_RETRY_AFTER_S, code="replica_lost")


LostCallback = Callable[["RemoteEngine", str], None]


class RemoteEngine:
    """The ``Engine`` protocol over one ``EngineReplica`` actor (see the module docstring).

    Args:
        actor: the replica actor. group: its placement group (None on a CPU node).
        info: what the loaded replica reported. model_id: the id served. tokenizer: the model's.
        placement: where it runs (node name and real GPU ids). shared_dir: a folder every node
        reads (adapters under it are passed by path). on_lost: told when the actor is found dead.
    """

    def __init__(
        self,
        actor: Any,
        group: PlacementGroup | None,
        info: ReplicaInfo,
        model_id: str,
        tokenizer: PreTrainedTokenizerBase,
        placement: Placement,
        shared_dir: Path | None,
        on_lost: LostCallback | None,
    ) -> None:
        self.model_id = model_id
        self.tokenizer = tokenizer
        self.max_model_len = info.max_model_len
        self.dtype = info.dtype
        self.info = info
        self.placement = placement
        self.alive = True
        self.lost_reason: str | None = None
        self._actor = actor
        self._group = group
        self._shared_dir = shared_dir
        self._on_lost = on_lost
        self._stats = EngineStats()
        self._loras: list[str] = []
        self._staged: dict[str, tuple[Path, Path]] = {}

    @property
    def node_id(self) -> str:
        """Ray node id of the replica."""
        return self.info.node_id

    # --- prompts (blocking: the serving code calls these in a worker thread) ---------------------
    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_special_tokens: bool = CHAT_ADD_SPECIAL_TOKENS,
        chat_template: str | None = None,
    ) -> list[int]:
        """See ``Engine.render_chat`` (rendered by the replica's engine)."""
        return self._call(self._actor.render_chat.remote(messages, tools, add_special_tokens, chat_template))

    def encode(self, text: str, add_special_tokens: bool = COMPLETION_ADD_SPECIAL_TOKENS) -> list[int]:
        """See ``Engine.encode`` (tokenized by the replica's engine)."""
        return self._call(self._actor.encode.remote(text, add_special_tokens))

    def check_guide(self, guide: Guide) -> None:
        """See ``Engine.check_guide`` (compiled and cached by the replica's engine)."""
        self._call(self._actor.check_guide.remote(guide))

    def _call(self, ref: ray.ObjectRef) -> Any:
        try:
            result = ray.get(ref, timeout=CALL_TIMEOUT_S)
        except RayActorError as exc:
            self._mark_lost(exc)
            raise self._lost_error() from None
        except GetTimeoutError:
            raise Overloaded(
                f"The replica of {self.model_id} on {self.placement.where} did not answer within "
                f"{CALL_TIMEOUT_S:.0f}s.",
                retry_after_s=LOST_RETRY_AFTER_S,
            ) from None
        if isinstance(result, RemoteFailure):
            raise result.error()
        return result

    # --- generation ---------------------------------------------------------------------------
    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        lora: LoRARef | None = None,
        guide: Guide | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """See ``Engine.generate``; closing the iterator early cancels the replica's stream (abort).

        Raises:
            ReplicaLost: the replica died before or during the request.
            GenerationError, InvalidRequest, TooManyRequests: as the replica's engine raised them.
        """
        if not self.alive:
            raise self._lost_error()
        remote_lora = await self._stage(lora) if lora is not None else None
        stream = self._actor.generate.options(num_returns="streaming").remote(
            request_id, prompt_token_ids, params, remote_lora, guide
        )
        offset = time.time() - time.perf_counter()
        finished = False
        try:
            async for ref in stream:
                item = await ref
                if isinstance(item, RemoteFailure):
                    finished = True
                    raise item.error()
                if item.scheduled_s is not None:
                    item = replace(item, scheduled_s=item.scheduled_s - offset)
                finished = item.finish_reason is not None
                yield item
                if finished:
                    return
        except RayActorError as exc:
            finished = True
            self._mark_lost(exc)
            raise self._lost_error() from None
        except RayError as exc:  # the stream itself broke (object lost, owner gone)
            finished = True
            raise GenerationError(f"Generation failed on {self.placement.where}: {type(exc).__name__}") from None
        finally:
            if not finished:
                ray.cancel(stream)

    async def abort(self, request_id: str) -> None:
        """See ``Engine.abort``."""
        try:
            await self._actor.abort.remote(request_id)
        except RayActorError as exc:
            self._mark_lost(exc)

    # --- adapters -------------------------------------------------------------------------------
    async def _stage(self, lora: LoRARef) -> LoRARef:
        """The adapter as the replica can read it: its own path under the shared folder, else a
        copy sent through the object store (once per replica and folder)."""
        if self._shared_dir is not None and lora.path.resolve().is_relative_to(self._shared_dir.resolve()):
            return lora
        staged = self._staged.get(lora.name)
        if staged is None or staged[0] != lora.path:
            try:
                files = await asyncio.to_thread(AdapterFiles.read, lora.name, lora.path)
            except OSError as exc:
                raise GenerationError(f"adapter '{lora.name}' cannot be read: {exc}") from None
            try:
                remote = Path(await self._actor.stage_adapter.remote(files))
            except RayActorError as exc:
                self._mark_lost(exc)
                raise self._lost_error() from None
            staged = self._staged[lora.name] = (lora.path, remote)
        return LoRARef(lora.name, staged[1])

    async def add_lora(self, lora: LoRARef) -> None:
        """See ``Engine.add_lora``."""
        staged = await self._stage(lora)
        try:
            result = await self._actor.add_lora.remote(staged)
        except RayActorError as exc:
            self._mark_lost(exc)
            raise self._lost_error() from None
        if isinstance(result, RemoteFailure):
            raise result.error()
        self._loras = result

    async def remove_lora(self, name: str) -> bool:
        """See ``Engine.remove_lora``."""
        self._staged.pop(name, None)
        try:
            removed, self._loras = await self._actor.remove_lora.remote(name)
        except RayActorError as exc:
            self._mark_lost(exc)
            return False
        return removed

    def list_loras(self) -> list[str]:
        """See ``Engine.list_loras`` (as of the last call or ``refresh``)."""
        return list(self._loras)

    # --- stats, health, shutdown ----------------------------------------------------------------
    def stats(self) -> EngineStats:
        """See ``Engine.stats`` (as of the last ``refresh``)."""
        return self._stats

    async def refresh(self) -> None:
        """Fetch the replica's stats and resident adapters; a dead actor is reported lost."""
        try:
            self._stats, self._loras = await asyncio.wait_for(
                asyncio.wrap_future(self._actor.snapshot.remote().future()), SNAPSHOT_TIMEOUT_S
            )
        except RayActorError as exc:
            self._mark_lost(exc)
        except TimeoutError:
            log.warning(
                "replica of %s on %s did not report its stats in %.0fs",
                self.model_id,
                self.placement.where,
                SNAPSHOT_TIMEOUT_S,
            )

    def _mark_lost(self, exc: BaseException | str) -> None:
        if not self.alive:
            return
        self.alive = False
        self.lost_reason = exc if isinstance(exc, str) else _first_line(exc)
        if self._on_lost is not None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return  # off the event loop: the cluster watcher reports it
            self._on_lost(self, self.lost_reason)

    def _lost_error(self) -> ReplicaLost:
        return ReplicaLost(
            f"The replica of {self.model_id} on {self.placement.where} was lost "
            f"({self.lost_reason or 'its actor died'}); retry: a new replica serves the next request."
        )

    async def shutdown(self) -> None:
        """See ``Engine.shutdown``: stop the engine, end the actor and free its placement group."""
        if self.alive:
            self.alive = False
            try:
                await asyncio.wait_for(asyncio.wrap_future(self._actor.shutdown.remote().future()), SHUTDOWN_TIMEOUT_S)
            except (RayError, TimeoutError):
                pass
        ray.kill(self._actor, no_restart=True)
        if self._group is not None:
            remove_placement_group(self._group)
            self._group = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _error_line(exc: BaseException) -> str:
    """The last meaningful line of a Ray error (the original exception of a failed actor start)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    return (causes or lines or [type(exc).__name__])[-1]


@ray.remote(num_cpus=0)
def _bundle_gpu_ids() -> list[int]:
    """The GPU ids Ray hands the task (run in one bundle of a group to learn that bundle's GPU)."""
    return [int(i) for i in ray.get_gpu_ids()]


@dataclass
class RayEngineFactory:
    """The pool's ``EngineFactory`` on a Ray cluster (see the module docstring).

    Attributes:
        cluster: the connected cluster. kind, config: the engine to build in each replica.
        shared_dir: a folder every node can read (adapters under it are passed by path).
        on_lost: told when a replica is found dead (the app sets it to ``ModelPool.lost``).
        group_timeout_s: longest wait for a placement group's GPUs before the start is refused.
    """

    cluster: RayCluster
    kind: str = "native"
    config: EngineConfig = field(default_factory=EngineConfig)
    shared_dir: Path | None = None
    on_lost: LostCallback | None = None
    group_timeout_s: float = 60.0

    def __call__(self, model_id: str, path: Path, placement: Placement) -> tuple[RemoteEngine, Placement]:
        """See ``EngineFactory``.

        Raises:
            GPUBusy: the node's GPUs were not free within ``group_timeout_s`` (held outside synthd).
            RuntimeError: the node left the cluster, or the replica failed to load (the reason given).
        """
        node = self.cluster.node(placement.node)
        gpus = placement.gpus
        group = self._reserve(node.node_id, node.ray_accelerator, len(gpus), placement) if gpus else None
        try:
            gpu_ids = sorted(self._gpu_ids(group, len(gpus))) if group is not None else []
            if group is not None:
                strategy: Any = PlacementGroupSchedulingStrategy(
                    group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
                )
            else:
                strategy = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
            name = f"synthd-replica-{_slug(model_id)}-{_slug(placement.label)}-{node.name}-{uuid.uuid4().hex[:6]}"
            actor = (
                ray.remote(EngineReplica)
                .options(
                    name=name,
                    num_cpus=0,
                    num_gpus=0,
                    max_restarts=0,
                    scheduling_strategy=strategy,
                )
                .remote(self.kind, model_id, str(path), self.config, gpu_ids, placement.offered_gib * GIB)
            )
            try:
                info: ReplicaInfo = ray.get(actor.describe.remote())
            except RayActorError as exc:
                raise RuntimeError(f"the replica on {node.name} failed to start: {_error_line(exc)}") from None
        except BaseException:
            if group is not None:
                remove_placement_group(group)
            raise
        real = (
            Placement(placement.option, tuple(Device(d.gpu, gpu_id, d.node) for d, gpu_id in zip(gpus, gpu_ids)))
            if gpus
            else placement
        )
        log.info(
            "replica %s of %s on %s (pid %d, %s, %s)",
            name,
            model_id,
            real.where,
            info.pid,
            info.dtype,
            "cuda" if info.on_cuda else "cpu",
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
        return RemoteEngine(actor, group, info, model_id, tokenizer, real, self.shared_dir, self.on_lost), real

    def _reserve(self, node_id: str, accelerator: str | None, count: int, placement: Placement) -> PlacementGroup:
        bundle = {"GPU": 1.0, **({f"accelerator_type:{accelerator}": ACCELERATOR_SLIVER} if accelerator else {})}
        group = placement_group(
            [dict(bundle) for _ in range(count)],
            strategy="STRICT_PACK",
            bundle_label_selector=[{NODE_ID_LABEL: node_id} for _ in range(count)],
        )
        try:
            ray.get(group.ready(), timeout=self.group_timeout_s)
        except GetTimeoutError:
            remove_placement_group(group)
            raise GPUBusy(
                f"{placement.label} on {placement.node} is held by other work on the Ray cluster; retry later."
            ) from None
        return group

    @staticmethod
    def _gpu_ids(group: PlacementGroup, count: int) -> list[int]:
        ids = []
        for index in range(count):  # one at a time: the probe's worker process is reused
            strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)
            ids += ray.get(_bundle_gpu_ids.options(num_gpus=1, scheduling_strategy=strategy).remote())
        return ids


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40]
