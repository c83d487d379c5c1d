"""What models are available on this machine, for ``synthd models list``."""

from dataclasses import dataclass
from pathlib import Path

from synthd.models.embedded import (
    EMBEDDED_HUB_ID,
    EMBEDDED_MODEL_ID,
    embedded_model_dir,
    is_pulled,
)


@dataclass(frozen=True)
class AvailableModel:
    """A model synthd can serve. ``source`` is ``embedded``, ``local`` or ``hf-cache``."""

    model_id: str
    source: str
    cached: bool
    path: Path | None


def available_models(models_dir: Path) -> list[AvailableModel]:
    """The embedded model (pulled or not), folders under ``models_dir`` and hub-cache snapshots."""
    rows = [
        AvailableModel(
            EMBEDDED_MODEL_ID,
            "embedded",
            is_pulled(models_dir),
            embedded_model_dir(models_dir) if is_pulled(models_dir) else None,
        )
    ]
    if models_dir.is_dir():
        for folder in sorted(models_dir.iterdir()):
            if folder.name != EMBEDDED_MODEL_ID and (folder / "config.json").is_file():
                rows.append(AvailableModel(folder.name, "local", True, folder))
    rows.extend(_hub_cache_models())
    return rows


def _hub_cache_models() -> list[AvailableModel]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir()
    except (CacheNotFound, OSError):
        return []
    rows = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or repo.repo_id == EMBEDDED_HUB_ID:
            continue
        snapshot = next(
            (rev.snapshot_path for rev in repo.revisions if (rev.snapshot_path / "config.json").exists()), None
        )
        if snapshot is not None:
            rows.append(AvailableModel(repo.repo_id, "hf-cache", True, snapshot))
    return rows
