"""OpenAI wire models for files and fine-tuning jobs (platform.openai.com/docs/api-reference/fine-tuning)."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictInt, model_validator

from synthd.protocol.openai import Seed, StrictModel
from synthd.store.models import JobStatus
from synthd.training.config import LoRASettings

Auto = Literal["auto"]
Epochs = Annotated[StrictInt, Field(ge=1, le=50)]
BatchSize = Annotated[StrictInt, Field(ge=1, le=256)]
LearningRateMultiplier = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]
Beta = Annotated[float, Field(gt=0, le=2, allow_inf_nan=False)]


class FileObject(BaseModel):
    """An uploaded file."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"


class FileList(BaseModel):
    """``GET /v1/files``."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False


class FileDeleted(BaseModel):
    """``DELETE /v1/files/{id}``."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class HyperparametersIn(StrictModel):
    """Hyperparameters as sent: numbers or ``"auto"``; ``beta`` is for DPO."""

    n_epochs: Epochs | Auto | None = None
    batch_size: BatchSize | Auto | None = None
    learning_rate_multiplier: LearningRateMultiplier | Auto | None = None
    beta: Beta | Auto | None = None


class MethodConfig(StrictModel):
    """``method.supervised`` or ``method.dpo``."""

    hyperparameters: HyperparametersIn = Field(default_factory=HyperparametersIn)


class Method(StrictModel):
    """``method``: which training and its hyperparameters."""

    type: Literal["supervised", "dpo"]
    supervised: MethodConfig | None = None
    dpo: MethodConfig | None = None

    @model_validator(mode="after")
    def _block_matches_type(self) -> "Method":
        other = "dpo" if self.type == "supervised" else "supervised"
        if getattr(self, other) is not None:
            raise ValueError(f"method.type is '{self.type}' but a '{other}' block was given")
        return self


class LoRAIn(StrictModel):
    """synthd extension: PEFT LoRA settings (LoRA is always on; full fine-tuning is not offered);
    defaults from ``LoRASettings``."""

    r: Annotated[StrictInt, Field(ge=1, le=512)] = LoRASettings.r
    alpha: Annotated[StrictInt, Field(ge=1, le=4096)] = LoRASettings.alpha
    dropout: Annotated[float, Field(ge=0, lt=1)] = LoRASettings.dropout
    target_modules: list[str] | None = None


class WandbSettings(StrictModel):
    """``integrations[].wandb``: the Weights & Biases run (OpenAI's fields)."""

    project: Annotated[str, Field(min_length=1, max_length=128)]
    name: Annotated[str, Field(max_length=128)] | None = None
    entity: Annotated[str, Field(max_length=128)] | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=20)] | None = None


class Integration(StrictModel):
    """One of ``integrations``: only ``wandb`` (OpenAI's one type)."""

    type: Literal["wandb"]
    wandb: WandbSettings


class FineTuningJobCreate(StrictModel):
    """``POST /v1/fine_tuning/jobs`` body: OpenAI's fields, the older top-level ``hyperparameters``,
    the Synth form ``training_type``, and Together's ``from_checkpoint``, ``n_checkpoints``, ``n_evals``."""

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = None
    seed: Seed | None = None
    metadata: dict[str, str] | None = None
    method: Method | None = None
    hyperparameters: HyperparametersIn | None = None
    integrations: Annotated[list[Integration], Field(max_length=5)] | None = None
    # --- synthd extensions ---
    training_type: Literal["sft", "dpo"] | None = None
    lora: LoRAIn | None = None
    gpu_preference: str | None = None
    from_checkpoint: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    n_checkpoints: Annotated[StrictInt, Field(ge=1, le=100)] | None = None
    n_evals: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None


class JobError(BaseModel):
    """Why a job failed."""

    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    """``fine_tuning.job``."""

    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict
    model: str
    organization_id: str = "synthd"
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list | None = None
    metadata: dict | None = None
    method: dict
    user_provided_suffix: str | None = None
    lora: dict | None = None
    gpu: str | None = None
    gpu_preference: str | None = None
    from_checkpoint: str | None = None
    n_checkpoints: int | None = None
    n_evals: int | None = None


class FineTuningJobList(BaseModel):
    """A page of jobs."""

    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class JobEventObject(BaseModel):
    """``fine_tuning.job.event``."""

    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    data: dict | None = None
    type: str


class JobEventList(BaseModel):
    """A page of events, newest first."""

    object: Literal["list"] = "list"
    data: list[JobEventObject]
    has_more: bool


class CheckpointMetrics(BaseModel):
    """A checkpoint's ``metrics`` (OpenAI's names; absent values are omitted)."""

    step: int
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None


class CheckpointObject(BaseModel):
    """``fine_tuning.job.checkpoint``."""

    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class CheckpointList(BaseModel):
    """A page of checkpoints, newest first."""

    object: Literal["list"] = "list"
    data: list[CheckpointObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
