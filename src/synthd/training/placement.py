"""Where a job trains: its placement and the devices its worker sees."""

from pathlib import Path

from synthd.gpus.planner import PlacementPlanner
from synthd.gpus.selection import Placement
from synthd.gpus.spec import parse_gpu_preference
from synthd.store.models import JobRecord
from synthd.training.config import placement_purpose
from synthd.training.worker import model_path


def place_job(planner: PlacementPlanner, job: JobRecord, models_dir: Path, serving_busy: set[str]) -> Placement:
    """The placement for ``job``'s GPU preference; devices in ``serving_busy`` and those reserved
    for training are not free.

    Raises:
        SelectionError (``gpu_busy``: retry later), GPUSpecError, OSError, ValueError: as
        ``PlacementPlanner.plan``. RuntimeError: the placement is in a declared (remote) pool.
    """
    placement, _ = planner.plan(
        model_path(job, models_dir),
        parse_gpu_preference(job.gpu_preference),
        placement_purpose(job.method["type"]),
        serving_busy,
    )
    if placement.remote:
        raise RuntimeError(f"{placement.label} is in a declared pool; training runs on this host's devices only")
    return placement


def visible_devices(placement: Placement) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a worker on ``placement``: its GPUs' ordinals (empty: the CPU)."""
    return ",".join(str(d.index) for d in placement.gpus)
