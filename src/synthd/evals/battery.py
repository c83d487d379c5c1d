"""Eval cases and batteries: the pydantic schema, the built-in battery and battery files.

A case is a prompt plus the check that judges the model's answer. Battery files are JSONL (one
case object per line) or YAML (a list of cases, or a mapping with the list under ``cases``); the
built-in battery is ``builtin.yaml`` beside this module.
"""

import json
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class BatteryError(ValueError):
    """A battery that cannot be used; the message is one line naming the file and the place."""


class MathCheck(BaseModel):
    """Pass when the answer's final number is close to ``answer`` (``math.isclose`` tolerances)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["math"]
    answer: float = Field(allow_inf_nan=False)
    abs_tol: float = Field(default=1e-6, ge=0)
    rel_tol: float = Field(default=1e-4, ge=0)


class CodeCheck(BaseModel):
    """Pass when the answer's code, followed by ``tests``, runs cleanly in the sandbox.

    ``tests`` is Python source of plain ``assert`` statements calling ``entry_point``;
    ``timeout_s`` is wall-clock seconds and ``memory_mb`` the address-space limit in MiB.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["code"]
    entry_point: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    tests: str = Field(min_length=1)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    memory_mb: int = Field(default=512, ge=64, le=8192)


class ExactCheck(BaseModel):
    """Pass when the normalised answer (or its first or last line) equals an accepted answer."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["exact"]
    answers: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)


class ConstraintsCheck(BaseModel):
    """Pass when the answer meets every constraint set; at least one must be set.

    Words are counted with ``\\b[\\w'-]+\\b``; ``line_count`` counts non-empty lines; required and
    forbidden words match case-insensitively as whole words.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["constraints"]
    min_words: int | None = Field(default=None, ge=0)
    max_words: int | None = Field(default=None, ge=1)
    required_words: list[Annotated[str, Field(min_length=1)]] = []
    forbidden_words: list[Annotated[str, Field(min_length=1)]] = []
    line_count: int | None = Field(default=None, ge=1)
    format: Literal["plain", "bullets", "numbered", "json"] = "plain"

    @model_validator(mode="after")
    def _constrains_something(self) -> "ConstraintsCheck":
        if (
            self.min_words is None
            and self.max_words is None
            and not self.required_words
            and not self.forbidden_words
            and self.line_count is None
            and self.format == "plain"
        ):
            raise ValueError("set at least one constraint")
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise ValueError(f"min_words {self.min_words} > max_words {self.max_words}")
        return self


Check = Annotated[MathCheck | CodeCheck | ExactCheck | ConstraintsCheck, Field(discriminator="kind")]
Category = Literal["math", "coding", "reasoning", "creative"]
CATEGORIES: tuple[str, ...] = get_args(Category)


class Case(BaseModel):
    """One eval task: a prompt, optional system message and token cap, and its check.

    ``id`` is unique within a battery. ``reference`` is a known-good answer text, used to test
    that the check accepts a right answer.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    category: Category
    prompt: str = Field(min_length=1)
    system: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    check: Check
    reference: str | None = None


def load_battery(path: Path) -> list[Case]:
    """Read a battery file: ``.jsonl`` (blank lines skipped) or ``.yaml``/``.yml``.

    Raises :class:`BatteryError` on an unreadable file, an unknown suffix, invalid JSON or YAML,
    an invalid case (JSONL: 1-based line number; YAML: 1-based case number), duplicate ids or no
    cases.
    """
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".yaml", ".yml"):
        raise BatteryError(
            f"{path}: unknown battery format {suffix or '(no suffix)'!r} (expected .jsonl, .yaml or .yml)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatteryError(f"{path}: cannot read: {exc}") from exc
    if suffix == ".jsonl":
        return _checked(str(path), _jsonl_items(str(path), text))
    return _checked(str(path), _yaml_items(str(path), text))


def select_categories(cases: Iterable[Case], categories: Sequence[str]) -> list[Case]:
    """The cases in ``categories``, in battery order; an empty ``categories`` keeps every case.

    Raises :class:`BatteryError` naming any category that is not one of :data:`CATEGORIES`.
    """
    unknown = [c for c in dict.fromkeys(categories) if c not in CATEGORIES]
    if unknown:
        raise BatteryError(f"unknown categories: {', '.join(unknown)} (known: {', '.join(CATEGORIES)})")
    return [case for case in cases if not categories or case.category in categories]


def _jsonl_items(source: str, text: str) -> list[tuple[str, Any]]:
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise BatteryError(f"{source}: line {number}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
    return items


def _yaml_items(source: str, text: str) -> list[tuple[str, Any]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BatteryError(f"{source}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc
    if isinstance(data, dict) and "cases" in data:
        data = data["cases"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise BatteryError(f"{source}: expected a list of cases or a mapping with the key 'cases'")
    return [(f"case {number}", item) for number, item in enumerate(data, start=1)]


def _checked(source: str, items: list[tuple[str, Any]]) -> list[Case]:
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for where, item in items:
        try:
            case = Case.model_validate(item)
        except ValidationError as exc:
            raise BatteryError(f"{source}: {where}: {_describe(exc)}") from exc
        if case.id in seen:
            raise BatteryError(f"{source}: {where}: duplicate case id {case.id!r} (first at {seen[case.id]})")
        seen[case.id] = where
        cases.append(case)
    if not cases:
        raise BatteryError(f"{source}: no cases")
    return cases


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as ``field.path: message`` pairs on one line."""
    parts = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"])
        message = " ".join(error["msg"].split())
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


def _builtin() -> tuple[Case, ...]:
    text = resources.files("synthd.evals").joinpath("builtin.yaml").read_text(encoding="utf-8")
    return tuple(_checked("synthd/evals/builtin.yaml", _yaml_items("synthd/evals/builtin.yaml", text)))


BUILTIN_BATTERY: tuple[Case, ...] = _builtin()
"""The built-in battery: five cases per category, each with a ``reference`` answer."""
