"""Training settings: OpenAI-style hyperparameters resolved to numbers, and PEFT LoRA settings.

Defaults for ``"auto"``: 3 epochs; batch size min(8, max(1, examples // 8)); learning rate
``BASE_LEARNING_RATE × learning_rate_multiplier`` with multiplier 1.0 (2e-4 is the LoRA learning
rate of Hu et al. 2021 for GPT-2 and the PEFT examples); DPO ``beta`` 0.1 (Rafailov et al. 2023,
"Direct Preference Optimization", and TRL's default).
"""

from dataclasses import asdict, dataclass, field

BASE_LEARNING_RATE = 2e-4
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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

    @classmethod
    def resolve(cls, raw: dict, method: str, examples: int) -> "Hyperparameters":
        """Numbers for ``raw`` (values may be ``"auto"`` or absent) given the training set size."""
        def pick(name: str, auto):
            value = raw.get(name, "auto")
            return auto if value in (None, "auto") else value

        return cls(
            n_epochs=int(pick("n_epochs", 3)),
            batch_size=int(pick("batch_size", min(8, max(1, examples // 8)))),
            learning_rate_multiplier=float(pick("learning_rate_multiplier", 1.0)),
            beta=float(pick("beta", 0.1)) if method == "dpo" else None,
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
