"""Wire models of synthd's GPU and warmup routes (``/v1/gpus``, ``/v1/gpus/validate``, ``/warmup``)."""

from typing import Literal

from pydantic import BaseModel

from synthd.protocol.openai import StrictModel


class WarmupRequest(StrictModel):
    """Optional body of ``POST /warmup/{model}``."""

    gpu_preference: str | None = None


class WarmupResponse(BaseModel):
    """Answer to ``POST /warmup/{model}``."""

    status: Literal["warming", "already_warming", "already_warmed"]
    model: str
    gpu: str | None
    node: str | None = None


class WarmupStatus(BaseModel):
    """``GET /warmup/status/{model}``: ``cold | warming | warmed | failed``; ``gpu`` is the placement
    label and ``node`` where it runs (``local``, or a Ray node)."""

    model: str
    status: Literal["cold", "warming", "warmed", "failed"]
    gpu: str | None = None
    node: str | None = None
    load_seconds: float | None = None
    error: str | None = None


class GPUValidateRequest(StrictModel):
    """``POST /v1/gpus/validate`` body."""

    model: str
    gpu_preference: str | None = None
    purpose: Literal["inference", "sft", "dpo"] = "inference"


class GPUValidateResponse(BaseModel):
    """What selection would do, computed without loading anything."""

    valid: bool
    fits: bool
    available: bool
    selected: str | None
    required_gib: float | None
    offered_gib: float | None
    reason: str | None
    model: str
    purpose: str
    gpu_preference: str


class CatalogEntry(BaseModel):
    """One GPU type of the catalog."""

    name: str
    memory_gib: float
    price_per_hour: float
    aliases: list[str]


class DeviceEntry(BaseModel):
    """One device of the inventory and the model holding it, if any."""

    key: str
    type: str
    memory_gib: float
    node: str
    remote: bool
    in_use_by: list[str]


class NodeEntry(BaseModel):
    """One node (this host is ``local``; on a Ray cluster, each node): its device type, how many
    devices it has, how many are free, and what holds the others (models and training jobs)."""

    node: str
    type: str
    devices: int
    free: int
    in_use_by: list[str]


class GPUReport(BaseModel):
    """``GET /v1/gpus``: ``in_use`` maps each served model to its placement label; ``replicas``
    lists each replica's placement with node and device ids (``H100:2@gpu-a/0,1``)."""

    catalog: list[CatalogEntry]
    inventory: list[DeviceEntry]
    nodes: list[NodeEntry]
    in_use: dict[str, str]
    replicas: dict[str, list[str]]
