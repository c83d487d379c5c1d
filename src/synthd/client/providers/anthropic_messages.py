"""Anthropic's Messages API on the official ``anthropic`` SDK, behind OpenAI's shapes.

Mapping (docs.anthropic.com/en/api/messages and /en/api/errors):
- ``system``/``developer`` messages → the top-level ``system`` prompt; ``tool`` messages → a user
  turn of ``tool_result`` blocks; assistant ``tool_calls`` → ``tool_use`` blocks; consecutive turns
  of one role are merged, as the API wants them alternating.
- OpenAI function tools → ``{name, description, input_schema}``; ``tool_choice`` ``auto``/``none``/
  ``required``/named → ``auto``/``none``/``any``/``tool``; ``stop`` → ``stop_sequences``.
- ``max_tokens`` is required by Anthropic: ``DEFAULT_MAX_TOKENS`` when not given. ``seed`` has no
  Anthropic counterpart and is not sent. ``temperature`` and ``top_p`` go in the request body
  directly: SDK 2.x dropped them from ``messages.create``, the API still takes them for the
  models that support sampling settings.
- Structured output is a forced tool whose ``input_schema`` is the ``response_model`` schema; its
  input becomes the reply's ``text`` (as JSON), not a tool call.
- ``stop_reason`` → ``finish_reason``: ``end_turn``/``stop_sequence``/``pause_turn`` → ``stop``,
  ``max_tokens`` → ``length``, ``tool_use`` → ``tool_calls``, ``refusal`` → ``content_filter``.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import anthropic
from anthropic.types import Message, RawMessageStreamEvent

from synthd.client.errors import ConfigurationError, ProviderError
from synthd.client.providers.base import STREAM_FAILURES, Provider, StreamPiece
from synthd.client.request import ChatRequest
from synthd.client.response import FinishReason, FunctionCall, LMResponse, ToolCall, Usage

DEFAULT_MAX_TOKENS = 4096
"""``max_tokens`` sent when the caller gives none: the largest output every Claude 3+ model allows."""

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
_TOOL_CHOICES = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}


class AnthropicProvider(Provider):
    """api.anthropic.com, key from ``ANTHROPIC_API_KEY``, base URL from ``ANTHROPIC_BASE_URL`` if set."""

    name: ClassVar[str] = "anthropic"
    key_env_var: ClassVar[str | None] = "ANTHROPIC_API_KEY"
    base_url_env_var: ClassVar[str | None] = "ANTHROPIC_BASE_URL"

    def __init__(self, *, api_key: str | None, base_url: str | None, timeout: float, max_retries: int) -> None:
        super().__init__(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)
        self._sync: anthropic.Anthropic | None = None
        self._async: tuple[asyncio.AbstractEventLoop, anthropic.AsyncAnthropic] | None = None

    def sdk(self) -> anthropic.Anthropic:
        """The SDK client, retrying as the SDK does (``max_retries``)."""
        if self._sync is None:
            self._sync = anthropic.Anthropic(
                api_key=self.api_key, base_url=self.base_url, timeout=self.timeout, max_retries=self.max_retries
            )
        return self._sync

    def async_sdk(self) -> anthropic.AsyncAnthropic:
        """The async SDK client for the running event loop."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (
                loop,
                anthropic.AsyncAnthropic(
                    api_key=self.api_key, base_url=self.base_url, timeout=self.timeout, max_retries=self.max_retries
                ),
            )
        return self._async[1]

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """Keyword arguments for ``messages.create``."""
        system, messages = to_anthropic_messages(request.messages)
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if system:
            body["system"] = system
        if request.stop:
            body["stop_sequences"] = request.stop
        sampling = {"temperature": request.temperature, "top_p": request.top_p}
        extra = {key: value for key, value in sampling.items() if value is not None} | request.extra_body
        tools = [to_anthropic_tool(tool) for tool in request.tools or []]
        if request.response_format is not None:
            tools.append(
                {
                    "name": request.response_format.name,
                    "input_schema": request.response_format.schema,
                    "description": "Reply by calling this tool with the answer as its input.",
                }
            )
            body["tool_choice"] = {"type": "tool", "name": request.response_format.name}
        elif request.tool_choice is not None:
            body["tool_choice"] = to_anthropic_tool_choice(request.tool_choice)
        if tools:
            body["tools"] = tools
        if extra:
            body["extra_body"] = extra
        return body

    def complete(self, request: ChatRequest) -> LMResponse:
        try:
            message = self.sdk().messages.create(**self.body(request))
        except STREAM_FAILURES as exc:
            raise self.error(exc) from exc
        return self.response(message, request)

    async def complete_async(self, request: ChatRequest) -> LMResponse:
        try:
            message = await self.async_sdk().messages.create(**self.body(request))
        except STREAM_FAILURES as exc:
            raise self.error(exc) from exc
        return self.response(message, request)

    def stream(self, request: ChatRequest) -> Iterator[StreamPiece]:
        return self.pieces(
            lambda: self.sdk().messages.create(**self.body(request), stream=True),
            EventAccumulator(self.name, structured_tool(request)),
        )

    def stream_async(self, request: ChatRequest) -> AsyncIterator[StreamPiece]:
        return self.pieces_async(
            lambda: self.async_sdk().messages.create(**self.body(request), stream=True),
            EventAccumulator(self.name, structured_tool(request)),
        )

    def status_of(self, exc: anthropic.APIStatusError) -> int:
        """An ``error`` event inside a stream arrives on a 200 response: its status comes from the
        error's ``type`` (``overloaded_error`` → 529, …)."""
        if exc.status_code < 400 and isinstance(exc.body, dict):
            error = exc.body.get("error")
            if isinstance(error, dict):
                return _ERROR_STATUS.get(str(error.get("type")), 500)
        return exc.status_code

    def response(self, message: Message, request: ChatRequest) -> LMResponse:
        """A Messages API ``message`` object as an ``LMResponse``."""
        forced = structured_tool(request)
        if message.stop_reason is None:
            raise ProviderError("the reply has no stop_reason", provider=self.name)
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in message.content:
            if block.type == "text":
                text.append(block.text)
            elif block.type == "tool_use" and block.name == forced:
                text.append(json.dumps(block.input))
            elif block.type == "tool_use":
                calls.append(
                    ToolCall(id=block.id, function=FunctionCall(name=block.name, arguments=json.dumps(block.input)))
                )
        return LMResponse(
            text="".join(text),
            tool_calls=calls,
            finish_reason=stop_reason(message.stop_reason, structured=forced is not None),
            usage=usage(message.usage.input_tokens, message.usage.output_tokens, message.usage),
            model=message.model,
            provider=self.name,
            response_id=message.id,
        )


class EventAccumulator:
    """Folds the Messages streaming events (``message_start``, ``content_block_start|delta|stop``,
    ``message_delta``, ``message_stop``; ``ping`` ignored) into text deltas and one ``LMResponse``.

    ``forced_tool`` is the structured-output tool: its ``input_json_delta`` pieces are streamed as
    text. Raises ``ProviderError`` from ``response`` when ``message_stop`` never came.
    """

    def __init__(self, provider: str, forced_tool: str | None) -> None:
        self.provider = provider
        self.forced_tool = forced_tool
        self.blocks: dict[int, dict[str, Any]] = {}
        self.stop: str | None = None
        self.finished = False
        self.model = ""
        self.response_id: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.started = False
        self.delivered = False

    def add(self, event: RawMessageStreamEvent) -> str | None:
        """Take one event; return its text delta, ``""`` for a tool-input delta, ``None`` otherwise."""
        if event.type == "message_start":
            self.started = True
            self.model, self.response_id = event.message.model, event.message.id
            self.prompt_tokens = usage(event.message.usage.input_tokens, 0, event.message.usage).prompt_tokens
            self.completion_tokens = event.message.usage.output_tokens or 0
        elif event.type == "content_block_start":
            block = event.content_block
            self.blocks[event.index] = (
                {"type": "text", "text": block.text}
                if block.type == "text"
                else {
                    "type": block.type,
                    "id": getattr(block, "id", ""),
                    "name": getattr(block, "name", ""),
                    "json": "",
                }
            )
        elif event.type == "content_block_delta":
            fresh = (
                {"type": "text", "text": ""}
                if event.delta.type == "text_delta"
                else {"type": "tool_use", "id": "", "name": "", "json": ""}
            )
            block = self.blocks.setdefault(event.index, fresh)
            if event.delta.type == "text_delta" and block["type"] == "text":
                block["text"] += event.delta.text
                return event.delta.text
            if event.delta.type == "input_json_delta" and block["type"] != "text":
                block["json"] += event.delta.partial_json
                return event.delta.partial_json if block["name"] == self.forced_tool else ""
        elif event.type == "message_delta":
            self.stop = event.delta.stop_reason or self.stop
            self.completion_tokens = event.usage.output_tokens or self.completion_tokens
        elif event.type == "message_stop":
            self.finished = True
        return None

    def response(self) -> LMResponse:
        """The whole reply. Raises ``ProviderError`` if ``message_start``, a ``stop_reason`` or
        ``message_stop`` never arrived."""
        if not self.finished:
            raise ProviderError("the stream ended before message_stop", provider=self.provider)
        if not self.started or self.stop is None:
            raise ProviderError("the stream lacked message_start or a stop_reason", provider=self.provider)
        text: list[str] = []
        calls: list[ToolCall] = []
        for _, block in sorted(self.blocks.items()):
            if block["type"] == "text":
                text.append(block["text"])
            elif block["type"] == "tool_use" and block["name"] == self.forced_tool:
                text.append(block["json"])
            elif block["type"] == "tool_use":
                calls.append(
                    ToolCall(id=block["id"], function=FunctionCall(name=block["name"], arguments=block["json"] or "{}"))
                )
        return LMResponse(
            text="".join(text),
            tool_calls=calls,
            finish_reason=stop_reason(self.stop, structured=self.forced_tool is not None),
            usage=Usage(
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                total_tokens=self.prompt_tokens + self.completion_tokens,
            ),
            model=self.model,
            provider=self.provider,
            response_id=self.response_id,
        )


def to_anthropic_messages(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI chat messages → (``system`` prompt or ``None``, alternating Anthropic turns).

    Raises ``ConfigurationError`` on a role or content part Anthropic cannot take here.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
            continue
        if role == "user":
            turn_role, blocks = "user", text_blocks(message.get("content"))
        elif role == "assistant":
            turn_role, blocks = "assistant", text_blocks(message.get("content"))
            for call in message.get("tool_calls") or []:
                function = call["function"]
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call["id"],
                        "name": function["name"],
                        "input": json.loads(function.get("arguments") or "{}"),
                    }
                )
        elif role == "tool":
            turn_role, blocks = (
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": message["tool_call_id"],
                        "content": text_of(message.get("content")),
                    }
                ],
            )
        else:
            raise ConfigurationError(f"message role {role!r} has no Anthropic counterpart", provider="anthropic")
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    return ("\n\n".join(part for part in system if part) or None), turns


def text_of(content: Any) -> str:
    """A message's ``content`` (string or list of ``text`` parts) as one string."""
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(block["text"] for block in text_blocks(content))


def text_blocks(content: Any) -> list[dict[str, Any]]:
    """``content`` as non-empty Anthropic text blocks (the API rejects empty ones)."""
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content:
        if part.get("type") != "text":
            raise ConfigurationError(
                f"content part type {part.get('type')!r} is not supported for Anthropic here", provider="anthropic"
            )
        if part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
    return blocks


def to_anthropic_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as an Anthropic tool."""
    function = tool.get("function", {})
    converted = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        converted["description"] = function["description"]
    return converted


def to_anthropic_tool_choice(choice: str | dict[str, Any]) -> dict[str, Any]:
    """OpenAI ``tool_choice`` as Anthropic's. Raises ``ConfigurationError`` on an unknown value."""
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return _TOOL_CHOICES[choice]
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        return {"type": "tool", "name": choice["function"]["name"]}
    raise ConfigurationError(
        f"tool_choice {choice!r} is not one of auto, none, required or a named function", provider="anthropic"
    )


def structured_tool(request: ChatRequest) -> str | None:
    """The forced tool's name when structured output was asked for."""
    return request.response_format.name if request.response_format is not None else None


def stop_reason(reason: str | None, *, structured: bool) -> FinishReason | None:
    """Anthropic ``stop_reason`` → OpenAI ``finish_reason`` (the forced structured-output tool ends as ``stop``)."""
    if reason is None:
        return None
    mapped = _STOP_REASONS.get(reason, "stop")
    return "stop" if structured and mapped == "tool_calls" else mapped


def usage(input_tokens: int | None, output_tokens: int | None, raw: Any) -> Usage:
    """Anthropic usage as OpenAI's: prompt tokens include cache writes and reads."""
    prompt = (
        (input_tokens or 0)
        + (getattr(raw, "cache_creation_input_tokens", None) or 0)
        + (getattr(raw, "cache_read_input_tokens", None) or 0)
    )
    completion = output_tokens or 0
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
