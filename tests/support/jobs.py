"""Fine-tuning jobs as tests drive them: waiting for a status, and the example jobs the session trains once."""

import time
from dataclasses import dataclass
from pathlib import Path

import openai
from openai.types.fine_tuning import FineTuningJob

from synthd.demo_data import DEMO_DATA
from tests.support.server import MODEL

ENDED = ("succeeded", "failed", "cancelled")


def wait_for(client: openai.OpenAI, job_id: str, statuses=ENDED, timeout_s: float = 900):
    """The fine-tuning job once its status is one of ``statuses`` (polled every 0.5 s).

    Raises:
        AssertionError: not there after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout_s}s")


@dataclass(frozen=True)
class ExampleJob:
    """A job on one of the demo's data files (``synthd.demo_data``): the file's name, the hyperparameters asked for,
    the job as ``create`` answered (status ``validating_files``) and where its adapter will be."""

    data_file: str
    hyperparameters: dict
    created: FineTuningJob
    adapter_dir: Path


def example_job(
    client: openai.OpenAI,
    home: Path,
    data_file: str,
    method: str,
    hyperparameters: dict,
    model: str = MODEL,
    **create,
) -> ExampleJob:
    """Upload ``synthd/demo_data/<data_file>`` and create a ``method`` job on it (not waited for)."""
    path = DEMO_DATA / data_file
    uploaded = client.files.create(file=(path.name, path.read_bytes()), purpose="fine-tune")
    created = client.fine_tuning.jobs.create(
        model=model,
        training_file=uploaded.id,
        method={"type": method, method: {"hyperparameters": hyperparameters}},
        **create,
    )
    return ExampleJob(data_file, hyperparameters, created, home / "adapters" / created.id)
