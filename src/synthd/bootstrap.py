"""The composition root: settings → store → engine configuration → inventory → pool → job
scheduler → services → the HTTP app. The one place a server is assembled (``synthd serve``
calls ``build_app``); every part below takes what it needs as arguments, so a test can build
any of them alone."""

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI

from synthd.api.app import Components, create_app
from synthd.api.errors import error_reply
from synthd.api.limits import SecurityConfig
from synthd.api.metrics import ServingMetrics
from synthd.config import Settings
from synthd.engine.config import EngineConfig, EngineKind, pick_dtype
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
from synthd.store.models import FineTunedModel
from synthd.store.repository import Repository
from synthd.training.scheduler import JobScheduler

if TYPE_CHECKING:
    from synthd.cluster.wiring import ClusterParts


def build_components(
    settings: Settings, served: list[ModelSource], engine_kind: EngineKind, api_key: str | None = None
) -> Components:
    """Everything one server is made of, configured from ``settings``: the store, a pool (the
    detected inventory plus ``gpu_pool_file``), the job scheduler, the services and metrics. With
    ``settings.ray_address`` the inventory is that Ray cluster's, and replicas and training
    workers run as Ray actors on its nodes (``synthd.cluster``). A vLLM engine's
    ``max_lora_rank`` covers the registered fine-tunes' adapters (``EngineConfig.from_settings``).

    Args:
        engine_kind: ``native`` or ``vllm`` (``auto`` resolved by the caller, ``choose_engine``).
        api_key: the server's admin key; with it, or once any key exists in the store, every
            route but ``/health`` needs a key.

    Raises:
        InventoryError: the declared GPU pool file is unreadable.
        ClusterUnavailable: no Ray cluster answers at the address.
        InvalidRequest: ``api_key`` is an empty string.
    """
    repo = Repository(open_database(settings.home, settings.database_url), settings.home / "files")

    def find(model_id: str) -> AdapterRef | None:
        record = repo.get_model(model_id)
        return _adapter_ref(record) if record else None

    def listing() -> list[AdapterRef]:
        return [_adapter_ref(record) for record in repo.list_models()]

    config = EngineConfig.from_settings(
        settings, engine_kind, adapter_ranks(listing()) if engine_kind == "vllm" else ()
    )
    registry = ModelRegistry(settings.models_dir, served, find, listing)
    reservations = Reservations()
    cluster = _join_cluster(settings, engine_kind, config, reservations, repo)
    inventory = cluster.cluster.inventory if cluster else build_inventory(settings.gpu_pool_file)
    planner = PlacementPlanner(
        inventory, lambda device: pick_dtype(config.dtype, device), config.max_model_len, reservations
    )
    pool = ModelPool(
        registry,
        planner,
        engine_kind=engine_kind,
        engine_config=config,
        max_loaded_models=settings.max_loaded_models,
        idle_timeout_s=settings.model_idle_timeout_s,
        engine_factory=cluster.engine_factory if cluster else None,
        autoscaling=AutoscalingConfig.from_settings(settings),
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
    metrics = ServingMetrics(served=[s.model_id for s in served])
    usage, limiter, access = UsageTally(), RateLimiter(), ModelAccess(repo)

    def on_request(record: RequestRecord) -> None:
        metrics.observe_request(record)
        usage.record(record)
        limiter.record_tokens(record.key_id, record.prompt_tokens + record.completion_tokens)

    serving = OpenAIServing(pool, on_request, access)
    batches = BatchService(
        BatchStore(repo.sessions), repo, BatchRunner(BatchStore(repo.sessions), repo, serving, error_reply)
    )
    return Components(
        pool=pool,
        scheduler=scheduler,
        metrics=metrics,
        serving=serving,
        batches=batches,
        lora_adapters=LoRAAdapterService(pool),
        fine_tuning=FineTuningService(repo, pool.registry, pool.planner),
        models=ModelsService(pool, repo, usage, access),
        access=access,
        keys=KeyService(KeyStore(repo.sessions), api_key),
        limiter=limiter,
        served=[s.model_id for s in served],
        cluster=cluster,
    )


def _adapter_ref(record: FineTunedModel) -> AdapterRef:
    """The servable fine-tune a stored model record names."""
    return AdapterRef(record.id, record.base_model, Path(record.adapter_path), record.created_at)


def _join_cluster(
    settings: Settings, engine_kind: str, config: EngineConfig, reservations: Reservations, repo: Repository
) -> "ClusterParts | None":
    """The Ray cluster's parts when ``settings.ray_address`` names one, else None (Ray is imported
    only then).

    Raises:
        ClusterUnavailable: no Ray cluster answers at the address.
    """
    if not settings.ray_address:
        return None
    from synthd.cluster.wiring import join_cluster

    return join_cluster(
        settings.ray_address, engine_kind, config, reservations, repo, settings.home, settings.shared_dir
    )


def build_app(
    settings: Settings,
    served: list[ModelSource],
    engine_kind: EngineKind,
    *,
    api_key: str | None = None,
    security: SecurityConfig | None = None,
) -> FastAPI:
    """The server's app: ``create_app`` over ``build_components(settings, ...)``, with
    ``security`` (default: the limits of ``settings`` for a server bound to loopback).

    Raises:
        See ``build_components``.
    """
    security = security or SecurityConfig.from_settings(settings, "127.0.0.1")
    return create_app(build_components(settings, served, engine_kind, api_key), security=security)
