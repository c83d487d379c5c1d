"""The FastAPI application: wiring of manager, serving, metrics, auth and error handling."""

import asyncio
import logging
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synthd import __version__
from synthd.api.errors import install_error_handlers
from synthd.api.ft_routes import router as ft_router
from synthd.api.metrics import ServingMetrics
from synthd.api.routes import ops, v1, warmup
from synthd.gpus.inventory import build_inventory
from synthd.gpus.reservations import Reservations
from synthd.models.adapters import AdapterRef
from synthd.models.pool import ModelManager
from synthd.services.chat import OpenAIServing
from synthd.services.fine_tuning import FineTuningService
from synthd.services.models import ModelsService
from synthd.store.db import open_database
from synthd.store.repository import Repository
from synthd.training.scheduler import JobScheduler

log = logging.getLogger(__name__)


class RequestMetricsMiddleware:
    """Counts ``/v1`` requests by model and HTTP status (pure ASGI: streaming is untouched)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return

        async def send_and_count(message: Message) -> None:
            if message["type"] == "http.response.start":
                model = scope.get("state", {}).get("model_name", "unknown")
                self.metrics.requests.labels(model, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_and_count)


IDLE_CHECK_INTERVAL_S = 1.0


def create_app(
    manager: ModelManager,
    metrics: ServingMetrics,
    models: list[str],
    repo: Repository,
    scheduler: JobScheduler,
    *,
    api_key: str | None = None,
    max_file_bytes: int = 512 * 1024 * 1024,
) -> FastAPI:
    """Build the app. ``models`` are warmed up at start-up in the background (``/ready`` says when);
    any other resolvable model loads on its first request or warmup. The fine-tuning scheduler
    recovers interrupted jobs and then runs the queue.

    The manager's engine observer should already feed ``metrics.observe_sequence``.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async def warm_all() -> None:
            for model in models:
                await manager.acquire(model)
            app.state.ready = True

        async def evict_idle_forever() -> None:
            while True:
                await asyncio.sleep(IDLE_CHECK_INTERVAL_S)
                for model in await manager.evict_idle():
                    log.info("unloaded idle model %s", model)

        scheduler.recover()
        tasks = [asyncio.create_task(warm_all()), asyncio.create_task(evict_idle_forever()),
                 asyncio.create_task(scheduler.run_forever())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await scheduler.shutdown()
            await manager.close()

    app = FastAPI(title="synthd", version=__version__, lifespan=lifespan)
    app.state.serving = OpenAIServing(manager)
    app.state.fine_tuning = FineTuningService(repo, manager)
    app.state.models = ModelsService(manager, repo)
    app.state.max_file_bytes = max_file_bytes
    app.state.metrics = metrics
    app.state.api_key = api_key
    app.state.ready = False
    install_error_handlers(app)
    app.include_router(v1)
    app.include_router(warmup)
    app.include_router(ft_router)
    app.include_router(ops)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app


def fine_tune_adapter(repo: Repository, model_id: str) -> AdapterRef | None:
    """The stored fine-tune ``model_id`` as the engine's ``AdapterRef`` (None if unknown)."""
    record = repo.get_model(model_id)
    return AdapterRef(record.id, record.base_model, Path(record.adapter_path)) if record else None


def build_app(models: list[str], api_key: str | None = None, **manager_options) -> FastAPI:
    """``create_app`` with a fresh ``ModelManager`` (inventory detected, plus ``SYNTHD_GPU_POOL_FILE``)
    and ``ServingMetrics``, configured from settings.

    Raises:
        InventoryError: the declared GPU pool file is unreadable.
    """
    from synthd.config import get_settings

    settings = get_settings()
    metrics = ServingMetrics()
    inventory = build_inventory(settings.gpu_pool_file)
    repo = Repository(open_database(settings.home, settings.database_url), settings.home / "files")
    manager = ModelManager(settings.models_dir, inventory, on_finish=metrics.observe_sequence,
                           adapter_lookup=partial(fine_tune_adapter, repo), max_loaded_adapters=settings.max_loaded_adapters, **{
        "dtype": settings.dtype, "max_num_seqs": settings.max_num_seqs, "max_model_len": settings.max_model_len,
        "idle_timeout_s": settings.model_idle_timeout_s, "max_loaded_models": settings.max_loaded_models,
        **manager_options,
    })
    reservations = Reservations()
    scheduler = JobScheduler(repo, settings.home, models_dir=settings.models_dir, inventory=inventory,
                             reservations=reservations, max_concurrent=settings.max_concurrent_jobs)
    return create_app(manager, metrics, models, repo, scheduler, api_key=api_key, max_file_bytes=settings.max_file_bytes)
