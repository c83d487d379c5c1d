"""The ``validating_files`` step: a job's files checked and its ``auto`` hyperparameters resolved,
then ``queued`` — or ``failed`` (that job alone, with the reason) or ``cancelled``."""

from synthd.store.models import JobRecord, JobStatus
from synthd.store.repository import Repository, now
from synthd.training.config import Hyperparameters
from synthd.training.data import load_jsonl
from synthd.training.results import JobResults

S = JobStatus


def validate_job(repo: Repository, results: JobResults, job: JobRecord) -> None:
    """Move ``job`` (in ``validating_files``) on: cancelled if asked; failed when a file was
    deleted or does not parse for its method; else queued with resolved hyperparameters."""
    if job.cancel_requested:
        repo.transition(job.id, [S.VALIDATING_FILES], S.CANCELLED, "Fine-tuning job cancelled", finished_at=now())
        return
    method = job.method["type"]
    examples = 0
    for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
        if file_id is None:
            continue
        record = repo.get_file(file_id)
        if record is None:
            results.fail(job.id, f"invalid_{param}", f"{param} {file_id} was deleted", param, source=S.VALIDATING_FILES)
            return
        try:
            rows = load_jsonl(repo.read_file(record), method).rows
        except Exception as exc:  # noqa: BLE001  any fault in one file fails that job alone
            results.fail(
                job.id,
                f"invalid_{param}",
                f"{param} {file_id} ({record.filename}): {exc}",
                param,
                source=S.VALIDATING_FILES,
            )
            return
        examples = examples or len(rows)
    raw = job.method.get(method, {}).get("hyperparameters", {})
    hyper = Hyperparameters.resolve(raw, method, examples)
    repo.transition(
        job.id,
        [S.VALIDATING_FILES],
        S.QUEUED,
        f"Files validated ({examples} training examples); job queued",
        method={**job.method, method: {"hyperparameters": hyper.to_dict()}},
    )
