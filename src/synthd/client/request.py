"""The provider-neutral request ``LM`` builds from its arguments (OpenAI's message and tool shapes)."""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class JSONSchemaFormat:
    """Structured output asked for: ``schema`` is the JSON Schema of ``response_model``, ``name`` its
    class name (OpenAI's ``json_schema.name``; Anthropic's forced tool name)."""

    name: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class ChatRequest:
    """One chat request in OpenAI's shapes.

    ``messages``: OpenAI chat messages (``system``/``developer``/``user``/``assistant`` with optional
    ``tool_calls``, ``tool`` with ``tool_call_id``). ``tools``: OpenAI function tools
    (``{"type": "function", "function": {"name", "description", "parameters"}}``). ``tool_choice``:
    ``"auto"``, ``"none"``, ``"required"`` or ``{"type": "function", "function": {"name": ...}}``.
    ``None`` fields are left to the provider's default. ``extra_body`` is merged into the wire body.
    """

    model: str
    messages: list[dict[str, Any]]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: JSONSchemaFormat | None = None
    gpu_preference: str | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
