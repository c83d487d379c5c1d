"""The FastAPI application: wiring of the model pool, services, metrics, auth, limits and error handling.

Every request passes, outermost first: the Host check, authentication and rate limits (headers
only), the body-size cap (counted while read), the request counter, then FastAPI's routing."""

import asyncio
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from synthd import __version__
from synthd.api.auth import AuthMiddleware
from synthd.api.batch_routes import router as batch_router
from synthd.api.console import PUBLIC_PAGES
from synthd.api.console import router as console_router
from synthd.api.errors import UnexpectedErrorMiddleware, error_reply, install_error_handlers
from synthd.api.ft_routes import router as ft_router
from synthd.api.limits import UPLOAD_ENVELOPE_BYTES, BodyLimitMiddleware, HostCheckMiddleware, SecurityConfig
from synthd.api.lora_routes import router as lora_router
from synthd.api.metrics import ServingMetrics
from synthd.api.openapi import install_openapi
from synthd.api.routes import ops, v1, warmup
from synthd.engine.config import EngineConfig, pick_dtype
from synthd.engine.vllm.lora import max_lora_rank_for
from synthd.gpus.inventory import build_inventory
from synthd.gpus.planner import PlacementPlanner, Reservations
from synthd.models.adapters import AdapterRef, adapter_ranks
from synthd.models.autoscaling import AutoscalingConfig
from synthd.models.pool import ModelPool
from synthd.models.registry import ModelRegistry
from synthd.models.resolve import ModelSource
from synthd.services.batch_runner import BatchRunner
from synthd.services.batches import BatchService
from synthd.services.chat import OpenAIServing, RequestRecord
from synthd.services.fine_tuning import FineTuningService
from synthd.services.keys import KeyService
from synthd.services.lora_adapters import LoRAAdapterService
from synthd.services.models import ModelsService
from synthd.services.projects import ModelAccess
from synthd.services.rate_limits import RateLimiter
from synthd.services.usage import UsageTally
from synthd.store.batches import BatchStore
from synthd.store.db import open_database
from synthd.store.keys import KeyStore
from synthd.store.repository import Repository
from synthd.training.scheduler import JobScheduler

if TYPE_CHECKING:
    from synthd.cluster.wiring import ClusterParts

log = logging.getLogger(__name__)
IDLE_CHECK_INTERVAL_S = 1.0


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


@dataclass
class Components:
    """What one server is made of (built by ``build_components``, wired by ``create_app``)."""

    pool: ModelPool
    repo: Repository
    scheduler: JobScheduler
    metrics: ServingMetrics
    served: list[str]
    cluster: "ClusterParts | None" = None


def create_app(parts: Components, *, api_key: str | None = None, security: SecurityConfig | None = None) -> FastAPI:
    """Build the app. The served models are warmed up at start-up in the background (``/ready``
    says when); any other servable model loads on its first request or warmup. The fine-tuning
    scheduler recovers interrupted jobs and then runs the queue.

    Args:
        api_key: the server's admin key (``--api-key``); with it, or once any key exists in the
            store (``synthd keys create``), every route but ``/health`` needs a key.
        security: Host names, body caps, public metrics (default: loopback names, 8 MiB).

    Raises:
        InvalidRequest: ``api_key`` is an empty string.
    """
    pool, metrics = parts.pool, parts.metrics
    security = security or SecurityConfig()
    usage = UsageTally()
    keys = KeyService(KeyStore(parts.repo.sessions), api_key)
    limiter = RateLimiter()
    access = ModelAccess(parts.repo)

    def on_request(record: RequestRecord) -> None:
        metrics.observe_request(record)
        usage.record(record)
        limiter.record_tokens(record.key_id, record.prompt_tokens + record.completion_tokens)

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
    app.state.serving = OpenAIServing(pool, on_request, access)
    batches = BatchService(
        BatchStore(parts.repo.sessions),
        parts.repo,
        BatchRunner(BatchStore(parts.repo.sessions), parts.repo, app.state.serving, error_reply),
    )
    app.state.batches = batches
    app.state.lora_adapters = LoRAAdapterService(pool)
    app.state.fine_tuning = FineTuningService(parts.repo, pool.registry, pool.planner)
    app.state.models = ModelsService(pool, parts.repo, usage, access)
    app.state.access = access
    app.state.keys = keys
    app.state.max_file_bytes = security.max_file_bytes
    app.state.metrics = metrics
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
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=security.max_body_bytes,
        max_upload_bytes=security.max_file_bytes + UPLOAD_ENVELOPE_BYTES,
    )
    app.add_middleware(
        AuthMiddleware, keys=keys, limiter=limiter, public_paths=security.public_paths, public_pages=PUBLIC_PAGES
    )
    app.add_middleware(HostCheckMiddleware, allowed_hosts=security.allowed_hosts)
    app.add_middleware(UnexpectedErrorMiddleware)  # outermost: see its docstring
    return app


def build_components(
    served: list[ModelSource], engine_kind: str = "native", ray_address: str | None = None, **engine_options
) -> Components:
    """A pool (inventory detected, plus ``SYNTHD_GPU_POOL_FILE``), the store, the job scheduler and
    metrics, configured from settings; ``engine_options`` override ``EngineConfig`` fields. With
    ``ray_address`` (else ``SYNTHD_RAY_ADDRESS``) the inventory is that Ray cluster's, replicas and
    training workers run as Ray actors on its nodes (``synthd.cluster``). A vLLM
    engine's ``max_lora_rank`` is sized from the registered fine-tunes' adapters (vLLM reserves LoRA
    buffers for it at start-up and refuses higher ranks).

    Raises:
        InventoryError: the declared GPU pool file is unreadable.
        ClusterUnavailable: no Ray cluster answers at the address.
    """
    from synthd.config import get_settings

    settings = get_settings()
    repo = Repository(open_database(settings.home, settings.database_url), settings.home / "files")

    def find(model_id: str) -> AdapterRef | None:
        record = repo.get_model(model_id)
        return (
            AdapterRef(record.id, record.base_model, Path(record.adapter_path), record.created_at) if record else None
        )

    def listing() -> list[AdapterRef]:
        return [AdapterRef(r.id, r.base_model, Path(r.adapter_path), r.created_at) for r in repo.list_models()]

    if engine_kind == "vllm" and "max_lora_rank" not in engine_options:
        engine_options["max_lora_rank"] = max_lora_rank_for(adapter_ranks(listing()))
    config = EngineConfig(
        **{
            "kind": engine_kind,
            "dtype": settings.dtype,
            "max_num_seqs": settings.max_num_seqs,
            "max_model_len": settings.max_model_len,
            "max_loras": settings.max_loaded_adapters,
            "kv_cache_tokens": settings.kv_cache_tokens,
            "max_waiting": settings.max_waiting,
            **engine_options,
        }
    )
    registry = ModelRegistry(settings.models_dir, served, find, listing)
    reservations = Reservations()
    cluster = None
    if ray_address := ray_address or settings.ray_address:
        from synthd.cluster.wiring import join_cluster

        cluster = join_cluster(ray_address, engine_kind, config, reservations, repo, settings.home, settings.shared_dir)
    inventory = cluster.cluster.inventory if cluster else build_inventory(settings.gpu_pool_file)
    planner = PlacementPlanner(
        inventory, lambda device: pick_dtype(config.dtype, device), config.max_model_len, reservations
    )
    autoscaling = AutoscalingConfig(settings.min_replicas, settings.max_replicas, settings.target_ongoing_requests)
    pool = ModelPool(
        registry,
        planner,
        engine_kind=engine_kind,
        engine_config=config,
        max_loaded_models=settings.max_loaded_models,
        idle_timeout_s=settings.model_idle_timeout_s,
        engine_factory=cluster.engine_factory if cluster else None,
        autoscaling=autoscaling,
    )
    if cluster is not None:
        cluster.engine_factory.on_lost = pool.lost
    scheduler = JobScheduler(
        repo,
        settings.home,
        models_dir=settings.models_dir,
        planner=planner,
        serving_busy=pool.busy_devices,
        max_concurrent=settings.max_concurrent_jobs,
        launcher=cluster.launcher if cluster else None,
    )
    return Components(pool, repo, scheduler, ServingMetrics(), [s.model_id for s in served], cluster)


def build_app(
    served: list[ModelSource],
    api_key: str | None = None,
    engine_kind: str = "native",
    *,
    security: SecurityConfig | None = None,
    ray_address: str | None = None,
    **engine_options,
) -> FastAPI:
    """``create_app`` over ``build_components`` (on the Ray cluster at ``ray_address``, if any);
    ``security`` defaults to loopback names and the settings' body and upload caps."""
    from synthd.config import get_settings

    settings = get_settings()
    security = security or SecurityConfig(
        max_body_bytes=settings.max_body_bytes, max_file_bytes=settings.max_file_bytes
    )
    return create_app(
        build_components(served, engine_kind, ray_address, **engine_options), api_key=api_key, security=security
    )
