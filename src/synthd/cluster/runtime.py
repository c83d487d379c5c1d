"""The connection to a Ray cluster and what synthd keeps of it: the nodes, their devices (the
inventory the placement planner and the GPU report use), what Ray says is free, and a watcher that
keeps all of that current and drops replicas whose actor or node is gone.

``synthd serve --ray-address ADDRESS`` (or ``SYNTHD_RAY_ADDRESS``): ``auto`` joins the cluster this
machine is part of (``ray start`` ran here), ``ray://…`` or ``HOST:PORT`` a remote one, ``local``
starts a private Ray on this machine for this server only. The server is a Ray driver in the
``synthd`` namespace; its replica actors and placement groups end with it.
"""

import asyncio
import logging
from typing import TYPE_CHECKING

import ray

from synthd.cluster.inventory import ClusterNode, cluster_devices, cluster_nodes
from synthd.errors import InvalidRequest
from synthd.gpus.inventory import Device
from synthd.gpus.selection import GPUUnavailable

if TYPE_CHECKING:
    from synthd.models.pool import ModelPool

log = logging.getLogger(__name__)
NAMESPACE = "synthd"
WATCH_INTERVAL_S = 2.0


class ClusterUnavailable(InvalidRequest):
    """The Ray cluster cannot be reached at the address given; the message says which and why."""


def connect(address: str) -> None:
    """Join the Ray cluster at ``address`` as a driver (``local``: start a private one here).

    Raises:
        ClusterUnavailable: no cluster answers there.
    """
    if ray.is_initialized():
        return
    options = {"namespace": NAMESPACE, "logging_level": logging.WARNING}
    try:
        if address == "local":
            ray.init(include_dashboard=False, **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterUnavailable(
            f"Cannot join the Ray cluster at '{address}': {exc}. Start one with "
            "'ray start --head' (see docs/guides/cluster.md) or use --ray-address local."
        ) from None


class RayCluster:
    """A connected cluster's nodes and devices, kept current by ``refresh`` / ``watch``.

    ``inventory`` is one list object for the life of the process, updated in place, so the
    placement planner and the job launcher that hold it see nodes join and leave.
    """

    def __init__(self) -> None:
        self.inventory: list[Device] = []
        self.nodes: dict[str, ClusterNode] = {}
        self.refresh()

    def refresh(self) -> None:
        """Read the alive nodes from Ray (blocking: one call to the cluster's control store)."""
        nodes = cluster_nodes(ray.nodes())
        self.nodes = {node.name: node for node in nodes}
        devices = cluster_devices(nodes)
        if devices != self.inventory:
            self.inventory[:] = devices

    def node(self, name: str) -> ClusterNode:
        """The alive node called ``name``.

        Raises:
            GPUUnavailable: it left the cluster.
        """
        node = self.nodes.get(name)
        if node is None:
            raise GPUUnavailable(f"The Ray node '{name}' is no longer in the cluster.")
        return node

    def free_gpus(self) -> dict[str, int]:
        """Node name → GPUs Ray has not handed out (to synthd or anyone else)."""
        from ray._private.state import available_resources_per_node

        available = available_resources_per_node()
        return {node.name: int(available.get(node.node_id, {}).get("GPU", 0)) for node in self.nodes.values()}

    async def watch(self, pool: "ModelPool") -> None:
        """Every ``WATCH_INTERVAL_S``: refresh the nodes, drop replicas whose actor died or whose
        node left, and refresh each replica's stats. Runs until cancelled."""
        from synthd.cluster.remote_engine import RemoteEngine

        while True:
            try:
                await asyncio.to_thread(self.refresh)
                alive = {node.node_id for node in self.nodes.values()}
                for replica in pool.replicas():
                    engine = replica.engine
                    if not isinstance(engine, RemoteEngine):
                        continue
                    if engine.alive and engine.node_id in alive:
                        await engine.refresh()
                    if not engine.alive or engine.node_id not in alive:
                        pool.lost(engine, engine.lost_reason or f"its node {replica.placement.node} left the cluster")
            except Exception:  # the watcher outlives any one bad poll
                log.exception("cluster watch failed")
            await asyncio.sleep(WATCH_INTERVAL_S)

    def shutdown(self) -> None:
        """Leave the cluster (this driver's actors and placement groups end with it)."""
        if ray.is_initialized():
            ray.shutdown()
