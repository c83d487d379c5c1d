"""LoRA adapters served on a shared base model: reference, validation before loading.

An adapter folder is PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``. Before
an engine loads it, ``check_adapter`` reads the config and the (small) weights and compares them
with the base model built on the ``meta`` device (no memory): the adapter must be LoRA, every target
module must exist in the base, and every ``lora_A``/``lora_B`` shape must fit the module it adapts.
Its weights must be finite: a NaN or infinite weight (a diverged training run) would load and then
answer every request with NaN logits, so it is refused here, at import and at runtime load alike
(``NonFiniteAdapter``).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from synthd.engine.prompts import CHAT_TEMPLATE_FILE
from synthd.errors import InvalidRequest
from synthd.training.config import DEFAULT_TARGET_MODULES


class UnsupportedAdapter(InvalidRequest):
    """A LoRA adapter using a feature synthd cannot serve next to other adapters; the message names it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="unsupported_adapter")


class AdapterMismatch(InvalidRequest):
    """The adapter cannot run on this base (wrong type, modules or shapes); the message says which."""

    def __init__(self, message: str) -> None:
        super().__init__(
            f"The adapter does not match its base model: {message}", param="model", code="adapter_mismatch"
        )


class NonFiniteAdapter(InvalidRequest):
    """The adapter's weights hold NaN or infinite values (often a diverged training run)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="non_finite_adapter")


@dataclass(frozen=True)
class AdapterRef:
    """A servable fine-tune: its id, base model id, adapter folder and creation time (Unix seconds)."""

    model_id: str
    base_model: str
    path: Path
    created: int = 0


@dataclass(frozen=True)
class AdapterInfo:
    """What ``adapter_config.json`` says: rank, alpha, dropout, target module names and the base it
    was trained on (``base_model_name_or_path``: a hub id or a folder, None when absent)."""

    r: int
    alpha: float
    target_modules: tuple[str, ...]
    dropout: float = 0.0
    base_model_name_or_path: str | None = None
    per_module_ranks: bool = False  # PEFT's rank_pattern: some modules use another rank than r


def read_adapter_config(path: Path) -> AdapterInfo:
    """Parse ``adapter_config.json``.

    Raises:
        AdapterMismatch: unreadable or missing files, or no rank/targets. UnsupportedAdapter: not LoRA,
            DoRA, or ``modules_to_save``.
    """
    config_file = path / "adapter_config.json"
    try:
        if not config_file.is_file() or not (path / "adapter_model.safetensors").is_file():
            raise AdapterMismatch(
                f"{path} is not a PEFT adapter folder (needs adapter_config.json and adapter_model.safetensors)"
            )
        config = json.loads(config_file.read_text())
    except OSError as exc:
        raise AdapterMismatch(f"{path} cannot be read ({exc.strerror or type(exc).__name__})") from None
    except ValueError as exc:
        raise AdapterMismatch(f"{config_file}: invalid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise AdapterMismatch(f"{config_file}: expected a JSON object")
    if config.get("peft_type") != "LORA":
        raise UnsupportedAdapter(f"Only LoRA adapters can be served; this one is {config.get('peft_type')!r}.")
    if config.get("use_dora"):
        raise UnsupportedAdapter(
            "DoRA adapters (use_dora: true) are not supported: their magnitude vectors cannot be "
            "batched with other adapters. Merge it, or train a plain LoRA."
        )
    if config.get("modules_to_save"):
        raise UnsupportedAdapter(
            f"Adapters with modules_to_save ({config['modules_to_save']}) are not supported: they "
            "replace whole base modules, which other adapters on the same base share. Train "
            "without modules_to_save."
        )
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    rank, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if not targets or not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise AdapterMismatch("adapter_config.json has no 'target_modules' (a list of module names)")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1 or not isinstance(alpha, int | float):
        raise AdapterMismatch("adapter_config.json needs 'r' (a positive integer) and a numeric 'lora_alpha'")
    dropout = config.get("lora_dropout", 0.0)
    if not isinstance(dropout, int | float) or isinstance(dropout, bool):
        raise AdapterMismatch("adapter_config.json's 'lora_dropout' must be a number")
    base = config.get("base_model_name_or_path")
    return AdapterInfo(
        r=rank,
        alpha=float(alpha),
        target_modules=tuple(targets),
        dropout=float(dropout),
        base_model_name_or_path=base if isinstance(base, str) and base else None,
        per_module_ranks=bool(config.get("rank_pattern")),
    )


def check_adapter(path: Path, base_path: Path) -> AdapterInfo:
    """Validate an adapter against its base without loading the base's weights (see module docstring).

    Raises:
        AdapterMismatch, UnsupportedAdapter, NonFiniteAdapter: with the first problem found.
    """
    info = read_adapter_config(path)
    linear = linear_modules(base_path)
    missing = missing_targets(info.target_modules, linear)
    if missing:
        raise AdapterMismatch(f"adapter targets modules {missing} that the base model does not have")
    try:
        weights = load_file(path / "adapter_model.safetensors")  # adapters are small beside their base
    except (SafetensorError, OSError) as exc:
        raise AdapterMismatch(f"adapter_model.safetensors cannot be read ({str(exc)[:200]})") from None
    shapes = {key: tuple(tensor.shape) for key, tensor in weights.items()}
    if not any(".lora_A." in key or ".lora_B." in key for key in shapes):
        raise AdapterMismatch(
            "adapter_model.safetensors holds no LoRA weights (lora_A / lora_B): it would serve the base"
        )
    for key, shape in shapes.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        module_name = key.split(".lora_")[0].removeprefix("base_model.model.")
        module = linear.get(module_name)
        if module is None:
            raise AdapterMismatch(f"adapter weight {key} has no matching module in the base model")
        rank = shape[0 if ".lora_A." in key else -1] if info.per_module_ranks else info.r
        expected = (rank, module.in_features) if ".lora_A." in key else (module.out_features, rank)
        if shape != expected:
            raise AdapterMismatch(
                f"adapter weight {key} has shape {shape}; the base model and r={info.r} need {expected}"
            )
    for key, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteAdapter(
                f"The adapter's weight {key} holds NaN or infinite values (a diverged training run?); it cannot be served."
            )
    return info


def linear_modules(base_path: Path) -> dict[str, torch.nn.Linear]:
    """The base model's ``nn.Linear`` modules by qualified name, built on the ``meta`` device (no
    weights read, no memory)."""
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_path))
    return {name: module for name, module in base.named_modules() if isinstance(module, torch.nn.Linear)}


def default_lora_targets(linear: dict[str, torch.nn.Linear]) -> tuple[str, ...]:
    """The LoRA ``target_modules`` a job gets when it names none: every linear module's leaf name
    but the output head (PEFT's ``all-linear``), Llama's projection names first in their usual order
    (``DEFAULT_TARGET_MODULES``), then the architecture's others sorted (``qkv_proj``, ...).

    Raises:
        ValueError: the model has no linear module to adapt.
    """
    leaves = {name.rsplit(".", 1)[-1] for name in linear if name.rsplit(".", 1)[-1] != "lm_head"}
    if not leaves:
        raise ValueError("the model has no linear module LoRA could adapt")
    return tuple(n for n in DEFAULT_TARGET_MODULES if n in leaves) + tuple(sorted(leaves - set(DEFAULT_TARGET_MODULES)))


def stored_chat_template(adapter_path: Path) -> str | None:
    """The chat template a fine-tune was trained with (``CHAT_TEMPLATE_FILE`` in its folder), or None
    for an adapter without one (imported, or trained before synthd stored templates): that one
    chats in its base model's template."""
    try:
        return (adapter_path / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None


def missing_targets(target_modules: tuple[str, ...] | list[str], linear: dict[str, torch.nn.Linear]) -> list[str]:
    """The LoRA ``target_modules`` (leaf names, or PEFT's ``all-linear``) that name no linear module."""
    leaf_names = {name.rsplit(".", 1)[-1] for name in linear}
    return [t for t in target_modules if t != "all-linear" and t not in leaf_names]


def adapter_ranks(adapters: list[AdapterRef]) -> list[int]:
    """The LoRA rank ``r`` of every adapter whose ``adapter_config.json`` can be read (the others fail
    with their reason when requested)."""
    ranks = []
    for adapter in adapters:
        try:
            ranks.append(read_adapter_config(adapter.path).r)
        except InvalidRequest:
            continue
    return ranks
