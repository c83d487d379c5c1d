"""Fine-tuning jobs: request validation, object conversion, and the API's requests to the scheduler.

The API never writes a job's status: creating a job inserts it as ``validating_files``; cancel,
pause and resume set a flag with a conditional update (a job that already ended answers
``Conflict``) and the job scheduler acts on it.
"""

import asyncio
import importlib.util
import random
import time
from pathlib import Path

from synthd.errors import Conflict, InvalidRequest, NotFound
from synthd.gpus.planner import PlacementPlanner
from synthd.gpus.spec import parse_gpu_preference
from synthd.models.adapters import default_lora_targets, linear_modules, missing_targets, read_adapter_config
from synthd.models.ids import FineTuneId, is_fine_tune
from synthd.models.registry import ModelRegistry
from synthd.models.resolve import ModelNotFound
from synthd.protocol.fine_tuning import (
    CheckpointList,
    CheckpointMetrics,
    CheckpointObject,
    FineTuningJob,
    FineTuningJobCreate,
    HyperparametersIn,
    JobError,
    JobEventList,
    JobEventObject,
    LoRAIn,
)
from synthd.services.files import FilesService
from synthd.services.projects import OPERATOR, ModelAccess, Principal, visible_or_raise
from synthd.store.models import ACTIVE, JobRecord, JobStatus
from synthd.store.repository import Repository, new_id, now
from synthd.training.config import (
    DEFAULT_N_CHECKPOINTS,
    METHOD_BY_TRAINING_TYPE,
    LoRASettings,
    placement_purpose,
)

FINE_TUNE_PURPOSE = "fine-tune"
REQUEST_WAIT_S = 3.0
"""How long cancel / pause / resume wait for the scheduler to apply them before answering."""


def job_object(job: JobRecord) -> FineTuningJob:
    """Wire form of a job (hyperparameters also at top level, as OpenAI still sends them)."""
    method_type = job.method["type"]
    return FineTuningJob(
        id=job.id,
        created_at=job.created_at,
        error=JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=job.finished_at,
        hyperparameters=job.method.get(method_type, {}).get("hyperparameters", {}),
        model=job.model,
        seed=job.seed,
        status=job.status,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
        estimated_finish=job.estimated_finish,
        metadata=job.job_metadata,
        method=job.method,
        user_provided_suffix=job.suffix,
        lora=job.lora,
        gpu=job.gpu,
        gpu_preference=job.gpu_preference,
        integrations=job.integrations,
        result_files=job.result_files or [],
        from_checkpoint=job.from_checkpoint,
        n_checkpoints=job.n_checkpoints,
        n_evals=job.n_evals,
    )


def job_not_found(job_id: str) -> NotFound:
    """An unknown job."""
    return NotFound(f"No fine-tuning job with id '{job_id}'.", param="fine_tuning_job_id", code="job_not_found")


def _invalid(message: str, param: str | None = None, code: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


class FineTuningService:
    """Creates, lists, cancels, pauses and resumes jobs and reads their events and checkpoints."""

    def __init__(self, repo: Repository, registry: ModelRegistry, planner: PlacementPlanner) -> None:
        self.repo = repo
        self.registry = registry
        self.planner = planner
        self.files = FilesService(repo)

    def create_job(self, body: FineTuningJobCreate, principal: Principal = OPERATOR) -> FineTuningJob:
        """Validate references and settings, then store the job as ``validating_files``, owned by
        ``principal``'s project (its files and ``from_checkpoint`` must be visible to it).

        Raises:
            InvalidRequest: unknown base model, unknown or wrong-purpose file, conflicting method
                fields, an unknown ``from_checkpoint``, an integration that cannot run.
            GPU selection errors: the GPU preference cannot be met.
        """
        method_type, hyper = self._method(body)
        source = body.from_checkpoint or (body.model if is_fine_tune(body.model) else None)
        init_adapter, lora = None, None
        if source is not None:
            origin, init_adapter, source = self._checkpoint(source, principal)
            if is_fine_tune(body.model) and body.model != source:
                raise _invalid(
                    "Give the model to continue either as 'model' or as 'from_checkpoint', not both.", "model"
                )
            if not is_fine_tune(body.model) and self.registry.canonical(body.model) != origin:
                raise _invalid(
                    f"'from_checkpoint' {source} was trained on '{origin}', not '{body.model}'.",
                    "from_checkpoint",
                    "checkpoint_base_mismatch",
                )
            if body.lora is not None:
                raise _invalid("LoRA settings come from the checkpoint when continuing training.", "lora")
            adapter = read_adapter_config(Path(init_adapter))
            lora = LoRASettings(
                r=adapter.r,
                alpha=int(adapter.alpha),
                dropout=adapter.dropout,
                target_modules=tuple(sorted(adapter.target_modules)),
            )
            model = origin
        else:
            model = body.model
        try:
            source_model = self.registry.base(model)
        except ModelNotFound as exc:
            raise _invalid(str(exc), "model", "model_not_found") from None
        base = source_model.model_id
        for param in ("training_file", "validation_file"):
            file_id = getattr(body, param)
            if file_id is None:
                continue
            record = self.repo.get_file(file_id)
            if record is None or not principal.can_see(record.project):
                raise _invalid(f"No file with id '{file_id}'.", param, "file_not_found")
            if record.purpose != FINE_TUNE_PURPOSE:
                raise _invalid(
                    f"File '{file_id}' has purpose '{record.purpose}'; fine-tuning needs "
                    f"purpose '{FINE_TUNE_PURPOSE}'.",
                    param,
                    "invalid_file_purpose",
                )
        for integration in body.integrations or ():
            if integration.type == "wandb" and importlib.util.find_spec("wandb") is None:
                raise _invalid(
                    "The wandb integration needs the 'wandb' package on the server (pip install wandb).",
                    "integrations",
                    "integration_unavailable",
                )
        if body.n_evals is not None and body.validation_file is None:
            raise _invalid("'n_evals' needs a 'validation_file'.", "n_evals")
        placement, _ = self.planner.plan(
            source_model.path, parse_gpu_preference(body.gpu_preference), placement_purpose(method_type)
        )
        if lora is None:
            lora_in = body.lora or LoRAIn()
            linear = linear_modules(source_model.path)
            if lora_in.target_modules and (missing := missing_targets(lora_in.target_modules, linear)):
                raise _invalid(
                    f"lora.target_modules {missing} name no linear module of '{base}' (e.g. q_proj, "
                    "v_proj, or 'all-linear').",
                    "lora.target_modules",
                )
            lora = LoRASettings(
                r=lora_in.r,
                alpha=lora_in.alpha,
                dropout=lora_in.dropout,
                target_modules=tuple(lora_in.target_modules or default_lora_targets(linear)),
            )
        job = JobRecord(
            id=new_id("ftjob"),
            model=base,
            status=JobStatus.VALIDATING_FILES,
            method={"type": method_type, method_type: {"hyperparameters": hyper.model_dump(exclude_none=True)}},
            lora=lora.to_dict(),
            training_file=body.training_file,
            validation_file=body.validation_file,
            suffix=body.suffix,
            seed=body.seed if body.seed is not None else random.randint(0, 2**31 - 1),
            job_metadata=body.metadata,
            gpu_preference=body.gpu_preference,
            gpu=placement.label,
            created_at=now(),
            model_path=str(source_model.path),
            integrations=[i.model_dump(exclude_none=True) for i in body.integrations] if body.integrations else None,
            from_checkpoint=source,
            init_adapter=init_adapter,
            n_checkpoints=body.n_checkpoints or DEFAULT_N_CHECKPOINTS,
            n_evals=body.n_evals,
            project=principal.project,
        )
        return job_object(self.repo.add_job(job))

    def get_job(self, job_id: str, principal: Principal = OPERATOR) -> FineTuningJob:
        """A job ``principal`` may see. Raises NotFound."""
        return job_object(self._job(job_id, principal))

    def list_jobs(
        self, after: str | None, limit: int, principal: Principal = OPERATOR
    ) -> tuple[list[FineTuningJob], bool]:
        """A page of the jobs ``principal`` may see, newest first."""
        jobs, more = self.repo.list_jobs(after, limit, project=principal.scope)
        return [job_object(j) for j in jobs], more

    async def cancel_job(self, job_id: str, principal: Principal = OPERATOR) -> FineTuningJob:
        """Ask the scheduler to cancel: a running job stops at its next step. Waits up to
        ``REQUEST_WAIT_S`` for it to apply and returns the job.

        Raises:
            NotFound: unknown job. Conflict: it already ended (``job_not_cancellable``).
        """
        job = await asyncio.to_thread(self._job, job_id, principal)
        if not await asyncio.to_thread(self.repo.request_flag, job_id, "cancel_requested", True, ACTIVE):
            job = await asyncio.to_thread(self._job, job_id)
            raise Conflict(
                f"Job '{job_id}' has already {job.status}; it cannot be cancelled.",
                param="fine_tuning_job_id",
                code="job_not_cancellable",
            )
        return await self._settle(job_id, lambda j: JobStatus(j.status).ended)

    async def pause_job(self, job_id: str, principal: Principal = OPERATOR) -> FineTuningJob:
        """Ask the scheduler to pause a queued or running job: a running one saves a checkpoint and
        frees its devices. Waits up to ``REQUEST_WAIT_S`` for it to apply.

        Raises:
            NotFound: unknown job. Conflict: not queued or running (``job_not_pausable``).
        """
        await asyncio.to_thread(self._job, job_id, principal)
        if not await asyncio.to_thread(
            self.repo.request_flag, job_id, "pause_requested", True, (JobStatus.QUEUED, JobStatus.RUNNING)
        ):
            job = await asyncio.to_thread(self._job, job_id)
            raise Conflict(
                f"Job '{job_id}' is {job.status}; only queued or running jobs can be paused.",
                param="fine_tuning_job_id",
                code="job_not_pausable",
            )
        return await self._settle(job_id, lambda j: j.status == JobStatus.PAUSED or JobStatus(j.status).ended)

    async def resume_job(self, job_id: str, principal: Principal = OPERATOR) -> FineTuningJob:
        """Lift a pause: the job is queued again and continues from its newest checkpoint.

        Raises:
            NotFound: unknown job. Conflict: it is not paused (``job_not_paused``).
        """
        await asyncio.to_thread(self._job, job_id, principal)
        if not await asyncio.to_thread(self.repo.request_flag, job_id, "pause_requested", False, (JobStatus.PAUSED,)):
            job = await asyncio.to_thread(self._job, job_id)
            raise Conflict(
                f"Job '{job_id}' is {job.status}, not paused.", param="fine_tuning_job_id", code="job_not_paused"
            )
        return await self._settle(job_id, lambda j: j.status != JobStatus.PAUSED)

    async def _settle(self, job_id: str, done) -> FineTuningJob:
        deadline = time.monotonic() + REQUEST_WAIT_S
        job = await asyncio.to_thread(self._job, job_id)
        while not done(job) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            job = await asyncio.to_thread(self._job, job_id)
        return job_object(job)

    def events(self, job_id: str, after: str | None, limit: int, principal: Principal = OPERATOR) -> JobEventList:
        """A page of events, newest first."""
        self._job(job_id, principal)
        events, more = self.repo.list_events(job_id, after, limit)
        return JobEventList(
            data=[
                JobEventObject(
                    id=e.id, created_at=e.created_at, level=e.level, message=e.message, data=e.data, type=e.type
                )
                for e in events
            ],
            has_more=more,
        )

    def checkpoints(
        self, job_id: str, after: str | None, limit: int, principal: Principal = OPERATOR
    ) -> CheckpointList:
        """A page of checkpoints, newest first. Listed once the job succeeded: each is then a
        servable ``ft:…:ckpt-step-N`` model (as on OpenAI, where checkpoints come with success)."""
        job = self._job(job_id, principal)
        rows, more = (
            self.repo.list_checkpoints(job_id, after, limit) if job.status == JobStatus.SUCCEEDED else ([], False)
        )
        data = [
            CheckpointObject(
                id=c.id,
                created_at=c.created_at,
                fine_tuning_job_id=job_id,
                step_number=c.step_number,
                metrics=CheckpointMetrics(**{**c.metrics, "step": c.step_number}),
                fine_tuned_model_checkpoint=str(FineTuneId(job.model, job.suffix or "", job_id, c.step_number)),
            )
            for c in rows
        ]
        return CheckpointList(
            data=data, has_more=more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
        )

    def _job(self, job_id: str, principal: Principal = OPERATOR) -> JobRecord:
        return visible_or_raise(self.repo.get_job(job_id), principal, job_not_found(job_id))

    def _checkpoint(self, source: str, principal: Principal) -> tuple[str, str, str]:
        """``(base model, adapter folder, canonical id)`` of a ``from_checkpoint`` value ``principal``
        may use: an ``ft:`` model (checkpoints included), or a job id with an optional ``:step``."""
        if is_fine_tune(source):
            model_id = source
            if not ModelAccess(self.repo).visible(principal, model_id):
                raise _invalid(
                    f"'from_checkpoint' {source}: no such fine-tuned model or checkpoint.",
                    "from_checkpoint",
                    "checkpoint_not_found",
                )
        else:
            job_id, _, step = source.partition(":")
            job = self.repo.get_job(job_id)
            if job is None or not principal.can_see(job.project) or job.status != JobStatus.SUCCEEDED:
                raise _invalid(
                    f"'from_checkpoint' {source}: no succeeded fine-tuning job '{job_id}'.",
                    "from_checkpoint",
                    "checkpoint_not_found",
                )
            if step and not step.isdigit():
                raise _invalid(f"'from_checkpoint' {source}: the step after ':' must be a number.", "from_checkpoint")
            model_id = str(FineTuneId(job.model, job.suffix or "", job.id, int(step) if step else None))
        record = self.repo.get_model(model_id)
        if record is None or not Path(record.adapter_path, "adapter_config.json").is_file():
            raise _invalid(
                f"'from_checkpoint' {source}: no such fine-tuned model or checkpoint.",
                "from_checkpoint",
                "checkpoint_not_found",
            )
        return record.base_model, record.adapter_path, model_id

    @staticmethod
    def _method(body: FineTuningJobCreate) -> tuple[str, HyperparametersIn]:
        if body.method is not None:
            if body.training_type is not None and METHOD_BY_TRAINING_TYPE[body.training_type] != body.method.type:
                raise _invalid("'training_type' and 'method.type' disagree.", "training_type")
            chosen = getattr(body.method, body.method.type)
            hyper = chosen.hyperparameters if chosen else (body.hyperparameters or HyperparametersIn())
            method_type = body.method.type
        else:
            method_type = METHOD_BY_TRAINING_TYPE[body.training_type or "sft"]
            hyper = body.hyperparameters or HyperparametersIn()
        if method_type == "supervised" and hyper.beta is not None:
            raise _invalid("'beta' applies to DPO only.", "hyperparameters.beta")
        return method_type, hyper
