"""Validation and normalisation of fine-tuning JSONL, every problem named with its line number.

Accepted formats (one JSON object per line):

- SFT, OpenAI chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``
  with at least one assistant turn; an assistant message may carry OpenAI's ``"weight": 0 | 1``
  (0: not trained on; default 1). TRL "prompt-completion": ``{"prompt": str, "completion": str}``.
- DPO, OpenAI preference: ``{"input": {"messages": [...]}, "preferred_output": [assistant msg],
  "non_preferred_output": [assistant msg]}``; TRL preference: ``{"prompt", "chosen", "rejected"}``
  with strings or message lists.

Rows are normalised to conversational form: SFT ``{"messages": [...]}`` (a prompt-completion row
becomes a user and an assistant message) with ``weight`` on every assistant message, DPO TRL's
``{"prompt": [...], "chosen": [...], "rejected": [...]}``. Supervised training computes the loss on
assistant messages of weight 1 only, as OpenAI does; a file with no such message has "no trainable
tokens" and is refused.
"""

import json
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
MAX_ERRORS = 5


class DataFormatError(ValueError):
    """The file is not valid for the method; the message lists up to five problems with line numbers."""


@dataclass(frozen=True)
class Dataset:
    """Normalised rows ready for TRL."""

    rows: list[dict]
    method: str


def load_jsonl(content: bytes, method: str) -> Dataset:
    """Parse and validate ``content`` for ``method`` (``supervised`` or ``dpo``).

    Raises:
        DataFormatError: empty file, bad JSON, or rows of the wrong shape (line numbers from 1).
    """
    text = content.decode("utf-8", errors="replace")
    problems: list[str] = []
    rows: list[dict] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: invalid JSON ({exc.msg})")
            continue
        except (ValueError, RecursionError) as exc:  # e.g. integers over 4300 digits, nesting past the stack
            problems.append(f"line {number}: invalid JSON ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        try:
            rows.append(_sft_row(record) if method == "supervised" else _dpo_row(record))
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
        if len(problems) >= MAX_ERRORS:
            break
    if problems:
        raise DataFormatError("; ".join(problems))
    if not rows:
        raise DataFormatError("the file has no examples")
    if method == "supervised" and not any(trainable(row) for row in rows):
        raise DataFormatError("no trainable tokens: every assistant message has weight 0")
    return Dataset(rows, method)


def trainable(row: dict) -> bool:
    """True when a normalised SFT row has an assistant message of weight 1."""
    return any(m["role"] == "assistant" and m["weight"] for m in row["messages"])


def _messages(value: object, where: str, weights: bool = False) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{where}' must be a non-empty list of messages")
    out = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            problem = f"'{where}[{index}]' must be an object with 'role' and 'content'"
            raise ValueError(problem)  # noqa: TRY004 -- user data, not a bug
        if message.get("role") not in ROLES:
            raise ValueError(f"'{where}[{index}].role' must be one of {', '.join(ROLES)}, not {message.get('role')!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"'{where}[{index}].content' must be a string")  # noqa: TRY004 -- user data, not a bug
        clean = {"role": message["role"], "content": message["content"]}
        if "weight" in message:
            if not weights or message["role"] != "assistant":
                raise ValueError(f"'{where}[{index}].weight' is only allowed on assistant messages of supervised data")
            weight = message["weight"]
            if isinstance(weight, bool) or not isinstance(weight, int) or weight not in (0, 1):
                raise ValueError(f"'{where}[{index}].weight' must be 0 or 1, not {json.dumps(weight)}")
        if weights and message["role"] == "assistant":
            clean["weight"] = message.get("weight", 1)
        out.append(clean)
    return out


def _sft_row(record: object) -> dict:
    if not isinstance(record, dict):
        raise ValueError("each line must be a JSON object")  # noqa: TRY004 -- user data, not a bug
    if "messages" in record:
        messages = _messages(record["messages"], "messages", weights=True)
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("'messages' has no assistant turn to learn from")
        return {"messages": messages}
    if "prompt" in record and "completion" in record:
        if not isinstance(record["prompt"], str) or not isinstance(record["completion"], str):
            raise ValueError("'prompt' and 'completion' must be strings")
        if not record["completion"]:
            raise ValueError("'completion' is empty")
        return {
            "messages": [
                {"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record["completion"], "weight": 1},
            ]
        }
    raise ValueError("expected {'messages': [...]} or {'prompt': ..., 'completion': ...} for supervised fine-tuning")


def _as_turns(value: object, where: str, role: str) -> list[dict]:
    if isinstance(value, str):
        if not value:
            raise ValueError(f"'{where}' is empty")
        return [{"role": role, "content": value}]
    return _messages(value, where)


def _dpo_row(record: object) -> dict:
    if not isinstance(record, dict):
        raise ValueError("each line must be a JSON object")  # noqa: TRY004 -- user data, not a bug
    if "input" in record:
        source = record["input"]
        if not isinstance(source, dict):
            raise ValueError("'input' must be an object with 'messages'")
        prompt = _messages(source.get("messages"), "input.messages")
        if "preferred_output" not in record:
            raise ValueError("missing 'preferred_output'")
        if "non_preferred_output" not in record:
            raise ValueError("missing 'non_preferred_output' (the rejected answer)")
        chosen = _messages(record["preferred_output"], "preferred_output")
        rejected = _messages(record["non_preferred_output"], "non_preferred_output")
    elif "prompt" in record:
        if "chosen" not in record:
            raise ValueError("missing 'chosen'")
        if "rejected" not in record:
            raise ValueError("missing 'rejected' (the rejected answer)")
        prompt = _as_turns(record["prompt"], "prompt", "user")
        chosen = _as_turns(record["chosen"], "chosen", "assistant")
        rejected = _as_turns(record["rejected"], "rejected", "assistant")
    else:
        raise ValueError(
            "expected OpenAI's {'input', 'preferred_output', 'non_preferred_output'} or TRL's "
            "{'prompt', 'chosen', 'rejected'} for DPO"
        )
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise ValueError(f"the {name} answer must end with an assistant message")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
