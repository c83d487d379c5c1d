"""Training settings: OpenAI-style hyperparameters resolved to numbers, and PEFT LoRA settings.

``"auto"`` values are chosen from the training set's size n, as OpenAI does:

- ``n_epochs``: 3, raised so that n × epochs reaches 100 examples seen (at most 25 epochs), or
  lowered so that it stays under 25,000 (at least 1) — the rule OpenAI publishes in its cookbook
  ("Data preparation and analysis for chat model fine-tuning": ``TARGET_EPOCHS = 3``,
  ``MIN_TARGET_EXAMPLES = 100``, ``MAX_TARGET_EXAMPLES = 25000``, ``MAX_DEFAULT_EPOCHS = 25``).
- ``batch_size``: about 0.2 % of n, at least 1 and at most 256 (OpenAI's fine-tuning API reference:
  "By default, the batch size will be dynamically configured to be ~0.2% of the number of examples
  in the training set, capped at 256").
- ``learning_rate_multiplier``: OpenAI scales its default with the batch size (0.05, 0.1 or 0.2 —
  larger batches take larger rates). synthd trains LoRA adapters, whose usual rate (2e-4, Hu et al.
  2021 and the PEFT examples) is ``BASE_LEARNING_RATE``; ``AUTO_LR_MULTIPLIERS`` keeps OpenAI's
  1 : 2 : 4 progression over batch sizes on that base, scaled so that the benchmark
  ``benchmarks/auto_hyperparameters.py`` (3 facts taught, held-out paraphrases asked) passes.
- DPO ``beta`` 0.1 (Rafailov et al. 2023, "Direct Preference Optimization", and TRL's default).
"""

import math
from dataclasses import asdict, dataclass, field

BASE_LEARNING_RATE = 2e-4
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TARGET_EPOCHS, MIN_TARGET_EXAMPLES, MAX_TARGET_EXAMPLES = 3, 100, 25_000
MIN_DEFAULT_EPOCHS, MAX_DEFAULT_EPOCHS = 1, 25
AUTO_BATCH_FRACTION, MAX_AUTO_BATCH = 0.002, 256
AUTO_LR_MULTIPLIERS = ((8, 2.5), (64, 5.0), (None, 10.0))
"""``(largest batch size, multiplier)`` steps of the ``auto`` learning-rate multiplier."""
DEFAULT_N_CHECKPOINTS = 3
DEFAULT_N_EVALS = 4


METHOD_BY_TRAINING_TYPE = {"sft": "supervised", "dpo": "dpo"}
"""``method.type`` of each legacy ``training_type``."""


def placement_purpose(method_type: str) -> str:
    """What a job of ``method.type`` ``method_type`` is placed for (``gpus.memory.PURPOSES``): DPO
    holds a reference model beside the policy, so ``dpo`` sizes differently from ``sft``."""
    return "dpo" if method_type == "dpo" else "sft"


def auto_epochs(examples: int) -> int:
    """OpenAI's default epoch count for ``examples`` training examples."""
    if examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // examples)
    if examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // examples)
    return TARGET_EPOCHS


def auto_batch_size(examples: int) -> int:
    """About 0.2 % of ``examples``, in [1, 256]."""
    return max(1, min(MAX_AUTO_BATCH, round(examples * AUTO_BATCH_FRACTION)))


def auto_learning_rate_multiplier(batch_size: int) -> float:
    """The ``auto`` multiplier for ``batch_size`` (see ``AUTO_LR_MULTIPLIERS``)."""
    return next(m for limit, m in AUTO_LR_MULTIPLIERS if limit is None or batch_size <= limit)


@dataclass(frozen=True)
class Hyperparameters:
    """Resolved numbers for one job.

    Attributes:
        n_epochs: passes over the training file.
        batch_size: examples per optimizer step.
        learning_rate_multiplier: scales ``BASE_LEARNING_RATE``.
        beta: DPO temperature of the implicit reward (DPO only).
    """

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None = None

    @property
    def learning_rate(self) -> float:
        """Absolute learning rate."""
        return BASE_LEARNING_RATE * self.learning_rate_multiplier

    def total_steps(self, examples: int) -> int:
        """Optimizer steps for ``examples`` training examples."""
        return math.ceil(examples / self.batch_size) * self.n_epochs

    @classmethod
    def resolve(cls, raw: dict, method: str, examples: int) -> "Hyperparameters":
        """Numbers for ``raw`` (values may be ``"auto"`` or absent) given the training set size."""

        def given(name: str):
            value = raw.get(name, "auto")
            return None if value in (None, "auto") else value

        batch_size = int(given("batch_size") or auto_batch_size(examples))
        multiplier = given("learning_rate_multiplier")
        return cls(
            n_epochs=int(given("n_epochs") or auto_epochs(examples)),
            batch_size=batch_size,
            learning_rate_multiplier=float(
                multiplier if multiplier is not None else auto_learning_rate_multiplier(batch_size)
            ),
            beta=float(given("beta") or 0.1) if method == "dpo" else None,
        )

    @classmethod
    def from_dict(cls, values: dict) -> "Hyperparameters":
        """Inverse of ``to_dict`` (resolved values only)."""
        return cls(
            n_epochs=int(values["n_epochs"]),
            batch_size=int(values["batch_size"]),
            learning_rate_multiplier=float(values["learning_rate_multiplier"]),
            beta=float(values["beta"]) if values.get("beta") is not None else None,
        )

    def to_dict(self) -> dict:
        """OpenAI's ``hyperparameters`` object (beta only for DPO)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class LoRASettings:
    """PEFT ``LoraConfig`` fields (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

    Attributes:
        r: rank of the update matrices.
        alpha: scaling numerator (update scaled by alpha / r).
        dropout: dropout on the LoRA input.
        target_modules: module names to adapt (Llama-style projection names by default).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGET_MODULES)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {**asdict(self), "target_modules": list(self.target_modules)}


def save_steps(total_steps: int, n_checkpoints: int) -> int:
    """Interval between checkpoints so that about ``n_checkpoints`` are saved, the last at the end."""
    return max(1, math.ceil(total_steps / max(1, n_checkpoints)))
