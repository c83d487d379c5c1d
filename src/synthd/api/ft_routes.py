"""Routers for ``/v1/files`` and ``/v1/fine_tuning/jobs``: parse, dispatch, answer."""

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from synthd.api.auth import CallerPrincipal
from synthd.api.errors import COMMON_ERRORS, APIError, bad_request, error_responses
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
from synthd.services.fine_tuning import (
    FILE_PURPOSES,
    FineTuningService,
    file_object,
    job_object,
)

router = APIRouter(prefix="/v1", responses=COMMON_ERRORS)
FOUND = error_responses(404)
UPLOAD_CHUNK = 1 << 20


def get_service(request: Request) -> FineTuningService:
    """The app's ``FineTuningService``."""
    return request.app.state.fine_tuning


Service = Annotated[FineTuningService, Depends(get_service)]
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("/files", response_model=FileObject)
async def upload_file(request: Request, service: Service, principal: CallerPrincipal,
                      file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]) -> FileObject:
    """Upload a file (multipart ``file`` and ``purpose``)."""
    if purpose not in FILE_PURPOSES:
        raise bad_request(f"Invalid purpose '{purpose}'; expected one of {', '.join(FILE_PURPOSES)}.", "purpose")
    limit = request.app.state.max_file_bytes
    content = bytearray()
    while chunk := await file.read(UPLOAD_CHUNK):
        content += chunk
        if len(content) > limit:
            raise APIError(413, f"File is larger than the limit of {limit} bytes.", param="file", code="file_too_large")
    return file_object(service.repo.add_file(file.filename or "upload.jsonl", purpose, bytes(content),
                                             principal.project))


@router.get("/files", response_model=FileList)
async def list_files(service: Service, principal: CallerPrincipal, purpose: str | None = None) -> FileList:
    """List uploaded files, newest first."""
    return FileList(data=[file_object(r) for r in service.repo.list_files(purpose, principal.scope)])


@router.get("/files/{file_id}", response_model=FileObject, responses=FOUND)
async def retrieve_file(file_id: str, service: Service, principal: CallerPrincipal) -> FileObject:
    """Retrieve a file's metadata."""
    return file_object(service.visible_file(file_id, principal))


@router.get("/files/{file_id}/content", responses={200: {"description": "The file's bytes.", "content": {
    "application/octet-stream": {}}}, **FOUND})
async def file_content(file_id: str, service: Service, principal: CallerPrincipal) -> Response:
    """The file's bytes."""
    record = service.visible_file(file_id, principal)
    return Response(service.repo.read_file(record), media_type="application/octet-stream")


@router.delete("/files/{file_id}", response_model=FileDeleted, responses=FOUND)
async def delete_file(file_id: str, service: Service, principal: CallerPrincipal) -> FileDeleted:
    """Delete a file and its bytes."""
    service.repo.delete_file(service.visible_file(file_id, principal).id)
    return FileDeleted(id=file_id)


@router.post("/fine_tuning/jobs", response_model=FineTuningJob, responses=error_responses(409, 503))
async def create_job(body: FineTuningJobCreate, service: Service, principal: CallerPrincipal) -> FineTuningJob:
    """Create a supervised (SFT) or DPO fine-tuning job with LoRA."""
    return service.create_job(body, principal)


@router.get("/fine_tuning/jobs", response_model=FineTuningJobList)
async def list_jobs(service: Service, principal: CallerPrincipal, after: str | None = None,
                    limit: Limit = 20) -> FineTuningJobList:
    """List jobs, newest first."""
    jobs, more = service.repo.list_jobs(after, limit, project=principal.scope)
    return FineTuningJobList(data=[job_object(j) for j in jobs], has_more=more)


@router.get("/fine_tuning/jobs/{job_id}", response_model=FineTuningJob, responses=FOUND)
async def retrieve_job(job_id: str, service: Service, principal: CallerPrincipal) -> FineTuningJob:
    """Retrieve a job."""
    return service.get_job(job_id, principal)


@router.post("/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob, responses=error_responses(404, 409))
async def cancel_job(job_id: str, service: Service, principal: CallerPrincipal) -> FineTuningJob:
    """Cancel a job."""
    return service.cancel_job(job_id, principal)


@router.get("/fine_tuning/jobs/{job_id}/events", response_model=JobEventList, responses=FOUND)
async def list_events(job_id: str, service: Service, principal: CallerPrincipal, after: str | None = None,
                      limit: Limit = 20) -> JobEventList:
    """A job's events, newest first."""
    return service.events(job_id, after, limit, principal)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", response_model=CheckpointList, responses=FOUND)
async def list_checkpoints(job_id: str, service: Service, principal: CallerPrincipal, after: str | None = None,
                           limit: Limit = 10) -> CheckpointList:
    """A job's checkpoints, newest first."""
    return service.checkpoints(job_id, after, limit, principal)
