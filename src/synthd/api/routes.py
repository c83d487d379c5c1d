"""Routers for serving: models, chat/completions, GPUs, warmup, health and metrics. They parse,
dispatch to the services, and pick JSON or SSE — nothing more."""

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from synthd.api.auth import CallerPrincipal
from synthd.api.errors import COMMON_ERRORS, domain_error, error_responses
from synthd.api.metrics import ServingMetrics
from synthd.errors import SynthdError
from synthd.models.pool import ModelPool
from synthd.protocol.gpus import (
    GPUReport,
    GPUValidateRequest,
    GPUValidateResponse,
    WarmupRequest,
    WarmupResponse,
    WarmupStatus,
)
from synthd.protocol.openai import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from synthd.services.chat import OpenAIServing, PreparedRequest, sse
from synthd.services.gpus import gpu_report, start_warmup, validate_on_pool, warmup_status
from synthd.services.models import ModelsService
from synthd.services.projects import ModelAccess

T = TypeVar("T")
GPU_HEADER = "X-GPU-Preference"
SELECTED_HEADER = "X-GPU-Selected"

v1 = APIRouter(prefix="/v1", responses=COMMON_ERRORS)
warmup = APIRouter(responses=COMMON_ERRORS)
ops = APIRouter()
LOADING = error_responses(404, 409, 503)
"""A route that may load a model: unknown or hidden model, a GPU preference that cannot be met, a
busy or overloaded pool."""
GENERATION = {
    200: {
        "description": "A JSON object, or server-sent events when `stream` is true.",
        "content": {"text/event-stream": {}},
    },
    **LOADING,
}


def get_serving(request: Request) -> OpenAIServing:
    """The app's ``OpenAIServing``."""
    return request.app.state.serving


def get_pool(request: Request) -> ModelPool:
    """The app's ``ModelPool``."""
    return request.app.state.pool


def get_models(request: Request) -> ModelsService:
    """The app's ``ModelsService``."""
    return request.app.state.models


def get_metrics(request: Request) -> ServingMetrics:
    """The app's ``ServingMetrics``."""
    return request.app.state.metrics


def get_access(request: Request) -> ModelAccess:
    """The app's ``ModelAccess``."""
    return request.app.state.access


Serving = Annotated[OpenAIServing, Depends(get_serving)]
Pool = Annotated[ModelPool, Depends(get_pool)]
Models = Annotated[ModelsService, Depends(get_models)]
Metrics = Annotated[ServingMetrics, Depends(get_metrics)]
Access = Annotated[ModelAccess, Depends(get_access)]
GPUHeader = Annotated[str | None, Header(alias=GPU_HEADER)]


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, racing it against the client's disconnect (vLLM's ``with_cancellation``):
    if the client goes away first, ``work`` (and so its generation) is cancelled."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise asyncio.CancelledError("client disconnected")


async def sse_events(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """``events`` then ``data: [DONE]``; a domain error mid-stream becomes one error event (OpenAI's
    envelope) before ``[DONE]``, never a half-closed socket."""
    try:
        async for event in events:
            yield event
    except SynthdError as exc:
        yield sse(domain_error(exc).body())
    yield "data: [DONE]\n\n"


class LeasedStreamingResponse(StreamingResponse):
    """An SSE response that gives the request's model lease back however the stream ends (finished,
    failed, or the client gone before the first byte)."""

    def __init__(self, events: AsyncIterator[str], prepared: PreparedRequest) -> None:
        super().__init__(
            sse_events(events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", SELECTED_HEADER: prepared.gpu},
        )
        self.prepared = prepared

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.prepared.close()


async def json_reply(request: Request, prepared: PreparedRequest, work: Awaitable) -> JSONResponse:
    """Run ``work`` (the whole generation) under the disconnect race, then answer JSON naming the
    device used; the lease is given back either way."""
    try:
        result = await until_disconnected(request, work)
    finally:
        prepared.close()
    return JSONResponse(result.model_dump(), headers={SELECTED_HEADER: prepared.gpu})


@v1.get("/models", response_model=ModelList)
async def list_models(models: Models, principal: CallerPrincipal) -> ModelList:
    """List every servable model with its warmup status; fine-tunes after their base."""
    return await models.list(principal)


@v1.get("/models/{model_id:path}", response_model=ModelCard, responses=error_responses(404))
async def retrieve_model(model_id: str, models: Models, principal: CallerPrincipal) -> ModelCard:
    """Retrieve one model; ids may contain '/'."""
    return await models.retrieve(model_id, principal)


@v1.delete("/models/{model_id:path}", responses=error_responses(403, 404, 409))
async def delete_model(model_id: str, models: Models, principal: CallerPrincipal) -> dict:
    """Delete a fine-tuned model; requests already running on it finish first."""
    return await models.delete(model_id, principal)


@v1.post("/chat/completions", response_model=None, responses=GENERATION)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, serving: Serving, principal: CallerPrincipal, gpu: GPUHeader = None
) -> Response:
    """Create a chat completion (streamed as SSE when ``stream`` is true)."""
    request.state.requested_model = body.model
    prepared = await until_disconnected(request, serving.prepare_chat(body, gpu, principal))
    request.state.model_name = prepared.model_id
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return LeasedStreamingResponse(serving.chat_stream(prepared, include_usage), prepared)
    return await json_reply(request, prepared, serving.chat(prepared))


@v1.post("/completions", response_model=None, responses=GENERATION)
async def create_completion(
    body: CompletionRequest, request: Request, serving: Serving, principal: CallerPrincipal, gpu: GPUHeader = None
) -> Response:
    """Create a text completion (streamed as SSE when ``stream`` is true)."""
    request.state.requested_model = body.model
    prepared = await until_disconnected(request, serving.prepare_completion(body, gpu, principal))
    request.state.model_name = prepared.model_id
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return LeasedStreamingResponse(serving.completion_stream(prepared, include_usage), prepared)
    return await json_reply(request, prepared, serving.completion(prepared))


@v1.get("/gpus", response_model=GPUReport)
async def list_gpus(pool: Pool) -> GPUReport:
    """GPU catalog, this deployment's inventory, and what is in use."""
    return gpu_report(pool)


@v1.post("/gpus/validate", response_model=GPUValidateResponse, responses=error_responses(404))
async def validate_gpus(
    body: GPUValidateRequest, pool: Pool, access: Access, principal: CallerPrincipal
) -> GPUValidateResponse:
    """Check a GPU preference for a model and purpose without loading anything."""
    await access.check(principal, body.model)
    return await validate_on_pool(pool, body)


@warmup.post("/warmup/{model:path}", response_model=WarmupResponse, responses=LOADING)
@warmup.post("/v1/warmup/{model:path}", response_model=WarmupResponse, include_in_schema=False)
async def warm_model(
    model: str,
    pool: Pool,
    access: Access,
    principal: CallerPrincipal,
    body: WarmupRequest | None = None,
    gpu: GPUHeader = None,
) -> WarmupResponse:
    """Start loading a model in the background, on the preferred GPU."""
    await access.check(principal, model)
    return await start_warmup(pool, model, body.gpu_preference if body else None, gpu)


@warmup.get("/warmup/status/{model:path}", response_model=WarmupStatus, responses=error_responses(404))
@warmup.get("/v1/warmup/status/{model:path}", response_model=WarmupStatus, include_in_schema=False)
async def warm_status(
    model: str, pool: Pool, access: Access, principal: CallerPrincipal, gpu: GPUHeader = None
) -> WarmupStatus:
    """Warmup state of a model: cold, warming, warmed or failed (on the GPUs X-GPU-Preference names)."""
    await access.check(principal, model)
    return await warmup_status(pool, model, gpu)


@ops.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@ops.get("/ready", responses={503: {"description": "Still loading the served models."}, **error_responses(401, 500)})
async def ready(request: Request, pool: Pool) -> JSONResponse:
    """Readiness: 200 once the served models are loaded, else 503."""
    models = pool.loaded_models()
    is_ready = bool(getattr(request.app.state, "ready", False))
    return JSONResponse(
        {"status": "ready" if is_ready else "loading", "models": models}, status_code=200 if is_ready else 503
    )


@ops.get(
    "/metrics",
    responses={
        200: {"description": "Prometheus' text format.", "content": {"text/plain": {}}},
        **error_responses(401, 500),
    },
)
async def metrics(metrics: Metrics, pool: Pool) -> Response:
    """Prometheus metrics."""
    metrics.refresh(pool.engine_stats())
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
