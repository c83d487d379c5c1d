"""Routers for ``/v1/batches`` (OpenAI's Batch API): parse, dispatch, answer."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from synthd.api.auth import require_api_key
from synthd.protocol.batches import Batch, BatchCreate, BatchList
from synthd.services.batches import BatchService

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


def get_batches(request: Request) -> BatchService:
    """The app's ``BatchService``."""
    return request.app.state.batches


Batches = Annotated[BatchService, Depends(get_batches)]
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("/batches", response_model=Batch)
async def create_batch(body: BatchCreate, batches: Batches) -> Batch:
    """Create a batch from an uploaded JSONL file of requests (purpose ``batch``)."""
    return await batches.create(body)


@router.get("/batches", response_model=BatchList)
async def list_batches(batches: Batches, after: str | None = None, limit: Limit = 20) -> BatchList:
    """List batches, newest first."""
    return await batches.list(after, limit)


@router.get("/batches/{batch_id}", response_model=Batch)
async def retrieve_batch(batch_id: str, batches: Batches) -> Batch:
    """Retrieve a batch."""
    return await batches.retrieve(batch_id)


@router.post("/batches/{batch_id}/cancel", response_model=Batch)
async def cancel_batch(batch_id: str, batches: Batches) -> Batch:
    """Cancel a batch: running lines stop, finished results are kept."""
    return await batches.cancel(batch_id)
