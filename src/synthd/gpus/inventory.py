"""What this deployment really has: local GPUs (NVML, else torch.cuda), else the host CPU, plus any
pool a config file declares for a cluster.

A declared pool is JSON: ``{"devices": [{"type": "L40S", "count": 2, "node": "node-a"}, ...]}``.
Declared devices are ``remote``: synthd can select them and say so, but only local devices can
run a model in this process (the cluster scheduler issue adds remote placement).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from synthd.gpus.catalog import GPUType, cpu_type, from_device_name, lookup

GIB = 1024**3
LOCAL_NODE = "local"
"""``Device.node`` of this host's own devices."""


class InventoryError(ValueError):
    """The declared pool file is unreadable or names an unknown type."""


@dataclass(frozen=True)
class Device:
    """One device of the deployment. ``index`` is the CUDA ordinal for local GPUs (on a Ray
    cluster: the GPU id Ray gives on ``node``). ``remote``: in a declared pool, not runnable here."""

    gpu: GPUType
    index: int
    node: str = LOCAL_NODE
    remote: bool = False

    @property
    def key(self) -> str:
        """Unique name, e.g. ``local/H100#0`` or ``node-a/L40S#1``."""
        return f"{self.node}/{self.gpu.name}#{self.index}"


def host_memory_gib() -> float:
    """Physical RAM of this host in GiB."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def detect_local_gpus() -> list[Device]:
    """Local NVIDIA GPUs through NVML (``nvidia-ml-py``), else ``torch.cuda``; [] when none.

    A GPU whose name is not in the catalog is listed with its real memory under its own name.
    """
    names_and_memory = _nvml_devices() or _torch_devices()
    devices = []
    for index, (name, memory_gib) in enumerate(names_and_memory):
        gpu = from_device_name(name) or GPUType(name, round(memory_gib, 1), 0.0)
        devices.append(Device(gpu, index))
    return devices


def _nvml_devices() -> list[tuple[str, float]]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError):  # no driver, or no library: no NVIDIA GPU here
        return []
    try:
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            found.append(
                (name.decode() if isinstance(name, bytes) else name, pynvml.nvmlDeviceGetMemoryInfo(handle).total / GIB)
            )
        return found
    finally:
        pynvml.nvmlShutdown()


def _torch_devices() -> list[tuple[str, float]]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        (torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory / GIB)
        for i in range(torch.cuda.device_count())
    ]


def load_pool(path: Path) -> list[Device]:
    """Devices declared in a pool file (see module docstring).

    Raises:
        InventoryError: the file is missing, not JSON, or names an unknown type or a bad count.
    """
    try:
        data = json.loads(path.read_text())
        entries = data["devices"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InventoryError(f"cannot read GPU pool {path}: {exc}") from None
    devices: list[Device] = []
    for entry in entries:
        gpu = lookup(str(entry.get("type", "")))
        count = entry.get("count", 1)
        if gpu is None or not isinstance(count, int) or count < 1:
            raise InventoryError(f"GPU pool {path}: bad entry {entry!r} (type must be in the catalog, count >= 1)")
        node = str(entry.get("node", "pool"))
        start = sum(1 for d in devices if d.node == node and d.gpu.name == gpu.name)
        devices += [Device(gpu, start + i, node=node, remote=True) for i in range(count)]
    return devices


def build_inventory(pool_file: Path | None = None) -> list[Device]:
    """Local GPUs, else the CPU; plus the declared pool's devices when ``pool_file`` is given."""
    local = detect_local_gpus() or [Device(cpu_type(host_memory_gib()), 0)]
    return local + (load_pool(pool_file) if pool_file else [])
