"""Where one job's files live under ``$SYNTHD_HOME``.

``training/<job>/``: the job's folder, kept after the job (logs, TensorBoard, W&B run) —
``trainer/checkpoint-N`` (the trainer's resumable checkpoints, removed once the job ends),
``worker.lock`` (held by the one worker training it), ``worker.log`` (its stderr),
``result.json`` / ``error.json`` (how the worker ended, read by the scheduler), ``tensorboard/``.
``adapters/<job>``: the final LoRA adapter; ``adapters/<job>-step-N``: kept checkpoint adapters.
"""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class JobLayout:
    """Paths of job ``job_id`` under ``home``."""

    home: Path
    job_id: str

    @property
    def folder(self) -> Path:
        """``training/<job>``."""
        return self.home / "training" / self.job_id

    @property
    def trainer_dir(self) -> Path:
        """The trainer's ``output_dir`` (``checkpoint-N`` folders)."""
        return self.folder / "trainer"

    @property
    def lock(self) -> Path:
        """Lock file held by the worker training this job."""
        return self.folder / "worker.lock"

    @property
    def log(self) -> Path:
        """The worker's stderr."""
        return self.folder / "worker.log"

    @property
    def result(self) -> Path:
        """``{"outcome": "succeeded" | "cancelled" | "paused", "trained_tokens", "step"}``."""
        return self.folder / "result.json"

    @property
    def error(self) -> Path:
        """``{"code", "message", "param"}`` of a failed run."""
        return self.folder / "error.json"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files."""
        return self.folder / "tensorboard"

    @property
    def adapter(self) -> Path:
        """The final adapter."""
        return self.home / "adapters" / self.job_id

    def checkpoint_adapter(self, step: int) -> Path:
        """The kept adapter of the checkpoint at ``step``."""
        return self.home / "adapters" / f"{self.job_id}-step-{step}"


def latest_checkpoint(trainer_dir: Path) -> Path | None:
    """The complete ``checkpoint-N`` folder with the highest N (``trainer_state.json`` is written
    last, so its presence marks a finished save), or None."""
    found = [
        p
        for p in trainer_dir.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)
