"""Turn a model id into a local Hugging Face folder, without touching the network."""

from dataclasses import dataclass
from pathlib import Path

from synthd.models.embedded import (
    EMBEDDED_HUB_ID,
    EMBEDDED_MODEL_ID,
    embedded_model_dir,
    is_pulled,
)


class ModelNotFound(LookupError):
    """No local copy of the model exists; the message says how to get one."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: the id it is served under and the folder holding its weights."""

    model_id: str
    path: Path


def canonical_id(model: str) -> str:
    """The id a model is served under: the embedded model's hub id maps to its short id."""
    return EMBEDDED_MODEL_ID if model in (EMBEDDED_MODEL_ID, EMBEDDED_HUB_ID) else model


def resolve_model(model: str, models_dir: Path) -> ModelSource:
    """Find the weights for ``model``.

    Accepted: the embedded model (``SmolLM2-135M-Instruct`` or its hub id, once pulled), a local
    folder with a ``config.json``, a folder name under ``models_dir``, or a hub id already in the
    Hugging Face cache (looked up offline; nothing is downloaded).

    Raises:
        ModelNotFound: none of these exist; the message names the fix.
    """
    model_id = canonical_id(model)
    if model_id == EMBEDDED_MODEL_ID:
        if not is_pulled(models_dir):
            raise ModelNotFound(f"model '{model}' is not pulled yet: run 'synthd models pull'")
        return ModelSource(model_id, embedded_model_dir(models_dir))
    local = _local_folder(model, models_dir)
    if local is not None:
        return ModelSource(model, local)
    cached = _hub_cache_snapshot(model)
    if cached is not None:
        return ModelSource(model, cached)
    raise ModelNotFound(
        f"model '{model}' not found: not a local folder with config.json and not in the Hugging Face "
        f"cache (synthd does not download from the hub at run time; fetch it with "
        f"'hf download {model}' where the hub is reachable)"
    )


def _local_folder(model: str, models_dir: Path) -> Path | None:
    """A folder with config.json named by ``model`` (a path, or a name under ``models_dir``)."""
    candidates = [lambda: Path(model).expanduser()]
    if "/" not in model:
        candidates.append(lambda: models_dir / model)
    for candidate in candidates:
        try:
            folder = candidate()
            if (folder / "config.json").is_file():
                return folder.resolve()
        except (OSError, RuntimeError, ValueError):  # name too long, unknown ~user, NUL byte
            continue
    return None


def _hub_cache_snapshot(model: str) -> Path | None:
    if model.count("/") != 1:
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(model, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError, RuntimeError):
        return None
    return path if (path / "config.json").is_file() else None
