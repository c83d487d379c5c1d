"""Fine-tuning metrics are reported at the step they were measured: a checkpoint or a
``step_metrics.csv`` row at a step without validation has no validation values."""

import csv
import io
from pathlib import Path
from types import SimpleNamespace

from synthd.training.layout import JobLayout
from synthd.training.results import step_metrics_csv
from synthd.training.runner import ADAPTER_FILES, JobCallback


class RecordingRepo:
    """The part of ``Repository`` the callback writes to, kept in lists."""

    def __init__(self) -> None:
        self.checkpoints: list[tuple[int, dict]] = []
        self.events: list[tuple[str, dict | None]] = []

    def add_events(self, job_id: str, events: list, estimated_finish: int | None = None) -> None:
        self.events += events

    def add_checkpoint(self, job_id: str, step: int, metrics: dict, path: str, adapter_path: str) -> None:
        self.checkpoints.append((step, metrics))


def test_checkpoint_without_validation_at_its_step_has_no_valid_loss(tmp_path: Path) -> None:
    repo = RecordingRepo()
    callback = JobCallback(repo, JobLayout(tmp_path, "ftjob-test"))  # type: ignore[arg-type]
    args = SimpleNamespace(output_dir=str(tmp_path / "trainer"))
    for step in (1, 2, 3):
        (tmp_path / "trainer" / f"checkpoint-{step}").mkdir(parents=True)
        for name in ADAPTER_FILES:
            (tmp_path / "trainer" / f"checkpoint-{step}" / name).write_text("{}")
    train = {"loss": 1.5, "mean_token_accuracy": 0.5, "learning_rate": 1e-4}
    for step, logs, save in [  # like Trainer: log, then evaluate, then save, at each step
        (1, train, False),
        (1, {"eval_loss": 1.25, "eval_mean_token_accuracy": 0.75}, True),
        (2, train, True),
        (3, {"eval_loss": 1.0, "eval_mean_token_accuracy": 0.8}, True),
    ]:
        state = SimpleNamespace(global_step=step, max_steps=3)
        callback.on_log(args, state, None, logs=logs)
        if save:
            callback.on_save(args, state, None)
    assert repo.checkpoints == [
        (
            1,
            {
                "step": 1,
                "train_loss": 1.5,
                "train_mean_token_accuracy": 0.5,
                "valid_loss": 1.25,
                "valid_mean_token_accuracy": 0.75,
            },
        ),
        (2, {"step": 2, "train_loss": 1.5, "train_mean_token_accuracy": 0.5}),
        (3, {"step": 3, "valid_loss": 1.0, "valid_mean_token_accuracy": 0.8}),
    ]


def test_step_metrics_rows_leave_validation_empty_where_none_ran() -> None:
    events = [
        {"step": 1, "train_loss": 1.5, "train_mean_token_accuracy": 0.5},
        {"step": 1, "valid_loss": 1.25, "valid_mean_token_accuracy": 0.75},
        {"step": 2, "train_loss": 1.25, "train_mean_token_accuracy": 0.6},
    ]
    rows = list(csv.DictReader(io.StringIO(step_metrics_csv(events).decode())))
    assert rows == [
        {"step": "1", "train_loss": "1.5", "train_accuracy": "0.5", "valid_loss": "1.25", "valid_accuracy": "0.75"},
        {"step": "2", "train_loss": "1.25", "train_accuracy": "0.6", "valid_loss": "", "valid_accuracy": ""},
    ]
