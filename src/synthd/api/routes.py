"""Routers: they parse, dispatch to ``OpenAIServing`` and pick JSON or SSE — nothing more."""

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from synthd.api.auth import require_api_key
from synthd.api.errors import APIError, model_not_found
from synthd.api.metrics import ServingMetrics
from synthd.api.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from synthd.api.serving import OpenAIServing
from synthd.engine.loaded import LoadedModel
from synthd.engine.resolve import ModelNotFound

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25



async def wait_until_loaded(request: Request) -> None:
    """Hold ``/v1`` requests until start-up loading is over; 503 if it failed."""
    try:
        await asyncio.shield(request.app.state.loading)
    except Exception as exc:
        raise APIError(503, f"Model loading failed: {exc}", type="server_error") from None


v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key), Depends(wait_until_loaded)])
ops = APIRouter()


def get_serving(request: Request) -> OpenAIServing:
    """The app's ``OpenAIServing``."""
    return request.app.state.serving


def get_metrics(request: Request) -> ServingMetrics:
    """The app's ``ServingMetrics``."""
    return request.app.state.metrics


Serving = Annotated[OpenAIServing, Depends(get_serving)]
Metrics = Annotated[ServingMetrics, Depends(get_metrics)]


def model_card(loaded: LoadedModel) -> ModelCard:
    """``/v1/models`` entry of a resident model."""
    return ModelCard(id=loaded.model_id, created=loaded.created, root=str(loaded.source.path),
                     max_model_len=loaded.max_model_len)


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


def sse_response(events) -> StreamingResponse:
    """A ``text/event-stream`` response that proxies won't buffer."""
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@v1.get("/models", response_model=ModelList)
async def list_models(serving: Serving) -> ModelList:
    """List the models this server serves."""
    return ModelList(data=[model_card(m) for m in serving.manager.loaded()])


@v1.get("/models/{model_id:path}", response_model=ModelCard)
async def retrieve_model(model_id: str, serving: Serving) -> ModelCard:
    """Retrieve one model; ids may contain '/'."""
    try:
        return model_card(serving.manager.get(model_id))
    except ModelNotFound:
        raise model_not_found(model_id) from None


@v1.post("/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request, serving: Serving) -> Response:
    """Create a chat completion (streamed as SSE when ``stream`` is true)."""
    request.state.model_name = body.model
    prepared = serving.prepare_chat(body)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(serving.chat_stream(prepared, include_usage))
    result = await until_disconnected(request, serving.chat(prepared))
    return JSONResponse(result.model_dump())


@v1.post("/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request, serving: Serving) -> Response:
    """Create a text completion (streamed as SSE when ``stream`` is true)."""
    request.state.model_name = body.model
    prepared = serving.prepare_completion(body)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(serving.completion_stream(prepared, include_usage))
    result = await until_disconnected(request, serving.completion(prepared))
    return JSONResponse(result.model_dump())


@ops.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@ops.get("/ready")
async def ready(request: Request, serving: Serving) -> JSONResponse:
    """Readiness: 200 once the served models are loaded, else 503."""
    models = [m.model_id for m in serving.manager.loaded()]
    is_ready = bool(getattr(request.app.state, "ready", False))
    return JSONResponse({"status": "ready" if is_ready else "loading", "models": models},
                        status_code=200 if is_ready else 503)


@ops.get("/metrics")
async def metrics(metrics: Metrics) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
