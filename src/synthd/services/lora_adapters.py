"""Runtime LoRA adapters: vLLM's ``load_lora_adapter`` / ``unload_lora_adapter`` on the model pool.

After vLLM's ``OpenAIServingModels`` (vllm/entrypoints/openai/models/serving.py): an adapter is
loaded under a free name, served like any model (``/v1/models`` lists it with its ``parent``), and
unloaded by name; runtime adapters live in memory only, so a restart forgets them, as in vLLM.
Before it is registered the folder is checked against its base (``check_adapter``): the base is the
model named by ``base_model_name_or_path`` in ``adapter_config.json`` when that names a model this
server serves (by id, hub id or folder), else the first model the server was started with. Unloading
reuses the retirement of deleted fine-tunes: new requests get 404 at once, running ones finish, then
the engines drop the weights.
"""

import asyncio
import logging
import time
from pathlib import Path

from synthd.errors import Conflict, InvalidRequest, NotFound, SynthdError
from synthd.models.adapters import AdapterRef, check_adapter, read_adapter_config
from synthd.models.ids import is_fine_tune
from synthd.models.pool import ModelPool
from synthd.models.resolve import ModelNotFound, ModelSource, canonical_id, check_model_id

log = logging.getLogger(__name__)


class LoRAAdapterService:
    """Loads and unloads runtime adapters on ``pool`` (its registry keeps them). One lock
    serialises loads and unloads, so two calls with one name never interleave (vLLM locks per name).
    """

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool
        self._lock = asyncio.Lock()

    async def load(self, name: str, path: str, load_inplace: bool = False) -> str:
        """Validate the PEFT LoRA folder ``path`` against its base and serve it as ``name``; its
        weights start loading in the background (as vLLM preloads). Returns vLLM's success sentence.

        Raises:
            InvalidRequest: an empty or malformed name or path, an ``ft:`` name (reserved for stored
                fine-tunes), a name already loaded or naming a base model, ``load_inplace``, or an
                adapter that is not a servable LoRA for its base (``adapter_mismatch``,
                ``unsupported_adapter``). Conflict: an adapter of that name is still being unloaded.
        """
        if not name or not path:
            raise InvalidRequest(
                "Both 'lora_name' and 'lora_path' must be provided.", param="lora_name" if not name else "lora_path"
            )
        if load_inplace:
            raise InvalidRequest(
                "load_inplace is not supported by synthd: unload the adapter, then load it again.", param="load_inplace"
            )
        try:
            check_model_id(name)
        except InvalidRequest as exc:
            exc.param = "lora_name"
            raise
        if is_fine_tune(name):
            raise InvalidRequest(
                f"The lora adapter name '{name}' starts with 'ft:', which is reserved for fine-tuned "
                "models stored by synthd; choose another name.",
                param="lora_name",
            )
        registry = self.pool.registry
        async with self._lock:
            if registry.runtime_adapter(name) is not None:
                raise InvalidRequest(f"The lora adapter '{name}' has already been loaded.", param="lora_name")
            if self.pool.is_retiring(name):
                raise Conflict(
                    f"The lora adapter '{name}' is still being unloaded (requests are running on it); retry shortly.",
                    param="lora_name",
                )
            if await asyncio.to_thread(self._is_base, name):
                raise InvalidRequest(
                    f"The lora adapter '{name}' conflicts with a served base model.", param="lora_name"
                )
            folder = Path(path).expanduser().absolute()
            try:
                base = await asyncio.to_thread(self._base_for, folder)
                await asyncio.to_thread(check_adapter, folder, base.path)
            except InvalidRequest as exc:
                exc.param = "lora_path"
                raise
            registry.add_runtime_adapter(AdapterRef(name, base.model_id, folder, int(time.time())))
        log.info("loaded LoRA adapter '%s' from %s on %s", name, folder, base.model_id)
        try:
            await self.pool.warmup(name)
        except SynthdError as exc:  # it is registered and valid; it loads on its first request instead
            log.warning("preloading adapter '%s' failed: %s", name, exc.message)
        return f"Success: LoRA adapter '{name}' added successfully."

    async def unload(self, name: str) -> str:
        """Stop serving the runtime adapter ``name`` (running requests finish first). Returns
        vLLM's success sentence.

        Raises:
            InvalidRequest: an empty name. NotFound: no runtime adapter has that name.
        """
        if not name:
            raise InvalidRequest("'lora_name' needs to be provided to unload a LoRA adapter.", param="lora_name")
        async with self._lock:
            if self.pool.registry.remove_runtime_adapter(name) is None:
                raise NotFound(f"The lora adapter '{name}' cannot be found.", param="lora_name", code="model_not_found")
            await self.pool.retire_adapter(name)
        log.info("unloaded LoRA adapter '%s'", name)
        return f"Success: LoRA adapter '{name}' removed successfully."

    def _is_base(self, name: str) -> bool:
        """True when ``name`` is a base model this server can serve. Blocking."""
        try:
            self.pool.registry.base(name)
        except (ModelNotFound, InvalidRequest):
            return False
        return True

    def _base_for(self, folder: Path) -> ModelSource:
        """The base to check and serve the adapter in ``folder`` on (see the module docstring). Blocking.

        Raises:
            AdapterMismatch, UnsupportedAdapter: not a LoRA adapter folder. InvalidRequest: the
                server serves no model to put it on.
        """
        named = read_adapter_config(folder).base_model_name_or_path
        served = list(self.pool.registry.served.values())
        if named:
            for source in served:
                if source.model_id == canonical_id(named) or _same_folder(named, source.path):
                    return source
            try:
                return self.pool.registry.base(named)
            except (ModelNotFound, InvalidRequest):
                pass
        if not served:
            raise InvalidRequest(
                "The server serves no base model to load the adapter on; name one in "
                "adapter_config.json's base_model_name_or_path."
            )
        return served[0]


def _same_folder(named: str, path: Path) -> bool:
    """True when ``named`` is a path to the folder ``path``."""
    try:
        return Path(named).expanduser().resolve() == path.resolve()
    except (OSError, ValueError):
        return False
