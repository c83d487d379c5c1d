"""Routers: they parse, dispatch to ``OpenAIServing`` and pick JSON or SSE — nothing more."""

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from synthd.api.auth import require_api_key
from synthd.api.metrics import ServingMetrics
from synthd.protocol.gpus import (
    GPUReport,
    GPUValidateRequest,
    GPUValidateResponse,
    WarmupRequest,
    WarmupResponse,
    WarmupStatus,
)
from synthd.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from synthd.services.chat import OpenAIServing, PreparedRequest
from synthd.services.gpus import (
    gpu_report,
    start_warmup,
    validate_preference,
    warmup_status,
)
from synthd.services.models import ModelsService

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25


GPU_HEADER = "X-GPU-Preference"
SELECTED_HEADER = "X-GPU-Selected"

v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
warmup = APIRouter(dependencies=[Depends(require_api_key)])
ops = APIRouter()


def get_serving(request: Request) -> OpenAIServing:
    """The app's ``OpenAIServing``."""
    return request.app.state.serving


def get_metrics(request: Request) -> ServingMetrics:
    """The app's ``ServingMetrics``."""
    return request.app.state.metrics


def get_models(request: Request) -> ModelsService:
    """The app's ``ModelsService``."""
    return request.app.state.models


Serving = Annotated[OpenAIServing, Depends(get_serving)]
Models = Annotated[ModelsService, Depends(get_models)]
Metrics = Annotated[ServingMetrics, Depends(get_metrics)]
GPUHeader = Annotated[str | None, Header(alias=GPU_HEADER)]


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it (and so its generation) if the client goes away first."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise asyncio.CancelledError("client disconnected")


def sse_response(events, prepared: PreparedRequest) -> StreamingResponse:
    """A ``text/event-stream`` response that proxies won't buffer, naming the device used."""
    return StreamingResponse(events, media_type="text/event-stream", headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no", SELECTED_HEADER: prepared.placement.label})


def json_response(body: dict, prepared: PreparedRequest) -> JSONResponse:
    """A JSON response naming the device used."""
    return JSONResponse(body, headers={SELECTED_HEADER: prepared.placement.label})


@v1.get("/models", response_model=ModelList)
async def list_models(models: Models) -> ModelList:
    """List loaded base models and every fine-tuned model."""
    return models.list()


@v1.get("/models/{model_id:path}", response_model=ModelCard)
async def retrieve_model(model_id: str, models: Models) -> ModelCard:
    """Retrieve one model; ids may contain '/'."""
    return models.retrieve(model_id)


@v1.delete("/models/{model_id:path}")
async def delete_model(model_id: str, models: Models) -> dict:
    """Delete a fine-tuned model and its adapter (base models cannot be deleted)."""
    return models.delete(model_id)


@v1.post("/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, serving: Serving,
                                 gpu: GPUHeader = None) -> Response:
    """Create a chat completion (streamed as SSE when ``stream`` is true)."""
    request.state.model_name = body.model
    prepared = await until_disconnected(request, serving.prepare_chat(body, gpu))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(serving.chat_stream(prepared, include_usage), prepared)
    result = await until_disconnected(request, serving.chat(prepared))
    return json_response(result.model_dump(), prepared)


@v1.post("/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request, serving: Serving,
                            gpu: GPUHeader = None) -> Response:
    """Create a text completion (streamed as SSE when ``stream`` is true)."""
    request.state.model_name = body.model
    prepared = await until_disconnected(request, serving.prepare_completion(body, gpu))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(serving.completion_stream(prepared, include_usage), prepared)
    result = await until_disconnected(request, serving.completion(prepared))
    return json_response(result.model_dump(), prepared)


@v1.get("/gpus", response_model=GPUReport)
async def list_gpus(serving: Serving) -> GPUReport:
    """GPU catalog, this deployment's inventory, and what is in use."""
    return gpu_report(serving.manager)


@v1.post("/gpus/validate", response_model=GPUValidateResponse)
async def validate_gpus(body: GPUValidateRequest, serving: Serving) -> GPUValidateResponse:
    """Check a GPU preference for a model and purpose without loading anything."""
    return validate_preference(serving.manager, body)


@warmup.post("/warmup/{model:path}", response_model=WarmupResponse)
@warmup.post("/v1/warmup/{model:path}", response_model=WarmupResponse, include_in_schema=False)
async def warm_model(model: str, serving: Serving, body: WarmupRequest | None = None,
                     gpu: GPUHeader = None) -> WarmupResponse:
    """Start loading a model in the background, on the preferred GPU."""
    return await start_warmup(serving.manager, model, body.gpu_preference if body else None, gpu)


@warmup.get("/warmup/status/{model:path}", response_model=WarmupStatus)
@warmup.get("/v1/warmup/status/{model:path}", response_model=WarmupStatus, include_in_schema=False)
async def warm_status(model: str, serving: Serving) -> WarmupStatus:
    """Warmup state of a model: cold, warming, warmed or failed."""
    return warmup_status(serving.manager, model)


@ops.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@ops.get("/ready")
async def ready(request: Request, serving: Serving) -> JSONResponse:
    """Readiness: 200 once the served models are loaded, else 503."""
    models = [m.model_id for m in serving.manager.resident()]
    is_ready = bool(getattr(request.app.state, "ready", False))
    return JSONResponse({"status": "ready" if is_ready else "loading", "models": models},
                        status_code=200 if is_ready else 503)


@ops.get("/metrics")
async def metrics(metrics: Metrics, serving: Serving) -> Response:
    """Prometheus metrics."""
    metrics.refresh(serving.manager)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
