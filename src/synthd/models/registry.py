"""What this server may serve, by name: the operator's models, named models on disk, fine-tunes.

HTTP model ids are names, never paths: a base model is one the operator passed to ``synthd serve
--model`` (a name or a folder, served under the folder's name), a folder name under
``$SYNTHD_HOME/models``, or a hub id already in the Hugging Face cache (``resolve_model``); a
fine-tune is an ``ft:`` id the store knows, or a runtime adapter loaded with
``/v1/load_lora_adapter`` under any free name (kept in memory only, as vLLM keeps them). Ids are
canonicalised (the embedded model's hub id → its short id) so one model is loaded once.
"""

from collections.abc import Callable
from pathlib import Path

from synthd.models.adapters import AdapterRef
from synthd.models.ids import is_fine_tune
from synthd.models.resolve import ModelNotFound, ModelSource, canonical_id, check_model_id, resolve_model

FineTuneLookup = Callable[[str], AdapterRef | None]
FineTuneListing = Callable[[], list[AdapterRef]]


class ModelRegistry:
    """Resolves served names.

    Args:
        models_dir: ``$SYNTHD_HOME/models``.
        served: the operator's models (``synthd serve --model``), already resolved.
        find_fine_tune: the store's lookup of an ``ft:`` id (None when unknown). Blocking.
        list_fine_tunes: every stored fine-tune. Blocking.
    """

    def __init__(
        self,
        models_dir: Path,
        served: list[ModelSource],
        find_fine_tune: FineTuneLookup,
        list_fine_tunes: FineTuneListing,
    ) -> None:
        self.models_dir = models_dir
        self.served = {source.model_id: source for source in served}
        self._find_fine_tune = find_fine_tune
        self._list_fine_tunes = list_fine_tunes
        self._runtime: dict[str, AdapterRef] = {}

    def canonical(self, model: str) -> str:
        """The id ``model`` is served under."""
        return canonical_id(model)

    def base(self, model: str) -> ModelSource:
        """The weights of a base model name. Blocking (may scan the hub cache).

        Raises:
            InvalidRequest: malformed id. ModelNotFound: not servable here.
        """
        check_model_id(model)
        model_id = canonical_id(model)
        if model_id in self.served:
            return self.served[model_id]
        return resolve_model(model, self.models_dir)

    def fine_tune(self, model: str) -> AdapterRef:
        """The runtime adapter or stored fine-tune ``model``. Blocking (a database read for ``ft:`` ids).

        Raises:
            InvalidRequest: malformed id. ModelNotFound: unknown.
        """
        check_model_id(model)
        ref = self._runtime.get(model) or (self._find_fine_tune(model) if is_fine_tune(model) else None)
        if ref is None:
            raise ModelNotFound.hidden(model)
        return ref

    def fine_tunes(self) -> list[AdapterRef]:
        """Every stored fine-tune, oldest first. Blocking."""
        return self._list_fine_tunes()

    def is_adapter(self, model: str) -> bool:
        """True when ``model`` names an adapter: an ``ft:`` id or a runtime adapter's name."""
        return is_fine_tune(model) or model in self._runtime

    def runtime_adapter(self, name: str) -> AdapterRef | None:
        """The runtime adapter called ``name``, or None."""
        return self._runtime.get(name)

    def runtime_adapters(self) -> list[AdapterRef]:
        """Runtime adapters in load order."""
        return list(self._runtime.values())

    def add_runtime_adapter(self, ref: AdapterRef) -> None:
        """Serve ``ref`` under ``ref.model_id`` until ``remove_runtime_adapter`` (the caller checked
        that the name is free)."""
        self._runtime[ref.model_id] = ref

    def remove_runtime_adapter(self, name: str) -> AdapterRef | None:
        """Stop resolving ``name``; the removed adapter, or None when there was none."""
        return self._runtime.pop(name, None)
