"""The logits → next-token step for a batch, each row with its own sampling parameters.

Order per row, as vLLM applies them: logit bias, presence/frequency penalties, the structured-output
mask, then temperature, nucleus (top-p) and a draw from the row's own generator (greedy rows take
the argmax). Log-probabilities are those of the raw model distribution (vLLM's default
``raw_logprobs``).

Penalties follow OpenAI's definition (platform.openai.com/docs/advanced-usage, "frequency and
presence penalties"): ``logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty``
over the tokens generated so far. Nucleus sampling is Holtzman et al. 2019, "The Curious Case of
Neural Text Degeneration".
"""

from dataclasses import dataclass, field

import torch

from synthd.engine.guided import GuideMatcher
from synthd.engine.protocol import SamplingParams

GREEDY_TEMPERATURE = 1e-5
"""Below this temperature sampling is numerically greedy (vLLM's ``_SAMPLING_EPS``)."""


@dataclass
class SamplerState:
    """One sequence's sampling state: parameters, its random generator, the token ids generated so
    far and, for structured output, its ``guide``."""

    params: SamplingParams
    guide: GuideMatcher | None = None
    generated: list[int] = field(default_factory=list)
    generator: torch.Generator = field(default_factory=torch.Generator)

    def __post_init__(self) -> None:
        if self.params.seed is not None:
            self.generator.manual_seed(self.params.seed)
        else:
            self.generator.seed()

    @property
    def greedy(self) -> bool:
        """True when decoding takes the argmax."""
        return self.params.temperature < GREEDY_TEMPERATURE

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that changes logits: decided by one batched argmax."""
        p = self.params
        return (
            self.greedy
            and self.guide is None
            and not p.logit_bias
            and p.presence_penalty == 0.0
            and p.frequency_penalty == 0.0
        )


@dataclass(frozen=True)
class Sample:
    """The token chosen for one row, with its log-probability and top alternatives when asked
    (``top``: ``(token id, logprob)`` pairs), or ``error`` when this row failed alone."""

    token: int | None
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()
    error: str | None = None


def _processed(logits: torch.Tensor, state: SamplerState) -> torch.Tensor:
    """Row ``logits`` (``[vocab]``, float32) with bias, penalties and the guide's mask applied."""
    params = state.params
    if params.logit_bias:
        logits = logits.clone()
        ids = torch.tensor([i for i, _ in params.logit_bias], dtype=torch.long)
        logits[ids] += torch.tensor([b for _, b in params.logit_bias], dtype=logits.dtype)
    if (params.presence_penalty or params.frequency_penalty) and state.generated:
        counts = torch.bincount(torch.tensor(state.generated, dtype=torch.long), minlength=logits.shape[-1])
        counts = counts[: logits.shape[-1]].to(logits.dtype)
        logits = logits - counts * params.frequency_penalty - (counts > 0).to(logits.dtype) * params.presence_penalty
    if state.guide is not None:
        logits = logits.clone()
        state.guide.mask(logits)
    return logits


def _draw(logits: torch.Tensor, state: SamplerState) -> int:
    if state.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / state.params.temperature, dim=-1)
    if not bool(torch.isfinite(probs).all()):  # a diverged model (NaN weights) cannot be sampled
        return int(torch.argmax(torch.nan_to_num(logits, nan=float("-inf"))))
    if state.params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > state.params.top_p
        sorted_probs[drop] = 0.0
        return int(order[torch.multinomial(sorted_probs, 1, generator=state.generator)])
    return int(torch.multinomial(probs, 1, generator=state.generator))


def sample_batch(logits: torch.Tensor, states: list[SamplerState]) -> list[Sample]:
    """The next token of every row of ``logits`` (``[batch, vocab]``, any float dtype, any device).

    Plain greedy rows are decided by one argmax over the whole batch where the logits are; only the
    other rows (and rows that want log-probabilities) are copied out as float32, one by one. A row
    whose guide fails gets a ``Sample`` with ``error`` set; the other rows are unaffected. Guides are
    told the token chosen; each state's ``generated`` is extended.
    """
    # max(...).indices, like argmax, gives the first maximum; on CPU it is vectorised for bf16 where
    # argmax is not (measured 4x faster on [32, 49152] logits here)
    choices = torch.max(logits, dim=-1).indices.tolist()
    samples: list[Sample] = []
    for row, state in enumerate(states):
        row_logits = None if state.plain_greedy and state.params.logprobs is None else logits[row].float().cpu()
        try:
            token = choices[row] if state.plain_greedy else _draw(_processed(row_logits, state), state)
            if state.guide is not None:
                state.guide.accept(token)
        except Exception as exc:  # noqa: BLE001 -- one row's guide or parameters must not fail its neighbours
            samples.append(Sample(None, error=f"{type(exc).__name__}: {exc}"))
            continue
        state.generated.append(token)
        if row_logits is None or state.params.logprobs is None:
            samples.append(Sample(token))
            continue
        row_lp = torch.log_softmax(row_logits, dim=-1)
        top: tuple[tuple[int, float], ...] = ()
        if state.params.logprobs > 0:
            values, ids = torch.topk(row_lp, state.params.logprobs)
            top = tuple(zip(ids.tolist(), values.tolist()))
        samples.append(Sample(token, float(row_lp[token]), top))
    return samples
