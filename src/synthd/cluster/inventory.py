"""A Ray cluster's nodes as synthd devices.

Each alive node of ``ray.nodes()`` gives its ``GPU`` count and its GPU type, read from the
``accelerator_type:<TYPE>`` resource (what ``ray start --resources`` declares and what Ray sets on
nodes whose GPUs it detects) or the ``ray.io/accelerator-type`` label, mapped onto synthd's catalog
(Ray's ``A100`` is the catalog's ``A100-40GB``, ``A100-80G`` its ``A100-80GB``). A node without GPUs
offers ``cpu`` with the memory Ray gives its tasks (the ``memory`` resource). A GPU type the catalog
does not know is left out, with a warning: synthd cannot size models for it.

A node's name is its ``synthd.io/node-name`` label (``ray start --labels synthd.io/node-name=gpu-a``),
else ``<hostname>-<first 6 hex digits of its node id>``; device keys are ``<name>/<TYPE>#<GPU id>``.
"""

import logging
from dataclasses import dataclass
from typing import Any

from synthd.gpus.catalog import GPUType, cpu_type, lookup
from synthd.gpus.inventory import GIB, Device

log = logging.getLogger(__name__)
NODE_NAME_LABEL = "synthd.io/node-name"
ACCELERATOR_LABEL = "ray.io/accelerator-type"
ACCELERATOR_RESOURCE_PREFIX = "accelerator_type:"


@dataclass(frozen=True)
class ClusterNode:
    """One alive Ray node as synthd sees it.

    Attributes:
        node_id: Ray's hex node id. name: readable name (see the module docstring).
        gpu: catalog type of its GPUs (None: no GPUs, or a type the catalog lacks).
        gpus: ``GPU`` resource count. ray_accelerator: Ray's name of the type (``A100``), if any.
        memory_gib: the ``memory`` resource (what Ray lets tasks use), GiB.
    """

    node_id: str
    name: str
    gpu: GPUType | None
    gpus: int
    ray_accelerator: str | None
    memory_gib: float

    @property
    def devices(self) -> list[Device]:
        """Its devices: one per GPU, else the ``cpu`` pseudo-device; none for an unknown GPU type."""
        if self.gpus and self.gpu is not None:
            return [Device(self.gpu, index, node=self.name) for index in range(self.gpus)]
        if self.gpus:
            return []
        return [Device(cpu_type(self.memory_gib), 0, node=self.name)]


def ray_accelerator(resources: dict[str, float], labels: dict[str, str]) -> str | None:
    """Ray's accelerator name of a node: its ``accelerator_type:<TYPE>`` resource, else its
    ``ray.io/accelerator-type`` label, else None."""
    declared = [
        key.removeprefix(ACCELERATOR_RESOURCE_PREFIX)
        for key in resources
        if key.startswith(ACCELERATOR_RESOURCE_PREFIX)
    ]
    return declared[0] if declared else labels.get(ACCELERATOR_LABEL)


def catalog_type(accelerator: str) -> GPUType | None:
    """The catalog type of a Ray accelerator name (``H100``, ``A100``, ``A100-80G``, ``L40S``)."""
    return lookup(accelerator)


def cluster_nodes(raw_nodes: list[dict[str, Any]]) -> list[ClusterNode]:
    """``ray.nodes()`` entries → alive ``ClusterNode`` list, in Ray's order."""
    nodes = []
    for raw in raw_nodes:
        if not raw.get("Alive"):
            continue
        resources, labels = raw.get("Resources", {}), raw.get("Labels") or {}
        node_id = raw["NodeID"]
        name = labels.get(NODE_NAME_LABEL) or f"{raw.get('NodeManagerHostname', 'node')}-{node_id[:6]}"
        gpus = int(resources.get("GPU", 0))
        accelerator = ray_accelerator(resources, labels)
        gpu = catalog_type(accelerator) if accelerator else None
        if gpus and gpu is None:
            log.warning(
                "Ray node %s has %d GPUs of type %s, which synthd's catalog does not know; not used",
                name,
                gpus,
                accelerator or "(undeclared: start it with --resources '{\"accelerator_type:<TYPE>\": 1}')",
            )
        nodes.append(ClusterNode(node_id, name, gpu, gpus, accelerator, round(resources.get("memory", 0) / GIB, 1)))
    return nodes


def cluster_devices(nodes: list[ClusterNode]) -> list[Device]:
    """Every node's devices, in node order."""
    return [d for node in nodes for d in node.devices]
