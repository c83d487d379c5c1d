"""Routers for ``/v1/files`` and ``/v1/fine_tuning/jobs``: parse, dispatch, answer.

Synchronous handlers run in FastAPI's thread pool, so their database and file work never blocks the
event loop. The API key is checked before any route runs (``api.auth``); the upload handler takes
the raw request stream and the service parses it itself, writing to disk as it comes. Every handler
passes the caller's principal on, so a key sees its own project's files and jobs only.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from synthd.api.auth import CallerPrincipal
from synthd.api.errors import COMMON_ERRORS, error_responses
from synthd.protocol.fine_tuning import (
    CheckpointList,
    FileDeleted,
    FileList,
    FileObject,
    FineTuningJob,
    FineTuningJobCreate,
    FineTuningJobList,
    JobEventList,
)
from synthd.services.files import file_object
from synthd.services.fine_tuning import FineTuningService

router = APIRouter(prefix="/v1", responses=COMMON_ERRORS)
FOUND = error_responses(404)
STATE = error_responses(404, 409)


def get_service(request: Request) -> FineTuningService:
    """The app's ``FineTuningService``."""
    return request.app.state.fine_tuning


Service = Annotated[FineTuningService, Depends(get_service)]
Limit = Annotated[int, Query(ge=1, le=100)]
FILE_LIMIT_MAX = 10_000
"""``GET /v1/files``'s page size bound and default, as on OpenAI: a client that sends no ``limit`` gets up
to 10,000 files."""
FileLimit = Annotated[int, Query(ge=1, le=FILE_LIMIT_MAX)]
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {"file": {"type": "string", "format": "binary"}, "purpose": {"type": "string"}},
                }
            }
        },
    }
}


@router.post("/files", response_model=FileObject, openapi_extra=UPLOAD_BODY)
async def upload_file(request: Request, service: Service, principal: CallerPrincipal) -> FileObject:
    """Upload a file (multipart ``file`` and ``purpose``)."""
    return await service.files.upload(
        request.headers.get("content-type"), request.stream(), request.app.state.max_file_bytes, principal
    )


@router.get("/files", response_model=FileList)
def list_files(
    service: Service,
    principal: CallerPrincipal,
    purpose: str | None = None,
    after: str | None = None,
    limit: FileLimit = FILE_LIMIT_MAX,
) -> FileList:
    """List uploaded files, newest first."""
    files, more = service.files.list(purpose, after, limit, principal)
    return FileList(data=files, has_more=more)


@router.get("/files/{file_id}", response_model=FileObject, responses=FOUND)
def retrieve_file(file_id: str, service: Service, principal: CallerPrincipal) -> FileObject:
    """Retrieve a file's metadata."""
    return file_object(service.files.get(file_id, principal))


@router.get(
    "/files/{file_id}/content",
    response_class=FileResponse,
    responses={200: {"description": "The file's bytes.", "content": {"application/octet-stream": {}}}, **FOUND},
)
def file_content(file_id: str, service: Service, principal: CallerPrincipal) -> FileResponse:
    """The file's bytes."""
    return FileResponse(service.files.content_path(file_id, principal), media_type="application/octet-stream")


@router.delete("/files/{file_id}", response_model=FileDeleted, responses=FOUND)
def delete_file(file_id: str, service: Service, principal: CallerPrincipal) -> FileDeleted:
    """Delete a file and its bytes."""
    service.files.delete(file_id, principal)
    return FileDeleted(id=file_id)


@router.post("/fine_tuning/jobs", response_model=FineTuningJob, responses=error_responses(409, 503))
def create_job(body: FineTuningJobCreate, service: Service, principal: CallerPrincipal) -> FineTuningJob:
    """Create a supervised (SFT) or DPO fine-tuning job with LoRA."""
    return service.create_job(body, principal)


@router.get("/fine_tuning/jobs", response_model=FineTuningJobList)
def list_jobs(
    service: Service, principal: CallerPrincipal, after: str | None = None, limit: Limit = 20
) -> FineTuningJobList:
    """List jobs, newest first."""
    jobs, more = service.list_jobs(after, limit, principal)
    return FineTuningJobList(data=jobs, has_more=more)


@router.get("/fine_tuning/jobs/{job_id}", response_model=FineTuningJob, responses=FOUND)
def retrieve_job(job_id: str, service: Service, principal: CallerPrincipal) -> FineTuningJob:
    """Retrieve a job."""
    return service.get_job(job_id, principal)


@router.post("/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob, responses=STATE)
async def cancel_job(job_id: str, service: Service, principal: CallerPrincipal) -> FineTuningJob:
    """Cancel a job."""
    return await service.cancel_job(job_id, principal)


@router.post("/fine_tuning/jobs/{job_id}/pause", response_model=FineTuningJob, responses=STATE)
async def pause_job(job_id: str, service: Service, principal: CallerPrincipal) -> FineTuningJob:
    """Pause a queued or running job (it keeps its newest checkpoint and frees its devices)."""
    return await service.pause_job(job_id, principal)


@router.post("/fine_tuning/jobs/{job_id}/resume", response_model=FineTuningJob, responses=STATE)
async def resume_job(job_id: str, service: Service, principal: CallerPrincipal) -> FineTuningJob:
    """Resume a paused job from its newest checkpoint."""
    return await service.resume_job(job_id, principal)


@router.get("/fine_tuning/jobs/{job_id}/events", response_model=JobEventList, responses=FOUND)
def list_events(
    job_id: str, service: Service, principal: CallerPrincipal, after: str | None = None, limit: Limit = 20
) -> JobEventList:
    """A job's events, newest first."""
    return service.events(job_id, after, limit, principal)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", response_model=CheckpointList, responses=FOUND)
def list_checkpoints(
    job_id: str, service: Service, principal: CallerPrincipal, after: str | None = None, limit: Limit = 10
) -> CheckpointList:
    """A job's checkpoints, newest first."""
    return service.checkpoints(job_id, after, limit, principal)
