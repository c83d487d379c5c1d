"""OpenAI wire models for batches (platform.openai.com/docs/api-reference/batch), in the order of
openai-python's ``Batch`` type."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictStr, field_validator

from synthd.protocol.openai import StrictModel

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
BATCH_ENDPOINTS = (CHAT_URL, COMPLETIONS_URL)
"""The endpoints a synthd batch may run (OpenAI offers more: embeddings, responses, ...)."""

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


class OutputExpiresAfter(StrictModel):
    """``output_expires_after``: accepted as OpenAI defines it; synthd keeps output files until deleted."""

    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=3600, le=2592000)]


class BatchCreate(StrictModel):
    """``POST /v1/batches`` body. ``endpoint`` is a string so an endpoint synthd does not run gets a
    message naming the ones it does."""

    input_file_id: StrictStr
    endpoint: StrictStr
    completion_window: StrictStr
    metadata: dict[str, StrictStr] | None = None
    output_expires_after: OutputExpiresAfter | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, metadata: dict[str, str] | None) -> dict[str, str] | None:
        if metadata is None:
            return None
        if len(metadata) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} key-value pairs")
        for key, value in metadata.items():
            if len(key) > MAX_METADATA_KEY_CHARS or len(value) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(
                    f"keys are at most {MAX_METADATA_KEY_CHARS} characters and values at most "
                    f"{MAX_METADATA_VALUE_CHARS}"
                )
        return metadata


class BatchErrorItem(BaseModel):
    """One reason a batch failed: ``line`` is the 1-based line of the input file, when one is at fault."""

    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    """``errors`` of a failed batch."""

    object: Literal["list"] = "list"
    data: list[BatchErrorItem]


class BatchRequestCounts(BaseModel):
    """Lines in the input (``total``), answered (``completed``), and in the error file (``failed``)."""

    total: int
    completed: int
    failed: int


class InputTokensDetails(BaseModel):
    """``usage.input_tokens_details``."""

    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    """``usage.output_tokens_details``."""

    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    """Tokens of the batch's completed lines (prompt tokens as ``input_tokens``)."""

    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class Batch(BaseModel):
    """A batch."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: Literal[
        "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
    ]
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts
    model: str | None = None
    usage: BatchUsage | None = None
    metadata: dict[str, str] | None = None


class BatchList(BaseModel):
    """``GET /v1/batches``: newest first, paginated by ``after``."""

    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
