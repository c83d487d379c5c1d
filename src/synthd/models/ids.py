"""The one format of fine-tuned model ids (``ft:``), after OpenAI's.

- a job's model: ``ft:<base>:<suffix>:<job id>`` (``ft:<base>::<job id>`` without a suffix);
- one of its checkpoints: ``ft:<base>:<suffix>:<job id>:ckpt-step-<N>``;
- an adapter imported with ``synthd models import``: ``ft:<base>:<name>``.

``<base>`` is the base model's served id (it holds no ``:``).
"""

import re
from dataclasses import dataclass

FT_PREFIX = "ft:"
CHECKPOINT_PATTERN = re.compile(r"ckpt-step-(\d+)")


def is_fine_tune(model: str) -> bool:
    """True for ``ft:`` model ids."""
    return model.startswith(FT_PREFIX)


@dataclass(frozen=True)
class FineTuneId:
    """A parsed ``ft:`` id: ``base`` model, ``suffix`` (the name, for imports), the ``job_id`` that made
    it (None for imports) and the ``checkpoint_step`` (None for a job's final model)."""

    base: str
    suffix: str = ""
    job_id: str | None = None
    checkpoint_step: int | None = None

    def __str__(self) -> str:
        parts = [FT_PREFIX.rstrip(":"), self.base, self.suffix]
        if self.job_id is not None:
            parts.append(self.job_id)
        if self.checkpoint_step is not None:
            parts.append(f"ckpt-step-{self.checkpoint_step}")
        return ":".join(parts)

    @classmethod
    def parse(cls, model: str) -> "FineTuneId | None":
        """The parts of ``model``, or None when it is not a well-formed ``ft:`` id."""
        if not is_fine_tune(model):
            return None
        parts = model.split(":")[1:]
        if len(parts) < 2 or not parts[0]:
            return None
        if len(parts) == 2:
            return cls(parts[0], parts[1]) if parts[1] else None
        if len(parts) == 3:
            return cls(parts[0], parts[1], parts[2]) if parts[2] else None
        if len(parts) == 4 and parts[2] and (match := CHECKPOINT_PATTERN.fullmatch(parts[3])):
            return cls(parts[0], parts[1], parts[2], int(match.group(1)))
        return None
