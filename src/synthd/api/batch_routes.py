"""Routers for ``/v1/batches`` (OpenAI's Batch API): parse, dispatch, answer."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from synthd.api.auth import CallerPrincipal
from synthd.api.errors import COMMON_ERRORS, error_responses
from synthd.protocol.batches import Batch, BatchCreate, BatchList
from synthd.services.batches import BatchService

router = APIRouter(prefix="/v1", responses=COMMON_ERRORS)
FOUND = error_responses(404)
STATE = error_responses(404, 409)


def get_batches(request: Request) -> BatchService:
    """The app's ``BatchService``."""
    return request.app.state.batches


Batches = Annotated[BatchService, Depends(get_batches)]
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("/batches", response_model=Batch, responses=FOUND)
async def create_batch(body: BatchCreate, batches: Batches, principal: CallerPrincipal) -> Batch:
    """Create a batch from an uploaded JSONL file of requests (purpose ``batch``)."""
    return await batches.create(body, principal)


@router.get("/batches", response_model=BatchList)
async def list_batches(
    batches: Batches, principal: CallerPrincipal, after: str | None = None, limit: Limit = 20
) -> BatchList:
    """List the caller's batches, newest first."""
    return await batches.list(after, limit, principal)


@router.get("/batches/{batch_id}", response_model=Batch, responses=FOUND)
async def retrieve_batch(batch_id: str, batches: Batches, principal: CallerPrincipal) -> Batch:
    """Retrieve a batch."""
    return await batches.retrieve(batch_id, principal)


@router.post("/batches/{batch_id}/cancel", response_model=Batch, responses=STATE)
async def cancel_batch(batch_id: str, batches: Batches, principal: CallerPrincipal) -> Batch:
    """Cancel a batch: running lines stop, finished results are kept."""
    return await batches.cancel(batch_id, principal)
