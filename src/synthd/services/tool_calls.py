"""Tool calling through structured output, as vLLM does for ``tool_choice`` ``required`` and named
functions (vllm/entrypoints/openai/serving_chat.py): the output is constrained to JSON for the
tools' parameter schemas, then returned as OpenAI ``tool_calls``.

``required``: a JSON array of ``{"name", "parameters"}`` objects, one branch per tool, answered with
``finish_reason`` ``tool_calls``. Named: the function's ``parameters`` object, answered with
``finish_reason`` ``stop`` — both as OpenAI answers (see vLLM PR #25054 for the comparison).
"""

import json
import uuid
from typing import Any, Literal

from synthd.protocol.openai import (
    CalledFunction,
    ChatCompletionRequest,
    ChatMessage,
    NamedToolChoice,
    ToolCall,
)

NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}
ToolMode = Literal["required", "named"]


def tool_schema(request: ChatCompletionRequest) -> dict[str, Any] | None:
    """The JSON schema the reply must match for a forced ``tool_choice``; None when the reply is text.
    ``parallel_tool_calls: false`` limits ``required`` to one call."""
    mode = request.forced_tool_mode()
    tools = request.tools or []
    if mode == "named":
        name = forced_name(request)
        return next(t.function.parameters for t in tools if t.function.name == name) or NO_ARGUMENTS
    if mode == "required":
        # Each tool's schema moves under the wrapper's $defs, its local refs ("#/$defs/Inner", "#")
        # rewritten to point there, so pydantic-style schemas with $defs keep resolving.
        defs = {
            f"tool_{i}": rebase_refs(t.function.parameters or NO_ARGUMENTS, f"#/$defs/tool_{i}")
            for i, t in enumerate(tools)
        }
        branches = [
            {
                "type": "object",
                "properties": {"name": {"const": t.function.name}, "parameters": {"$ref": f"#/$defs/tool_{i}"}},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for i, t in enumerate(tools)
        ]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": branches}, "$defs": defs}
        if request.parallel_tool_calls is False:
            schema["maxItems"] = 1
        return schema
    return None


def rebase_refs(schema: Any, root: str) -> Any:
    """``schema`` with every local ``$ref`` (``#`` or ``#/…``) made relative to ``root`` (a JSON
    pointer URI such as ``#/$defs/tool_0``), for embedding the schema at that place."""
    if isinstance(schema, list):
        return [rebase_refs(item, root) for item in schema]
    if not isinstance(schema, dict):
        return schema
    rebased = {key: rebase_refs(value, root) for key, value in schema.items()}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        rebased["$ref"] = root + ref[1:]
    return rebased


def forced_name(request: ChatCompletionRequest) -> str | None:
    """The function a named ``tool_choice`` forces."""
    return request.tool_choice.function.name if isinstance(request.tool_choice, NamedToolChoice) else None


def template_messages(messages: list[ChatMessage], chat_template: str | None) -> list[dict[str, Any]]:
    """Messages for ``apply_chat_template``: ``developer`` → ``system``; an assistant's tool calls
    passed as ``tool_calls`` when the template renders them, else written into its content as JSON
    (so a template without tool support still shows the model what it called); ``tool`` turns keep
    their role and content."""
    renders_calls = "tool_calls" in (chat_template or "")
    rendered = []
    for message in messages:
        entry: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": message.text(),
        }
        if message.tool_calls:
            calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls]
            if renders_calls:
                entry["tool_calls"] = [c.model_dump() for c in message.tool_calls]
            else:
                entry["content"] = (entry["content"] + "\n" if entry["content"] else "") + json.dumps(calls)
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        rendered.append(entry)
    return rendered


def parse_tool_calls(text: str, mode: ToolMode, name: str | None) -> list[ToolCall]:
    """The tool calls in a complete guided reply ``text``. Raises ``ValueError`` if it is not the JSON
    the grammar allows (only possible when generation was cut short)."""
    if mode == "named":
        json.loads(text)
        return [ToolCall(id=new_call_id(), function=CalledFunction(name=name or "", arguments=text))]
    return [
        ToolCall(id=new_call_id(), function=CalledFunction(name=item["name"], arguments=json.dumps(item["parameters"])))
        for item in json.loads(text)
    ]


def new_call_id() -> str:
    """A tool call id in vLLM's style."""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"
