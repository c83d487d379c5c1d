"""Choosing where a model runs: a preference checked against the model's memory and the inventory.

Outcomes (each a ``SelectionError`` subclass; ``synthd.api.errors`` gives their HTTP statuses):
- no option in the preference has enough memory → ``GPUNotSupported`` ("GPU type not supported for
  this model"), giving needed and offered GiB;
- fits but the deployment has no such devices → ``GPUUnavailable``, naming what it has;
- the devices exist but others hold them → ``GPUBusy`` with ``retry_after_s`` (the CPU is shared: it
  is busy when the models already loaded on it leave less memory free than this one needs).
A preference that does not parse is a ``GPUSpecError`` (``synthd.gpus.spec``).
``TYPE:N`` takes N devices of one node (a cluster's node, or this host): tensor parallelism does not
span machines. Nodes on this host (not ``remote``) are tried first.
With no preference (``auto``) the cheapest fitting option available wins (price per hour × count,
then fewer devices).
"""

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from synthd.errors import Conflict, InvalidRequest, Overloaded, SynthdError
from synthd.gpus.catalog import CPU_NAME, VALID_COUNTS, lookup
from synthd.gpus.inventory import LOCAL_NODE, Device, host_memory_gib
from synthd.gpus.spec import GPUOption, GPUPreference

BUSY_RETRY_AFTER_S = 30


@dataclass(frozen=True)
class Placement:
    """The devices chosen for one model; ``label`` is the canonical spec (``H100:2``, ``cpu``)."""

    option: GPUOption
    devices: tuple[Device, ...]

    @property
    def label(self) -> str:
        """Canonical spec of the placement."""
        return str(self.option)

    @property
    def gpus(self) -> tuple[Device, ...]:
        """Its GPUs: the devices other than the host CPU (none for a ``cpu`` placement). The one
        rule for what a placement reserves, sets ``CUDA_VISIBLE_DEVICES`` to and asks Ray for."""
        return tuple(d for d in self.devices if not d.gpu.is_cpu)

    @property
    def offered_gib(self) -> float:
        """Memory of all its devices together."""
        return sum(d.gpu.memory_gib for d in self.devices)

    @property
    def node(self) -> str:
        """The node its devices are on (``local`` for this host)."""
        return self.devices[0].node

    @property
    def where(self) -> str:
        """What ``X-GPU-Selected`` and ``system_fingerprint`` say: the label on this host
        (``cpu``, ``H100:2``); on a cluster node also the node and device ids
        (``H100:2@gpu-a/0,1``, ``cpu@head``)."""
        if self.node == LOCAL_NODE:
            return self.label
        if self.option.is_cpu:
            return f"{self.label}@{self.node}"
        return f"{self.label}@{self.node}/{','.join(str(d.index) for d in self.devices)}"

    @property
    def remote(self) -> bool:
        """True when any device is in a declared pool rather than on this host."""
        return any(d.remote for d in self.devices)


class SelectionError(SynthdError):
    """A preference that cannot be met; ``required_gib``/``offered_gib`` give the memory involved."""

    code_name = "gpu_unavailable"

    def __init__(self, message: str, *, required_gib: float | None = None, offered_gib: float | None = None) -> None:
        SynthdError.__init__(self, message, param="gpu_preference", code=self.code_name)
        self.required_gib = required_gib
        self.offered_gib = offered_gib


class GPUNotSupported(SelectionError, InvalidRequest):
    """No option of the preference has enough memory for the model (``gpu_not_supported``)."""

    code_name = "gpu_not_supported"


class GPUUnavailable(SelectionError, Conflict):
    """The option fits, but this deployment has no such devices (``gpu_unavailable``)."""

    code_name = "gpu_unavailable"


class GPUBusy(SelectionError, Overloaded):
    """The devices exist but other work holds them (``gpu_busy``); retry after ``retry_after_s``."""

    code_name = "gpu_busy"

    def __init__(
        self, message: str, *, required_gib: float | None = None, retry_after_s: int = BUSY_RETRY_AFTER_S
    ) -> None:
        SelectionError.__init__(self, message, required_gib=required_gib)
        self.retry_after_s = retry_after_s


def option_memory_gib(option: GPUOption, inventory: list[Device]) -> float:
    """Memory an option offers: catalog memory × count (the CPU's is this host's RAM)."""
    same = [d for d in inventory if d.gpu.name == option.gpu_name]
    if same:
        return same[0].gpu.memory_gib * option.count
    gpu = lookup(option.gpu_name)
    return (gpu.memory_gib if gpu else host_memory_gib()) * option.count


def describe_inventory(inventory: list[Device]) -> str:
    """``"2x L40S, 8x H100"`` style summary."""
    counts = Counter(d.gpu.name for d in inventory)
    return ", ".join(f"{n}x {name}" if name != CPU_NAME else "cpu" for name, n in counts.items()) or "nothing"


def select_placement(
    preference: GPUPreference,
    required_gib: float | Callable[[GPUOption], float],
    inventory: list[Device],
    busy: set[str] | frozenset[str] = frozenset(),
    cpu_held_gib: float = 0.0,
) -> Placement:
    """Pick devices for a model needing ``required_gib`` (a number, or a function of the option when
    the need depends on the device, e.g. through the dtype it would load in); ``busy`` holds keys of
    devices in use; ``cpu_held_gib`` is the memory models already loaded on the CPU hold.

    Raises:
        SelectionError: see the module docstring.
    """
    need = required_gib if callable(required_gib) else (lambda _option: required_gib)
    options = list(preference.options) or _auto_options(inventory)
    fitting = [o for o in options if option_memory_gib(o, inventory) >= need(o)]
    required_gib = max(need(o) for o in options) if options else 0.0
    if not fitting:
        if preference.is_auto:
            raise GPUNotSupported(
                f"No device in this deployment ({describe_inventory(inventory)}) has enough memory for "
                f"this model: it needs {required_gib:.1f} GiB.",
                required_gib=required_gib,
            )
        offered = max(option_memory_gib(o, inventory) for o in options)
        shown = ", ".join(f"{o} offers {option_memory_gib(o, inventory):.0f} GiB" for o in options)
        raise GPUNotSupported(
            f"GPU type not supported for this model: it needs {required_gib:.1f} GiB; {shown}.",
            required_gib=required_gib,
            offered_gib=offered,
        )
    if preference.is_auto:
        fitting.sort(key=lambda o: (_price(o, inventory), o.count))
    saw_busy = False
    cpu_short = ""
    largest: dict[str, int] = {}
    for option in fitting:
        nodes = _nodes_of(option.gpu_name, inventory)
        largest[option.gpu_name] = max((len(devices) for devices in nodes), default=0)
        if largest[option.gpu_name] < option.count:
            continue
        if option.is_cpu:
            offered = option_memory_gib(option, inventory)
            if offered - cpu_held_gib >= need(option):
                return Placement(option, (nodes[0][0],))
            saw_busy = True
            cpu_short = (
                f" (the cpu has {offered:.1f} GiB, the models loaded on it hold {cpu_held_gib:.1f} GiB and this "
                f"model needs {need(option):.1f} GiB: unload one)"
            )
            continue
        for devices in nodes:
            free = [d for d in devices if d.key not in busy]
            if len(free) >= option.count:
                return Placement(option, tuple(free[: option.count]))
        saw_busy = True
    if saw_busy:
        raise GPUBusy(
            f"{', '.join(map(str, fitting))} exists in this deployment but is in use{cpu_short}; retry later.",
            required_gib=required_gib,
        )
    split = [
        f"{o} needs {o.count} {o.gpu_name} on one node and the most on one node is {largest[o.gpu_name]}"
        for o in fitting
        if 0 < largest[o.gpu_name] < o.count
    ]
    raise GPUUnavailable(
        f"{', '.join(map(str, fitting))} is not available in this deployment; "
        f"it has: {describe_inventory(inventory)}" + (f" ({'; '.join(split)})" if split else "") + ".",
        required_gib=required_gib,
    )


def _nodes_of(gpu_name: str, inventory: list[Device]) -> list[list[Device]]:
    """Devices of one type grouped by node, in inventory order, nodes on this host first."""
    nodes: dict[str, list[Device]] = {}
    for device in inventory:
        if device.gpu.name == gpu_name:
            nodes.setdefault(device.node, []).append(device)
    return sorted(nodes.values(), key=lambda devices: devices[0].remote)


def _auto_options(inventory: list[Device]) -> list[GPUOption]:
    counts = Counter(d.gpu.name for d in inventory)
    return [
        GPUOption(name, count)
        for name, have in counts.items()
        for count in (VALID_COUNTS if name != CPU_NAME else (1,))
        if count <= have
    ]


def _price(option: GPUOption, inventory: list[Device]) -> float:
    device = next(d for d in inventory if d.gpu.name == option.gpu_name)
    return device.gpu.price_per_hour * option.count
