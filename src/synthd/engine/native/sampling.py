"""Per-sequence sampling parameters and the logits → next-token step.

Penalties follow OpenAI's definition (platform.openai.com/docs/advanced-usage, "frequency and
presence penalties"): ``logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty``
over the tokens generated so far. Nucleus sampling is Holtzman et al. 2019, "The Curious Case of
Neural Text Degeneration".
"""

from dataclasses import dataclass, field
from typing import Any

import torch

# Below this temperature sampling is numerically greedy (vLLM's _SAMPLING_EPS); dividing by it overflows.
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence is decoded.

    ``temperature == 0`` is greedy (argmax, deterministic). ``max_tokens`` counts generated tokens.
    ``stop`` strings end the output and are not included in it. ``seed`` makes sampling
    reproducible. ``ignore_eos`` (a vLLM extension) keeps generating past end-of-sequence tokens.
    ``grammar`` (from ``GuidedDecoding.compile``) restricts the output to a JSON schema.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    grammar: str | None = None

    @property
    def greedy(self) -> bool:
        """True when decoding takes the argmax (temperature below ``GREEDY_TEMPERATURE``)."""
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def penalised(self) -> bool:
        """True when a presence or frequency penalty applies."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass
class SamplerState:
    """Mutable per-sequence sampling state: its random generator, generated token ids and, for
    guided decoding, its ``guide`` (anything with ``mask(logits)`` and ``accept(token)``)."""

    params: SamplingParams
    guide: Any = None
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator = field(default_factory=torch.Generator)

    def __post_init__(self) -> None:
        if self.params.seed is not None:
            self.generator.manual_seed(self.params.seed)
        else:
            self.generator.seed()


def apply_penalties(logits: torch.Tensor, state: SamplerState) -> torch.Tensor:
    """Return ``logits`` (shape ``[vocab]``) with presence/frequency penalties applied."""
    if not state.params.penalised or not state.generated:
        return logits
    ids = torch.tensor(state.generated, dtype=torch.long)
    counts = torch.bincount(ids, minlength=logits.shape[-1]).to(logits.dtype)
    return logits - counts * state.params.frequency_penalty - (counts > 0).to(logits.dtype) * state.params.presence_penalty


def sample_row(logits: torch.Tensor, state: SamplerState) -> int:
    """Pick the next token id from one row of float32 logits (shape ``[vocab]``)."""
    logits = apply_penalties(logits, state)
    params = state.params
    if params.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if not bool(torch.isfinite(probs).all()):  # a diverged model (NaN weights) cannot be sampled
        return int(torch.argmax(torch.nan_to_num(logits, nan=float("-inf"))))
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        drop = cumulative - sorted_probs > params.top_p
        sorted_probs[drop] = 0.0
        choice = torch.multinomial(sorted_probs, 1, generator=state.generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=state.generator))


def sample_batch(logits: torch.Tensor, states: list[SamplerState]) -> list[int]:
    """Next token for every row of ``logits`` (shape ``[batch, vocab]``, float32).

    Rows with a guide are masked first (in place). Greedy rows without penalties are decided in one
    vectorised argmax; the rest row by row. Guides are then told the token chosen.
    """
    guided = [row for row, state in enumerate(states) if state.guide is not None]
    for row in guided:
        states[row].guide.mask(logits[row])
    choices = torch.argmax(logits, dim=-1).tolist()
    for row, state in enumerate(states):
        if not state.params.greedy or state.params.penalised:
            choices[row] = sample_row(logits[row], state)
    for row in guided:
        states[row].guide.accept(choices[row])
    return choices
