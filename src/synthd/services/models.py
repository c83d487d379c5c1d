"""``/v1/models``: resident base models and every fine-tune, retrieve and delete."""

import shutil
from pathlib import Path

from synthd.api.errors import bad_request
from synthd.engine.native.loaded import LoadedModel
from synthd.models.pool import ModelManager, is_fine_tune
from synthd.models.resolve import ModelNotFound
from synthd.protocol.openai import ModelCard, ModelList
from synthd.store.models import FineTunedModel
from synthd.store.repository import Repository


def base_card(loaded: LoadedModel) -> ModelCard:
    """Entry of a resident base model."""
    return ModelCard(id=loaded.model_id, created=loaded.created, root=str(loaded.source.path),
                     max_model_len=loaded.max_model_len)


def fine_tune_card(record: FineTunedModel) -> ModelCard:
    """Entry of a fine-tune: ``parent`` is its base, ``root`` its adapter folder (as vLLM lists LoRAs)."""
    return ModelCard(id=record.id, created=record.created_at, owned_by="synthd", root=record.adapter_path,
                     parent=record.base_model)


class ModelsService:
    """Lists, retrieves and deletes models."""

    def __init__(self, manager: ModelManager, repo: Repository) -> None:
        self.manager = manager
        self.repo = repo

    def list(self) -> ModelList:
        """Resident base models, then every fine-tune (listed as soon as its job succeeded)."""
        return ModelList(data=[*map(base_card, self.manager.resident()), *map(fine_tune_card, self.repo.list_models())])

    def retrieve(self, model_id: str) -> ModelCard:
        """One model; a known base that is not loaded is described from its folder.

        Raises:
            ModelNotFound: unknown id.
        """
        if is_fine_tune(model_id):
            record = self.repo.get_model(model_id)
            if record is None:
                raise ModelNotFound(f"The model '{model_id}' does not exist.")
            return fine_tune_card(record)
        slot = self.manager.slot(model_id)
        if slot.loaded is not None:
            return base_card(slot.loaded)
        source = self.manager.resolve(model_id)
        return ModelCard(id=source.model_id, created=int(source.path.stat().st_mtime), root=str(source.path))

    def delete(self, model_id: str) -> dict:
        """Delete a fine-tune: unload its adapter, drop its record and its adapter folder.

        Raises:
            APIError: 400 for a base model. ModelNotFound: unknown id. AdapterBusy: in use (409).
        """
        if not is_fine_tune(model_id):
            self.manager.resolve(model_id)
            raise bad_request(f"'{model_id}' is a base model; only fine-tuned models can be deleted.", "model",
                              "model_not_deletable")
        if self.repo.get_model(model_id) is None:
            raise ModelNotFound(f"The model '{model_id}' does not exist.")
        self.manager.forget_fine_tune(model_id)
        record = self.repo.delete_model(model_id)
        if record is not None:
            shutil.rmtree(Path(record.adapter_path), ignore_errors=True)
        return {"id": model_id, "object": "model", "deleted": True}
