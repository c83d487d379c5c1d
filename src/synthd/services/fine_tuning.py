"""Files and fine-tuning jobs: request validation and object conversion around the repository."""

import random

from synthd.errors import InvalidRequest, NotFound
from synthd.gpus.spec import parse_gpu_preference
from synthd.gpus.planner import PlacementPlanner
from synthd.models.ids import is_fine_tune
from synthd.models.registry import ModelRegistry
from synthd.models.resolve import ModelNotFound
from synthd.protocol.fine_tuning import (
    CheckpointList,
    CheckpointObject,
    FileObject,
    FineTuningJob,
    FineTuningJobCreate,
    HyperparametersIn,
    JobError,
    JobEventList,
    JobEventObject,
    LoRAIn,
)
from synthd.services.projects import OPERATOR, Principal, visible_or_raise
from synthd.store.models import FileRecord, JobRecord
from synthd.store.repository import Repository, new_id, now
from synthd.training.config import DEFAULT_TARGET_MODULES, LoRASettings

FINE_TUNE_PURPOSE = "fine-tune"
FILE_PURPOSES = ("fine-tune", "assistants", "batch", "user_data", "evals", "vision")


def file_object(record: FileRecord) -> FileObject:
    """Wire form of a stored file."""
    return FileObject(id=record.id, bytes=record.bytes, created_at=record.created_at, filename=record.filename,
                      purpose=record.purpose)


def job_object(job: JobRecord) -> FineTuningJob:
    """Wire form of a job (hyperparameters also at top level, as OpenAI still sends them)."""
    method_type = job.method["type"]
    return FineTuningJob(
        id=job.id, created_at=job.created_at, error=JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model, finished_at=job.finished_at,
        hyperparameters=job.method.get(method_type, {}).get("hyperparameters", {}), model=job.model, seed=job.seed,
        status=job.status, trained_tokens=job.trained_tokens, training_file=job.training_file,
        validation_file=job.validation_file, estimated_finish=job.estimated_finish, metadata=job.job_metadata,
        method=job.method, user_provided_suffix=job.suffix, lora=job.lora, gpu=job.gpu, gpu_preference=job.gpu_preference,
    )


def job_not_found(job_id: str) -> NotFound:
    """An unknown job."""
    return NotFound(f"No fine-tuning job with id '{job_id}'.", param="fine_tuning_job_id", code="job_not_found")


def file_not_found(file_id: str, param: str = "file_id") -> NotFound:
    """An unknown file."""
    return NotFound(f"No file with id '{file_id}'.", param=param, code="file_not_found")


def _invalid(message: str, param: str | None = None, code: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


class FineTuningService:
    """Creates, lists, cancels jobs and reads their events and checkpoints."""

    def __init__(self, repo: Repository, registry: ModelRegistry, planner: PlacementPlanner) -> None:
        self.repo = repo
        self.registry = registry
        self.planner = planner

    def visible_file(self, file_id: str, principal: Principal = OPERATOR) -> FileRecord:
        """A file ``principal`` may see. Raises NotFound."""
        return visible_or_raise(self.repo.get_file(file_id), principal, file_not_found(file_id))

    def create_job(self, body: FineTuningJobCreate, principal: Principal = OPERATOR) -> FineTuningJob:
        """Validate references and settings, then store the job as ``validating_files``, owned by
        ``principal``'s project.

        Raises:
            InvalidRequest: unknown base model, unknown or wrong-purpose file, conflicting method fields.
            GPUSpecError, SelectionError: the GPU preference cannot be met.
        """
        method_type, hyper = self._method(body)
        if is_fine_tune(body.model):
            raise _invalid("Fine-tuning an ft: model is not supported; start from its base model.", "model")
        try:
            source = self.registry.base(body.model)
        except ModelNotFound as exc:
            raise _invalid(str(exc), "model", "model_not_found") from None
        for param in ("training_file", "validation_file"):
            file_id = getattr(body, param)
            if file_id is None:
                continue
            record = self.repo.get_file(file_id)
            if record is None or not principal.can_see(record.project):
                raise _invalid(f"No file with id '{file_id}'.", param, "file_not_found")
            if record.purpose != FINE_TUNE_PURPOSE:
                raise _invalid(f"File '{file_id}' has purpose '{record.purpose}'; fine-tuning needs "
                                  f"purpose '{FINE_TUNE_PURPOSE}'.", param, "invalid_file_purpose")
        purpose = "dpo" if method_type == "dpo" else "sft"
        placement, _ = self.planner.plan(source.path, parse_gpu_preference(body.gpu_preference), purpose)
        base = source.model_id
        lora_in = body.lora or LoRAIn()
        lora = LoRASettings(r=lora_in.r, alpha=lora_in.alpha, dropout=lora_in.dropout,
                            target_modules=tuple(lora_in.target_modules or DEFAULT_TARGET_MODULES))
        job = JobRecord(
            id=new_id("ftjob"), model=base, status="validating_files",
            method={"type": method_type, method_type: {"hyperparameters": hyper.model_dump(exclude_none=True)}},
            lora=lora.to_dict(), training_file=body.training_file, validation_file=body.validation_file,
            suffix=body.suffix, seed=body.seed if body.seed is not None else random.randint(0, 2**31 - 1),
            job_metadata=body.metadata, gpu_preference=body.gpu_preference, gpu=placement.label, created_at=now(),
            project=principal.project,
        )
        return job_object(self.repo.add_job(job))

    def get_job(self, job_id: str, principal: Principal = OPERATOR) -> FineTuningJob:
        """A job ``principal`` may see. Raises NotFound."""
        return job_object(visible_or_raise(self.repo.get_job(job_id), principal, job_not_found(job_id)))

    def cancel_job(self, job_id: str, principal: Principal = OPERATOR) -> FineTuningJob:
        """Cancel: queued jobs at once; a running job stops at its next step (within seconds).

        Raises:
            NotFound: unknown job. InvalidRequest: it already ended.
        """
        job = visible_or_raise(self.repo.get_job(job_id), principal, job_not_found(job_id))
        if job.status in ("succeeded", "failed", "cancelled"):
            raise _invalid(f"Job '{job_id}' has already {job.status}; it cannot be cancelled.", "fine_tuning_job_id",
                              "job_not_cancellable")
        if job.status in ("validating_files", "queued"):
            job = self.repo.update_job(job_id, "Fine-tuning job cancelled", status="cancelled", cancel_requested=True,
                                       finished_at=now())
        else:
            job = self.repo.update_job(job_id, "Cancellation requested", cancel_requested=True)
        return job_object(job)

    def events(self, job_id: str, after: str | None, limit: int, principal: Principal = OPERATOR) -> JobEventList:
        """A page of events, newest first."""
        self.get_job(job_id, principal)
        events, more = self.repo.list_events(job_id, after, limit)
        return JobEventList(data=[JobEventObject(id=e.id, created_at=e.created_at, level=e.level, message=e.message,
                                                 data=e.data, type=e.type) for e in events], has_more=more)

    def checkpoints(self, job_id: str, after: str | None, limit: int,
                    principal: Principal = OPERATOR) -> CheckpointList:
        """A page of checkpoints, newest first."""
        job = visible_or_raise(self.repo.get_job(job_id), principal, job_not_found(job_id))
        rows, more = self.repo.list_checkpoints(job_id, after, limit)
        data = [CheckpointObject(id=c.id, created_at=c.created_at, fine_tuning_job_id=job_id, step_number=c.step_number,
                                 metrics={k: v for k, v in c.metrics.items() if v is not None},
                                 fine_tuned_model_checkpoint=f"ft:{job.model}:{job.suffix or ''}:{job_id}:ckpt-step-{c.step_number}")
                for c in rows]
        return CheckpointList(data=data, has_more=more, first_id=data[0].id if data else None,
                              last_id=data[-1].id if data else None)

    @staticmethod
    def _method(body: FineTuningJobCreate) -> tuple[str, HyperparametersIn]:
        if body.method is not None:
            if body.training_type is not None and {"sft": "supervised", "dpo": "dpo"}[body.training_type] != body.method.type:
                raise _invalid("'training_type' and 'method.type' disagree.", "training_type")
            chosen = getattr(body.method, body.method.type)
            hyper = chosen.hyperparameters if chosen else (body.hyperparameters or HyperparametersIn())
            method_type = body.method.type
        else:
            method_type = "dpo" if body.training_type == "dpo" else "supervised"
            hyper = body.hyperparameters or HyperparametersIn()
        if method_type == "supervised" and hyper.beta is not None:
            raise _invalid("'beta' applies to DPO only.", "hyperparameters.beta")
        return method_type, hyper
