"""What fine-tuning platform users expect, through the official openai SDK: checkpoints listed and
served as models, validation metrics and the step_metrics.csv result file, continuing from a
checkpoint, pause and resume, TensorBoard and W&B (offline) runs, and ``auto`` hyperparameters
resolved from the data. Jobs are a few steps on the 15-example facts file."""

import csv
import io
import math
import time
from pathlib import Path

import openai
import pytest

from synthd.demo_data import DEMO_DATA
from synthd.server_process import ServerProcess
from tests.support.jobs import ENDED, wait_for
from tests.support.server import MODEL, server_env


@pytest.fixture(scope="module")
def client(models_dir: Path, home: Path):
    with ServerProcess(log_path=home / "server.log", env=server_env(home, models_dir)) as server:
        yield openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


def metrics(client: openai.OpenAI, job_id: str) -> list[dict]:
    """Per-step metrics events' data (training and validation steps, not checkpoints), oldest first."""
    events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
    return [e.data for e in reversed(events) if e.type == "metrics" and e.data and "total_steps" in e.data]


@pytest.fixture(scope="module")
def facts(client: openai.OpenAI) -> str:
    """One fact in three phrasings: a batch of 3 is one small step."""
    small = b"".join((DEMO_DATA / "sft_facts.jsonl").read_bytes().splitlines(keepends=True)[:3])
    return client.files.create(file=("facts.jsonl", small), purpose="fine-tune").id


@pytest.fixture(scope="module")
def all_facts(client: openai.OpenAI) -> str:
    return client.files.create(
        file=("facts.jsonl", (DEMO_DATA / "sft_facts.jsonl").read_bytes()), purpose="fine-tune"
    ).id


@pytest.fixture(scope="module")
def trained(client: openai.OpenAI, facts: str):
    """Two steps (the whole file per step), a checkpoint and an evaluation at each, logged to W&B."""
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=facts,
        validation_file=facts,
        suffix="ckpt",
        seed=5,
        integrations=[{"type": "wandb", "wandb": {"project": "synthd-tests", "tags": ["ci"]}}],
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 3, "learning_rate_multiplier": 10}},
        },
        extra_body={"n_checkpoints": 2, "n_evals": 2},
    )
    done = wait_for(client, job.id)
    assert done.status == "succeeded", done.error
    return done


def test_checkpoints_are_listed_newest_first_and_served(client: openai.OpenAI, trained) -> None:
    page = client.fine_tuning.jobs.checkpoints.list(trained.id, limit=1)
    assert [c.step_number for c in page.data] == [2] and page.has_more
    rest = client.fine_tuning.jobs.checkpoints.list(trained.id, after=page.data[0].id, limit=10)
    assert [c.step_number for c in rest.data] == [1] and not rest.has_more
    first = rest.data[0]
    assert first.fine_tuned_model_checkpoint == f"{trained.fine_tuned_model}:ckpt-step-1"
    assert first.fine_tuning_job_id == trained.id and first.metrics.step == 1
    served = {m.id for m in client.models.list().data}
    assert {
        trained.fine_tuned_model,
        first.fine_tuned_model_checkpoint,
        page.data[0].fine_tuned_model_checkpoint,
    } <= served
    reply = client.chat.completions.create(
        model=first.fine_tuned_model_checkpoint,
        max_tokens=8,
        temperature=0,
        messages=[{"role": "user", "content": "What is the capital of Zorbania?"}],
    )
    assert reply.model == first.fine_tuned_model_checkpoint and reply.choices[0].message.content


def test_validation_metrics_and_result_file(client: openai.OpenAI, trained) -> None:
    valid = [m for m in metrics(client, trained.id) if "valid_loss" in m]
    assert [m["step"] for m in valid] == [1, 2]
    assert all(math.isfinite(m["valid_loss"]) and 0 < m["valid_mean_token_accuracy"] <= 1 for m in valid)
    for checkpoint in client.fine_tuning.jobs.checkpoints.list(trained.id).data:
        assert math.isfinite(checkpoint.metrics.valid_loss) and math.isfinite(checkpoint.metrics.train_loss)
        assert 0 < checkpoint.metrics.valid_mean_token_accuracy <= 1
    [result_id] = trained.result_files
    assert client.files.retrieve(result_id).purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))
    assert [r["step"] for r in rows] == ["1", "2"]
    assert set(rows[0]) == {"step", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy"}
    assert all(math.isfinite(float(r["train_loss"])) and math.isfinite(float(r["valid_loss"])) for r in rows)


def test_tensorboard_and_wandb_offline_runs_are_written(home: Path, trained) -> None:
    folder = home / "training" / trained.id
    assert list((folder / "tensorboard").rglob("events.out.tfevents.*"))
    runs = list((folder / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))


def test_from_checkpoint_starts_where_the_source_ended(client: openai.OpenAI, facts: str, trained) -> None:
    source = [m["train_loss"] for m in metrics(client, trained.id) if "train_loss" in m]
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=facts,
        seed=5,
        extra_body={"from_checkpoint": f"{trained.id}:2"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 3}}},
    )
    assert job.model_extra["from_checkpoint"] == f"{trained.fine_tuned_model}:ckpt-step-2"
    done = wait_for(client, job.id)
    assert done.status == "succeeded", done.error
    first = next(m["train_loss"] for m in metrics(client, job.id) if "train_loss" in m)
    # the same batch again: the loss continues from the source's last, not from where the base starts
    assert source[-1] < source[0] and abs(first - source[-1]) < abs(first - source[0]), (source, first)
    with pytest.raises(openai.BadRequestError) as missing:
        client.fine_tuning.jobs.create(model=MODEL, training_file=facts, extra_body={"from_checkpoint": "ftjob-nope"})
    assert missing.value.body["param"] == "from_checkpoint"


def test_pause_frees_the_worker_and_resume_continues_the_step_count(client: openai.OpenAI, facts: str) -> None:
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=facts,
        seed=2,
        extra_body={"n_checkpoints": 1},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 8, "batch_size": 3}}},
    )
    deadline = time.monotonic() + 900
    while not any("train_loss" in m for m in metrics(client, job.id)):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    client.fine_tuning.jobs.pause(job.id)
    paused = wait_for(client, job.id, ("paused", *ENDED))
    assert paused.status == "paused"
    stopped_at = max(m["step"] for m in metrics(client, job.id) if "train_loss" in m)
    assert stopped_at < 8
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.pause(job.id)
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status in ("queued", "running")
    done = wait_for(client, job.id)
    assert done.status == "succeeded", done.error
    steps = [m["step"] for m in metrics(client, job.id) if "train_loss" in m]
    assert steps[steps.index(stopped_at) + 1] == stopped_at + 1 and steps[-1] == 8, steps
    assert sorted(set(steps)) == list(range(1, 9))
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.resume(job.id)


def test_auto_hyperparameters_are_chosen_from_the_data_and_reported(client: openai.OpenAI, all_facts: str) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=all_facts)
    assert job.hyperparameters.n_epochs in (None, "auto")
    queued = wait_for(client, job.id, ("queued", "running", *ENDED))
    client.fine_tuning.jobs.cancel(job.id)
    hyper = queued.method.supervised.hyperparameters
    # 15 examples: epochs raised to reach 100 examples seen (100 // 15), batch 0.2 % of n (at least 1)
    assert (hyper.n_epochs, hyper.batch_size) == (6, 1)
    assert hyper.learning_rate_multiplier > 0 and queued.hyperparameters.n_epochs == 6
