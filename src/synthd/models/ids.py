"""The one parser and formatter of fine-tuned model ids.

Formats (OpenAI's, without the organisation field, which a self-hosted server does not have):

- a job's model: ``ft:<base>:<suffix>:<job id>`` (suffix may be empty: ``ft:<base>::<job id>``);
- a checkpoint of it: ``ft:<base>:<suffix>:<job id>:ckpt-step-<N>`` (OpenAI's
  ``fine_tuned_model_checkpoint``);
- an imported adapter (``synthd models import``): ``ft:<base>:<name>``.
"""

import re
from dataclasses import dataclass

from synthd.errors import InvalidRequest

PREFIX = "ft:"
CHECKPOINT = re.compile(r"^ckpt-step-(\d+)$")


def is_fine_tune(model: str) -> bool:
    """True for ``ft:`` model ids."""
    return model.startswith(PREFIX)


@dataclass(frozen=True)
class FineTuneId:
    """The parts of an ``ft:`` id.

    Attributes:
        base: the base model id.
        suffix: the job's ``suffix`` (None or "" when none was given), or an imported adapter's name.
        job_id: the ``ftjob-…`` that trained it (None for imported adapters).
        checkpoint_step: the step of a checkpoint id (None for a job's final model).
    """

    base: str
    suffix: str | None = None
    job_id: str | None = None
    checkpoint_step: int | None = None

    def format(self) -> str:
        """The id string."""
        if self.job_id is None:
            return f"{PREFIX}{self.base}:{self.suffix or ''}"
        text = f"{PREFIX}{self.base}:{self.suffix or ''}:{self.job_id}"
        return text if self.checkpoint_step is None else f"{text}:ckpt-step-{self.checkpoint_step}"

    def final(self) -> "FineTuneId":
        """The job's final model for a checkpoint id (itself otherwise)."""
        return FineTuneId(self.base, self.suffix, self.job_id)

    @classmethod
    def parse(cls, model: str) -> "FineTuneId":
        """Split an ``ft:`` id.

        Raises:
            InvalidRequest: not an ``ft:`` id of one of the formats above (``param`` ``model``).
        """
        if not is_fine_tune(model):
            raise InvalidRequest(f"'{model}' is not a fine-tuned model id (ft:...).", param="model",
                                 code="invalid_model_id")
        parts = model[len(PREFIX):].split(":")
        step = None
        if len(parts) == 4 and (match := CHECKPOINT.match(parts[3])):
            step = int(match.group(1))
            parts = parts[:3]
        if not parts[0] or len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2]):
            raise InvalidRequest(f"'{model}' is not a fine-tuned model id: expected ft:<base>:<suffix>:<job id>"
                                 "[:ckpt-step-N] or ft:<base>:<name>.", param="model", code="invalid_model_id")
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        return cls(parts[0], parts[1], parts[2], step)
