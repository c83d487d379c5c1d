"""Turn a model id into a local Hugging Face folder, without touching the network."""

import re
from dataclasses import dataclass
from pathlib import Path

from synthd.errors import InvalidRequest, NotFound
from synthd.models.shipped import shipped_model


class ModelNotFound(NotFound):
    """No local copy of the model exists; the message says how to get one."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="model_not_found")

    @classmethod
    def hidden(cls, model: str) -> "ModelNotFound":
        """The one answer for a model id the caller may not use: the same words whether it does not exist,
        is another project's, or is being retired, so ids cannot be probed."""
        return cls(f"The model '{model}' does not exist.")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: the id it is served under, the folder holding its weights, and the chat
    template the operator gave it (``synthd serve --chat-template``; None: the tokenizer's)."""

    model_id: str
    path: Path
    chat_template: str | None = None


MAX_MODEL_ID_CHARS = 256
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A folder name under ``models_dir``, or one half of a hub id (``org/name``)."""


def canonical_id(model: str) -> str:
    """The id a model is served under: a shipped model's hub id maps to its short id."""
    spec = shipped_model(model)
    return spec.model_id if spec is not None else model


def check_model_id(model: str) -> None:
    """Refuse ids no model can have: empty, too long, or with control characters.

    Raises:
        InvalidRequest: the id is malformed (``param`` model).
    """
    if not model or len(model) > MAX_MODEL_ID_CHARS or not model.isprintable():
        raise InvalidRequest(
            f"Invalid model id: it must be 1 to {MAX_MODEL_ID_CHARS} printable characters.",
            param="model",
            code="invalid_model",
        )


def resolve_model(model: str, models_dir: Path) -> ModelSource:
    """Find the weights for a model NAME, never a path: what the HTTP API may serve.

    Accepted: a shipped model (``SmolLM2-135M-Instruct``, ``gemma-3-270m`` or their hub ids, once
    pulled), a folder
    name under ``models_dir`` (``[A-Za-z0-9][A-Za-z0-9._-]*``), or a hub id ``org/name`` already in
    the Hugging Face cache (looked up offline; nothing is downloaded).

    Raises:
        InvalidRequest: a malformed id. ModelNotFound: none of these exist; the message names the fix.
    """
    check_model_id(model)
    spec = shipped_model(model)
    if spec is not None:
        if not spec.is_pulled(models_dir):
            raise ModelNotFound(f"model '{model}' is not pulled yet: run 'synthd models pull {spec.model_id}'")
        return ModelSource(spec.model_id, spec.folder(models_dir))
    if NAME_PATTERN.fullmatch(model) and ".." not in model and has_config(models_dir / model):
        return ModelSource(model, (models_dir / model).resolve())
    parts = model.split("/")
    if len(parts) == 2 and all(NAME_PATTERN.fullmatch(p) and ".." not in p for p in parts):
        cached = _hub_cache_snapshot(model)
        if cached is not None:
            return ModelSource(model, cached)
    raise ModelNotFound(
        f"The model '{model}' does not exist: not found among the served models, the folders under "
        f"{models_dir.name}/ or the Hugging Face cache (synthd does not download from the hub at run time)."
    )


def resolve_operator_model(model: str, models_dir: Path) -> ModelSource:
    """What an operator names with ``synthd serve --model``: a model name as ``resolve_model``
    accepts, or a local folder with a ``config.json``, served under the folder's name.

    Raises:
        ModelNotFound: neither exists.
    """
    folder = Path(model).expanduser()
    if has_config(folder):
        return ModelSource(canonical_id(folder.resolve().name), folder.resolve())
    try:
        return resolve_model(model, models_dir)
    except InvalidRequest as exc:
        raise ModelNotFound(str(exc)) from None


def _hub_cache_snapshot(model: str) -> Path | None:
    """The cached snapshot of hub id ``model``: its main branch's, else (pulled at another revision)
    the newest snapshot holding a ``config.json``."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(model, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError, RuntimeError):
        snapshots = Path(constants.HF_HUB_CACHE) / f"models--{model.replace('/', '--')}" / "snapshots"
        found = sorted((p for p in snapshots.glob("*") if has_config(p)), key=lambda p: p.stat().st_mtime, reverse=True)
        return found[0] if found else None
    return path if has_config(path) else None


def has_config(folder: Path) -> bool:
    """True when ``folder/config.json`` is a file; False also for a name the file system cannot
    hold (over 255 bytes, a NUL byte), which ``Path.is_file`` raises for."""
    try:
        return (folder / "config.json").is_file()
    except (OSError, ValueError):
        return False
