"""What a server on a Ray cluster is given instead of its local defaults: the cluster's inventory,
the replica factory and the job launcher (``synthd.bootstrap.build_components`` asks for these when
``--ray-address`` is set)."""

from dataclasses import dataclass
from pathlib import Path

from synthd.cluster.jobs import RayLauncher
from synthd.cluster.remote_engine import RayEngineFactory
from synthd.cluster.runtime import RayCluster, connect
from synthd.engine.config import EngineConfig
from synthd.gpus.planner import Reservations
from synthd.store.repository import Repository
from synthd.training.layout import JobLayout


@dataclass
class ClusterParts:
    """The connected cluster, its replica factory (``on_lost`` is set once the pool exists) and
    its job launcher."""

    cluster: RayCluster
    engine_factory: RayEngineFactory
    launcher: RayLauncher


def join_cluster(
    address: str,
    engine_kind: str,
    config: EngineConfig,
    reservations: Reservations,
    repo: Repository,
    home: Path,
    shared_dir: Path | None,
) -> ClusterParts:
    """Connect to the cluster at ``address`` and build the parts; jobs' checkpoints are looked for
    in their folder under ``home`` (``JobLayout.trainer_dir``, where the worker writes them).

    Raises:
        ClusterUnavailable: no cluster answers at ``address``.
    """
    connect(address)
    cluster = RayCluster()
    factory = RayEngineFactory(cluster, engine_kind, config, shared_dir)
    launcher = RayLauncher(cluster, lambda job_id: JobLayout(home, job_id).trainer_dir, reservations, repo.add_event)
    return ClusterParts(cluster, factory, launcher)
