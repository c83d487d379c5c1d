"""The FastAPI application over a server's parts (``Components``, assembled by ``synthd.bootstrap``):
routers, metrics, auth, limits and error handling.

Every request passes, outermost first: the Host check, authentication and rate limits (headers
only), the body-size cap (counted while read), the request counter, then FastAPI's routing."""

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synthd import __version__
from synthd.api.auth import AuthMiddleware
from synthd.api.batch_routes import router as batch_router
from synthd.api.console import PUBLIC_PAGES
from synthd.api.console import router as console_router
from synthd.api.errors import UnexpectedErrorMiddleware, install_error_handlers
from synthd.api.ft_routes import router as ft_router
from synthd.api.limits import BodyLimitMiddleware, HostCheckMiddleware, SecurityConfig
from synthd.api.lora_routes import router as lora_router
from synthd.api.metrics import ServingMetrics
from synthd.api.openapi import install_openapi
from synthd.api.routes import ops, v1, warmup
from synthd.services.batches import BatchService
from synthd.services.chat import OpenAIServing
from synthd.services.fine_tuning import FineTuningService
from synthd.services.keys import KeyService
from synthd.services.lora_adapters import LoRAAdapterService
from synthd.services.models import ModelsService
from synthd.services.projects import ModelAccess
from synthd.services.rate_limits import RateLimiter

if TYPE_CHECKING:
    from synthd.cluster.wiring import ClusterParts
    from synthd.models.pool import ModelPool
    from synthd.training.scheduler import JobScheduler

log = logging.getLogger(__name__)
IDLE_CHECK_INTERVAL_S = 1.0


class RequestMetricsMiddleware:
    """Counts ``/v1`` requests by model and HTTP status (pure ASGI: streaming is untouched). The
    model is the one the route resolved (``state.model_name``) or a trusted requested name
    (``ServingMetrics.model_label``)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        started = False

        def count(status: int) -> None:
            state = scope.get("state", {})
            model = self.metrics.model_label(state.get("model_name"), state.get("requested_model"))
            self.metrics.requests.labels(model, str(status)).inc()

        async def send_and_count(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                count(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        except Exception:
            if not started:  # answered with a 500 by UnexpectedErrorMiddleware, outside this one
                count(500)
            raise


@dataclass
class Components:
    """What one server is made of (built by ``synthd.bootstrap``, served over HTTP by ``create_app``)."""

    pool: "ModelPool"
    scheduler: "JobScheduler"
    metrics: ServingMetrics
    serving: OpenAIServing
    batches: BatchService
    lora_adapters: LoRAAdapterService
    fine_tuning: FineTuningService
    models: ModelsService
    access: ModelAccess
    keys: KeyService
    limiter: RateLimiter
    served: list[str]
    cluster: "ClusterParts | None" = None


def create_app(parts: Components, *, security: SecurityConfig | None = None) -> FastAPI:
    """The HTTP app over ``parts``: routers, middlewares, error handlers, and a lifespan that
    warms the served models up in the background (``/ready`` says when; any other servable model
    loads on its first request or warmup), unloads idle models, runs the fine-tuning scheduler
    (interrupted jobs recovered first) and the batch runner, and closes them all on shutdown.

    Args:
        security: Host names, body caps, public metrics (default: ``SecurityConfig()``, loopback
            names and the settings' default caps).
    """
    pool, batches = parts.pool, parts.batches
    security = security or SecurityConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def warm_all() -> None:
            for model in parts.served:
                lease = await pool.acquire(model)
                lease.release()
            app.state.ready = True

        async def evict_idle_forever() -> None:
            while True:
                await asyncio.sleep(IDLE_CHECK_INTERVAL_S)
                for model in await pool.evict_idle():
                    log.info("unloaded idle model %s", model)

        parts.scheduler.recover()
        tasks = [
            asyncio.create_task(warm_all()),
            asyncio.create_task(evict_idle_forever()),
            asyncio.create_task(parts.scheduler.run_forever()),
        ]
        if parts.cluster is not None:
            tasks.append(asyncio.create_task(parts.cluster.cluster.watch(pool)))
        batches.runner.start()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await batches.runner.shutdown()
            await parts.scheduler.shutdown()
            await pool.close()
            if parts.cluster is not None:
                parts.cluster.cluster.shutdown()

    app = FastAPI(title="synthd", version=__version__, lifespan=lifespan)
    app.state.pool = pool
    app.state.serving = parts.serving
    app.state.batches = batches
    app.state.lora_adapters = parts.lora_adapters
    app.state.fine_tuning = parts.fine_tuning
    app.state.models = parts.models
    app.state.access = parts.access
    app.state.keys = parts.keys
    app.state.max_file_bytes = security.max_file_bytes
    app.state.metrics = parts.metrics
    app.state.ready = False
    install_error_handlers(app)
    app.include_router(v1)
    app.include_router(warmup)
    app.include_router(ft_router)
    app.include_router(batch_router)
    app.include_router(lora_router)
    app.include_router(ops)
    app.include_router(console_router)
    install_openapi(app, security.public_paths)
    app.add_middleware(RequestMetricsMiddleware, metrics=parts.metrics)
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=security.max_body_bytes, max_upload_bytes=security.max_upload_bytes
    )
    app.add_middleware(
        AuthMiddleware,
        keys=parts.keys,
        limiter=parts.limiter,
        public_paths=security.public_paths,
        public_pages=PUBLIC_PAGES,
    )
    app.add_middleware(HostCheckMiddleware, allowed_hosts=security.allowed_hosts)
    app.add_middleware(UnexpectedErrorMiddleware)  # outermost: see its docstring
    return app
