"""Choosing where a model runs: a preference checked against the model's memory and the inventory.

Outcomes (each an ``error`` with the HTTP status the API answers with):
- the preference does not parse → 400 ``invalid_gpu_preference``;
- no option in it has enough memory → 400 ``gpu_not_supported`` ("GPU type not supported for this
  model"), giving needed and offered GiB;
- fits but the deployment has no such devices → 409 ``gpu_unavailable``, naming what it has;
- the devices exist but others hold them → 503 ``gpu_busy`` with ``retry_after_s``.
With no preference (``auto``) the cheapest fitting option available wins (price per hour × count,
then fewer devices).
"""

from collections import Counter
from dataclasses import dataclass

from synthd.gpus.catalog import CPU_NAME, VALID_COUNTS, lookup
from synthd.gpus.inventory import Device, host_memory_gib
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
    def offered_gib(self) -> float:
        """Memory of all its devices together."""
        return sum(d.gpu.memory_gib for d in self.devices)

    @property
    def remote(self) -> bool:
        """True when any device is in a declared pool rather than on this host."""
        return any(d.remote for d in self.devices)


class SelectionError(Exception):
    """A preference that cannot be met; ``status``/``code`` map to the API error."""

    def __init__(self, status: int, code: str, message: str, *, required_gib: float | None = None,
                 offered_gib: float | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.required_gib = required_gib
        self.offered_gib = offered_gib
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
    required_gib: float,
    inventory: list[Device],
    busy: set[str] | frozenset[str] = frozenset(),
) -> Placement:
    """Pick devices for a model needing ``required_gib``; ``busy`` holds keys of devices in use.

    Raises:
        SelectionError: see the module docstring.
    """
    options = list(preference.options) or _auto_options(inventory)
    fitting = [o for o in options if option_memory_gib(o, inventory) >= required_gib]
    if not fitting:
        if preference.is_auto:
            raise SelectionError(400, "gpu_not_supported",
                                 f"No device in this deployment ({describe_inventory(inventory)}) has enough memory for "
                                 f"this model: it needs {required_gib:.1f} GiB.", required_gib=required_gib)
        offered = max(option_memory_gib(o, inventory) for o in options)
        shown = ", ".join(f"{o} offers {option_memory_gib(o, inventory):.0f} GiB" for o in options)
        raise SelectionError(400, "gpu_not_supported",
                             f"GPU type not supported for this model: it needs {required_gib:.1f} GiB; {shown}.",
                             required_gib=required_gib, offered_gib=offered)
    if preference.is_auto:
        fitting.sort(key=lambda o: (_price(o, inventory), o.count))
    saw_busy = False
    for option in fitting:
        same_type = [d for d in inventory if d.gpu.name == option.gpu_name]
        if len(same_type) < option.count:
            continue
        if option.gpu_name == CPU_NAME:
            return Placement(option, (same_type[0],))
        free = [d for d in same_type if d.key not in busy]
        local_free = [d for d in free if not d.remote]
        for group in (local_free, free):
            if len(group) >= option.count:
                return Placement(option, tuple(group[:option.count]))
        saw_busy = True
    if saw_busy:
        raise SelectionError(503, "gpu_busy",
                             f"{', '.join(map(str, fitting))} exists in this deployment but is in use; retry later.",
                             required_gib=required_gib, retry_after_s=BUSY_RETRY_AFTER_S)
    raise SelectionError(409, "gpu_unavailable",
                         f"{', '.join(map(str, fitting))} is not available in this deployment; "
                         f"it has: {describe_inventory(inventory)}.", required_gib=required_gib)


def _auto_options(inventory: list[Device]) -> list[GPUOption]:
    counts = Counter(d.gpu.name for d in inventory)
    return [GPUOption(name, count) for name, have in counts.items()
            for count in (VALID_COUNTS if name != CPU_NAME else (1,)) if count <= have]


def _price(option: GPUOption, inventory: list[Device]) -> float:
    device = next(d for d in inventory if d.gpu.name == option.gpu_name)
    return device.gpu.price_per_hour * option.count
