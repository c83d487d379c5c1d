"""Routers for ``/v1/files`` and ``/v1/fine_tuning/jobs``: parse, dispatch, answer."""

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from synthd.api.auth import require_api_key
from synthd.api.errors import APIError, bad_request
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
    file_not_found,
    file_object,
    job_object,
)

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
UPLOAD_CHUNK = 1 << 20


def get_service(request: Request) -> FineTuningService:
    """The app's ``FineTuningService``."""
    return request.app.state.fine_tuning


async def read_upload(request: Request, file: UploadFile) -> bytes:
    """The uploaded bytes, read in 1 MiB chunks up to the app's ``max_file_bytes``.

    Raises:
        APIError: 413 ``file_too_large``.
    """
    limit = request.app.state.max_file_bytes
    content = bytearray()
    while chunk := await file.read(UPLOAD_CHUNK):
        content += chunk
        if len(content) > limit:
            raise APIError(413, f"File is larger than the limit of {limit} bytes.", param="file", code="file_too_large")
    return bytes(content)


Service = Annotated[FineTuningService, Depends(get_service)]
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("/files", response_model=FileObject)
async def upload_file(request: Request, service: Service, file: Annotated[UploadFile, File()],
                      purpose: Annotated[str, Form()]) -> FileObject:
    """Upload a file (multipart ``file`` and ``purpose``)."""
    if purpose not in FILE_PURPOSES:
        raise bad_request(f"Invalid purpose '{purpose}'; expected one of {', '.join(FILE_PURPOSES)}.", "purpose")
    content = await read_upload(request, file)
    return file_object(service.repo.add_file(file.filename or "upload.jsonl", purpose, content))


@router.get("/files", response_model=FileList)
async def list_files(service: Service, purpose: str | None = None) -> FileList:
    """List uploaded files, newest first."""
    return FileList(data=[file_object(r) for r in service.repo.list_files(purpose)])


@router.get("/files/{file_id}", response_model=FileObject)
async def retrieve_file(file_id: str, service: Service) -> FileObject:
    """Retrieve a file's metadata."""
    record = service.repo.get_file(file_id)
    if record is None:
        raise file_not_found(file_id)
    return file_object(record)


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, service: Service) -> Response:
    """The file's bytes."""
    record = service.repo.get_file(file_id)
    if record is None:
        raise file_not_found(file_id)
    return Response(service.repo.read_file(record), media_type="application/octet-stream")


@router.delete("/files/{file_id}", response_model=FileDeleted)
async def delete_file(file_id: str, service: Service) -> FileDeleted:
    """Delete a file and its bytes."""
    if not service.repo.delete_file(file_id):
        raise file_not_found(file_id)
    return FileDeleted(id=file_id)


@router.post("/fine_tuning/jobs", response_model=FineTuningJob)
async def create_job(body: FineTuningJobCreate, service: Service) -> FineTuningJob:
    """Create a supervised (SFT) or DPO fine-tuning job with LoRA."""
    return service.create_job(body)


@router.get("/fine_tuning/jobs", response_model=FineTuningJobList)
async def list_jobs(service: Service, after: str | None = None, limit: Limit = 20) -> FineTuningJobList:
    """List jobs, newest first."""
    jobs, more = service.repo.list_jobs(after, limit)
    return FineTuningJobList(data=[job_object(j) for j in jobs], has_more=more)


@router.get("/fine_tuning/jobs/{job_id}", response_model=FineTuningJob)
async def retrieve_job(job_id: str, service: Service) -> FineTuningJob:
    """Retrieve a job."""
    return service.get_job(job_id)


@router.post("/fine_tuning/jobs/{job_id}/cancel", response_model=FineTuningJob)
async def cancel_job(job_id: str, service: Service) -> FineTuningJob:
    """Cancel a job."""
    return service.cancel_job(job_id)


@router.get("/fine_tuning/jobs/{job_id}/events", response_model=JobEventList)
async def list_events(job_id: str, service: Service, after: str | None = None, limit: Limit = 20) -> JobEventList:
    """A job's events, newest first."""
    return service.events(job_id, after, limit)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints", response_model=CheckpointList)
async def list_checkpoints(job_id: str, service: Service, after: str | None = None, limit: Limit = 10) -> CheckpointList:
    """A job's checkpoints, newest first."""
    return service.checkpoints(job_id, after, limit)
