"""Validation of what callers pass to ``LM``: OpenAI's message, tool and option shapes, checked
before anything is sent so a mistake is a ``ConfigurationError`` naming the field, not a provider
error or a crash half-way through a conversion."""

import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from synthd.client.errors import ConfigurationError


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionSpec(_Open):
    """``tools[i].function``."""

    name: Annotated[StrictStr, Field(min_length=1)]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(_Open):
    """One OpenAI function tool."""

    type: Literal["function"]
    function: FunctionSpec


class CalledFunction(_Open):
    """``tool_calls[i].function`` of an assistant message; ``arguments`` must be a JSON string."""

    name: Annotated[StrictStr, Field(min_length=1)]
    arguments: StrictStr

    @field_validator("arguments")
    @classmethod
    def _json(cls, value: str) -> str:
        try:
            json.loads(value or "{}")
        except ValueError as exc:
            raise ValueError(f"arguments is not JSON: {exc}") from None
        return value


class ToolCallSpec(_Open):
    """One tool call in an assistant message."""

    id: Annotated[StrictStr, Field(min_length=1)]
    type: Literal["function"] = "function"
    function: CalledFunction


class ContentPart(_Open):
    """One part of a list ``content``."""

    type: StrictStr
    text: StrictStr | None = None


class MessageSpec(_Open):
    """One chat message: ``tool`` messages need ``tool_call_id``; only ``assistant`` messages may
    carry ``tool_calls`` or omit ``content``."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None
    tool_calls: list[ToolCallSpec] | None = None
    tool_call_id: StrictStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "MessageSpec":
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs tool_call_id")
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a '{self.role}' message needs content")
        if self.role != "assistant" and self.tool_calls:
            raise ValueError("only assistant messages carry tool_calls")
        return self


class NamedFunction(BaseModel):
    name: Annotated[StrictStr, Field(min_length=1)]


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming one function."""

    type: Literal["function"]
    function: NamedFunction


class CallOptions(BaseModel):
    """The per-call options ``LM.respond`` accepts (unknown names are rejected)."""

    model_config = ConfigDict(extra="forbid")

    tools: list[ToolSpec] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=16)] | None = None
    seed: StrictInt | None = None
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    gpu_preference: StrictStr | None = None
    extra_body: dict[str, Any] | None = None

    @field_validator("temperature", "top_p")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


def check_call(messages: Any, options: dict[str, Any]) -> None:
    """Validate ``messages`` (a non-empty list of OpenAI chat messages) and ``options``.

    Raises ConfigurationError naming the first bad field, e.g. ``messages.1.tool_call_id``.
    """
    if not isinstance(messages, list) or not messages:
        raise ConfigurationError("messages must be a non-empty list of message dicts")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ConfigurationError(f"messages.{index}: must be a dict, not {type(message).__name__}")
        try:
            MessageSpec.model_validate(message)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc, f"messages.{index}")) from None
    unknown = sorted(set(options) - set(CallOptions.model_fields))
    if unknown:
        known = ", ".join(CallOptions.model_fields)
        raise ConfigurationError(f"unknown option(s) {', '.join(unknown)}; known: {known}")
    try:
        CallOptions.model_validate(options)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc, None)) from None


def _describe(exc: ValidationError, prefix: str | None) -> str:
    """The first error as ``where: message``; pydantic's union-branch tags are left out of ``where``."""
    error = exc.errors()[0]
    parts = [
        str(part)
        for part in error["loc"]
        if not str(part).startswith(("function-", "literal[", "list[", "str", "constrained-str"))
    ]
    where = ".".join(([prefix] if prefix else []) + parts)
    return f"{where}: {error['msg']}" if where else error["msg"]
