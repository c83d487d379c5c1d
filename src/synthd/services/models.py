"""``/v1/models``: every servable model with its serving state; retrieve; delete a fine-tune."""

import asyncio
import shutil

from synthd.errors import InvalidRequest
from synthd.models.adapters import AdapterRef
from synthd.models.ids import is_fine_tune
from synthd.models.pool import ModelPool
from synthd.models.resolve import ModelNotFound, ModelSource
from synthd.models.warmup import ModelStatus
from synthd.protocol.openai import ModelCard, ModelList
from synthd.services.projects import OPERATOR, ModelAccess, Principal
from synthd.services.usage import UsageTally
from synthd.store.repository import Repository


class ModelsService:
    """Lists, retrieves and deletes models.

    Args:
        pool: the model pool (states, placements). repo: the store of fine-tunes.
        usage: requests and tokens served per model. access: which fine-tunes each caller may see.
    """

    def __init__(self, pool: ModelPool, repo: Repository, usage: UsageTally, access: ModelAccess) -> None:
        self.pool = pool
        self.repo = repo
        self.usage = usage
        self.access = access

    def _card(self, model_id: str, created: int, root: str, parent: str | None = None) -> ModelCard:
        status: ModelStatus = self.pool.status(model_id)
        replica = next((r for r in self.pool.replicas(parent or model_id) if r.engine is not None), None)
        requests, tokens = self.usage.get(model_id)
        return ModelCard(
            id=model_id,
            created=created,
            root=root,
            parent=parent,
            max_model_len=replica.engine.max_model_len if replica and replica.engine else None,
            status=status.state.value,
            gpu=status.gpu,
            node=status.node,
            load_seconds=None if status.load_seconds is None else round(status.load_seconds, 3),
            error=status.error,
            requests_served=requests,
            tokens_served=tokens,
        )

    async def _base_card(self, source: ModelSource) -> ModelCard:
        replicas = self.pool.replicas(source.model_id)
        created = replicas[0].created if replicas else int((await asyncio.to_thread(source.path.stat)).st_mtime)
        return self._card(source.model_id, created, source.model_id)

    def _fine_tune_card(self, ref: AdapterRef) -> ModelCard:
        return self._card(ref.model_id, ref.created, ref.base_model, ref.base_model)

    async def list(self, principal: Principal = OPERATOR) -> ModelList:
        """The operator's models (from the first moment, whatever their state), other loaded models,
        the bases of fine-tunes, then every fine-tune ``principal`` may see and every runtime adapter
        (the operator's, like imported fine-tunes): never one without its parent."""
        fine_tunes = await asyncio.to_thread(self.pool.registry.fine_tunes)
        visible = await asyncio.to_thread(self.access.visible_ids, principal, [ref.model_id for ref in fine_tunes])
        fine_tunes = [*(ref for ref in fine_tunes if ref.model_id in visible), *self.pool.registry.runtime_adapters()]
        ids = [
            *self.pool.registry.served,
            *(r.model_id for r in self.pool.replicas()),
            *(ref.base_model for ref in fine_tunes),
        ]
        bases: dict[str, ModelSource] = {}
        for model_id in dict.fromkeys(ids):
            try:
                bases[model_id] = await asyncio.to_thread(self.pool.registry.base, model_id)
            except (ModelNotFound, InvalidRequest):
                continue
        cards = [await self._base_card(source) for source in bases.values()]
        cards += [self._fine_tune_card(ref) for ref in fine_tunes if ref.base_model in bases]
        return ModelList(data=cards)

    async def retrieve(self, model_id: str, principal: Principal = OPERATOR) -> ModelCard:
        """One model (ids may contain ``/``).

        Raises:
            InvalidRequest: malformed id. ModelNotFound: unknown id, or not visible to ``principal``.
        """
        await self.access.check(principal, model_id)
        source, adapter = await self.pool.resolve(model_id)
        return self._fine_tune_card(adapter) if adapter else await self._base_card(source)

    async def delete(self, model_id: str, principal: Principal = OPERATOR) -> dict:
        """Delete a fine-tune: new requests get 404 at once; requests already running finish; its
        adapter is unloaded and its folder removed when they have.

        Raises:
            InvalidRequest: a base model or a runtime adapter. ModelNotFound: unknown id, or not
            visible to ``principal``. PermissionDenied: an imported adapter and a project key.
        """
        await self.access.check_deletable(principal, model_id)
        if self.pool.registry.runtime_adapter(model_id) is not None:
            raise InvalidRequest(
                f"'{model_id}' is a runtime LoRA adapter; remove it with POST /v1/unload_lora_adapter.",
                param="model",
                code="model_not_deletable",
            )
        if not is_fine_tune(model_id):
            await self.pool.resolve(model_id)
            raise InvalidRequest(
                f"'{model_id}' is a base model; only fine-tuned models can be deleted.",
                param="model",
                code="model_not_deletable",
            )
        _, adapter = await self.pool.resolve(model_id)
        assert adapter is not None
        record = await asyncio.to_thread(self.repo.delete_model, model_id)
        if record is None:
            raise ModelNotFound.hidden(model_id)
        await self.pool.retire_adapter(model_id, lambda: shutil.rmtree(adapter.path, ignore_errors=True))
        return {"id": model_id, "object": "model", "deleted": True}
