"""What ``LM.respond`` returns: one shape for every provider, in OpenAI's vocabulary."""

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class FunctionCall(BaseModel):
    """``function`` of a tool call: ``arguments`` is a JSON string, as OpenAI sends it."""

    name: str
    arguments: str

    def parsed_arguments(self) -> Any:
        """``arguments`` decoded from JSON. Raises ``json.JSONDecodeError`` if the model wrote bad JSON."""
        return json.loads(self.arguments or "{}")


class ToolCall(BaseModel):
    """One tool call, OpenAI shape (``choices[0].message.tool_calls[i]``), whatever the provider."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Usage(BaseModel):
    """Token counts as the provider reported them (Anthropic's input/output tokens renamed)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class LMResponse(BaseModel):
    """One reply.

    ``text`` is the assistant's text (``""`` when it only called tools); ``structured_output`` the
    validated ``response_model`` instance when one was asked for; ``finish_reason`` in OpenAI's
    vocabulary (Anthropic's ``end_turn``/``stop_sequence`` → ``stop``, ``max_tokens`` → ``length``,
    ``tool_use`` → ``tool_calls``, ``refusal`` → ``content_filter``). ``latency_s`` is wall time from
    sending the request to the end of the reply, retries included; ``ttft_s`` the time to the first
    text or tool-call delta, on streamed replies only.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str
    structured_output: Any = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    finish_reason: FinishReason | None = None
    latency_s: float = 0.0
    ttft_s: float | None = None
    model: str
    provider: str
    response_id: str | None = None

    @property
    def raw_response(self) -> str:
        """Alias of ``text`` (the name the seed's client used)."""
        return self.text

    def to_message(self) -> dict[str, Any]:
        """The reply as an OpenAI assistant message, ready to append for the next turn."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        return message
