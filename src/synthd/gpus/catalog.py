"""The GPU types synthd knows, with memory and list price.

Prices are on-demand list prices per GPU-hour from Modal's public pricing page
(https://modal.com/pricing, per-second rates × 3600, as listed in 2025): T4 $0.59, L4 $0.80,
A10G $1.10, L40S $1.95, A100-40GB $2.10, A100-80GB $2.50, H100 $3.95, H200 $4.54, B200 $6.25.
Memory is the vendor's on-board memory per GPU (NVIDIA data sheets), in GiB as marketed (GB).
``cpu`` stands for this host's processor and RAM; its price is 0 (no accelerator to rent).
"""

from dataclasses import dataclass

VALID_COUNTS = (1, 2, 4, 8)
CPU_NAME = "cpu"


@dataclass(frozen=True)
class GPUType:
    """One accelerator kind. ``memory_gib`` is per device; ``price_per_hour`` per device in USD."""

    name: str
    memory_gib: float
    price_per_hour: float
    aliases: tuple[str, ...] = ()
    match: tuple[str, ...] = ()

    @property
    def is_cpu(self) -> bool:
        """True for the host CPU pseudo-type."""
        return self.name == CPU_NAME


CATALOG: tuple[GPUType, ...] = (
    GPUType("T4", 16, 0.59, match=("T4",)),
    GPUType("L4", 24, 0.80, match=("L4",)),
    GPUType("A10G", 24, 1.10, aliases=("A10",), match=("A10G", "A10")),
    GPUType("L40S", 48, 1.95, match=("L40S",)),
    GPUType(
        "A100-40GB",
        40,
        2.10,
        aliases=("A100", "A100-40G", "A100-40"),
        match=("A100-SXM4-40GB", "A100-PCIE-40GB", "A100 40GB"),
    ),
    GPUType(
        "A100-80GB", 80, 2.50, aliases=("A100-80G", "A100-80"), match=("A100-SXM4-80GB", "A100 80GB", "A100-PCIE-80GB")
    ),
    GPUType("H100", 80, 3.95, aliases=("H100-80GB", "H100-80G"), match=("H100",)),
    GPUType("H200", 141, 4.54, match=("H200",)),
    GPUType("B200", 180, 6.25, match=("B200",)),
)


def _index() -> dict[str, GPUType]:
    table: dict[str, GPUType] = {}
    for gpu in CATALOG:
        for key in (gpu.name, *gpu.aliases):
            table[key.upper()] = gpu
    return table


_BY_NAME = _index()


def lookup(name: str) -> GPUType | None:
    """The catalog type for ``name`` or one of its aliases, case-insensitive; None if unknown."""
    return _BY_NAME.get(name.strip().upper())


def cpu_type(memory_gib: float) -> GPUType:
    """The ``cpu`` pseudo-type with this host's RAM as its memory."""
    return GPUType(CPU_NAME, round(memory_gib, 1), 0.0)


def from_device_name(device_name: str) -> GPUType | None:
    """Map a driver-reported name ("NVIDIA H100 80GB HBM3") to a catalog type; None if unknown.

    Longer markers win so "A100-SXM4-80GB" is not taken for the 40 GB part.
    """
    upper = device_name.upper()
    candidates = [(len(marker), gpu) for gpu in CATALOG for marker in gpu.match if marker.upper() in upper]
    if not candidates:
        return None
    best = max(candidates, key=lambda pair: pair[0])[1]
    if best.name == "A100-40GB" and "80GB" in upper:
        return lookup("A100-80GB")
    return best


def valid_types_text() -> str:
    """Human list of accepted names, for error messages."""
    names = ", ".join(g.name for g in CATALOG)
    return f"valid types: {names}, cpu (aliases: A100 = A100-40GB, A100-80G, h100, ...); valid counts: 1, 2, 4, 8"
