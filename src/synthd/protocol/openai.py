"""OpenAI wire models for models, chat completions and completions.

Field names and order follow OpenAI's API reference (platform.openai.com/docs/api-reference/chat).
Requests forbid unknown fields so a parameter synthd does not implement is a 400 naming it, never
silently ignored. Engine-specific extras sit at the end of each request, marked as such.
"""

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
MAX_STOP_CHARS = 256
MAX_MESSAGES = 2048
MAX_TOOLS = 128
MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32
MAX_MODEL_ID_CHARS = 256
MAX_SEQUENCES_PER_REQUEST = 128
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}
"""The schema ``response_format: {"type": "json_object"}`` stands for."""
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
StopField = StopString | Annotated[list[StopString], Field(max_length=4)] | None
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
ModelId = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_ID_CHARS)]
LogitBias = dict[Annotated[str, Field(pattern=r"^\d{1,9}$")], Annotated[float, Field(ge=-100.0, le=100.0)]]


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Bound a JSON schema for guided decoding: at most ``MAX_SCHEMA_BYTES`` as JSON and
    ``MAX_SCHEMA_DEPTH`` levels deep, so compiling it cannot take unbounded time or memory.

    Raises:
        ValueError: too large or too deep (pydantic reports it as a 400 naming the field).
    """
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"the JSON schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB")

    def depth(value: Any) -> int:
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        return 1 + max((depth(c) for c in children), default=0)

    if depth(schema) > MAX_SCHEMA_DEPTH:
        raise ValueError(f"the JSON schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
    return schema


Schema = Annotated[dict[str, Any], AfterValidator(check_schema)]


class StrictModel(BaseModel):
    """Base for request bodies: unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")


class StreamOptions(StrictModel):
    """``stream_options``: ``include_usage`` adds a last chunk with ``usage`` and no choices."""

    include_usage: StrictBool = False


class TextPart(StrictModel):
    """A text content part of a message."""

    type: Literal["text"]
    text: str


class CalledFunction(StrictModel):
    """``function`` of a tool call: ``arguments`` is a JSON string."""

    name: str
    arguments: str


class ToolCall(StrictModel):
    """One tool call, in an assistant message sent back (request) or generated (response)."""

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(StrictModel):
    """One turn. ``developer`` is OpenAI's newer name for ``system`` and is treated as such. An
    ``assistant`` turn may carry ``tool_calls`` instead of content; a ``tool`` turn answers one call
    (``tool_call_id``). ``name`` is accepted and not used."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ChatMessage":
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a 'tool' message needs tool_call_id")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a '{self.role}' message needs content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def text(self) -> str:
        """The message's text, its parts joined ("" when it has none)."""
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class SamplingFields(StrictModel):
    """Sampling fields shared by chat completions and completions."""

    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: Annotated[int, Field(ge=1, le=16)] = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    stop: StopField = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    seed: Seed | None = None
    logit_bias: LogitBias | None = None
    user: str | None = None
    # --- synthd / vLLM extensions ---
    ignore_eos: StrictBool = Field(default=False, description="vLLM extension: keep generating past EOS.")
    gpu_preference: str | None = Field(
        default=None, description="synthd: 'auto', 'H100', 'L40S:2', 'H100:2,A100-80GB:2' (wins over X-GPU-Preference)."
    )

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "SamplingFields":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` as ``(token id, bias)`` pairs (empty when absent or ``{}``)."""
        return tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items())

    def stop_list(self) -> tuple[str, ...]:
        """``stop`` as a tuple of non-empty strings."""
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)


class JSONSchemaFormat(StrictModel):
    """``response_format.json_schema``: the schema the reply must match (``strict`` is accepted;
    guided decoding always enforces the schema)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    json_schema: Schema = Field(alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(StrictModel):
    """``response_format``: ``text`` (default), ``json_object`` (any JSON object) or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required when type is 'json_schema', and only then")
        return self


class FunctionDefinition(StrictModel):
    """``tools[i].function``: ``parameters`` is a JSON Schema (absent: no arguments)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: Schema | None = None
    strict: StrictBool | None = None


class ChatTool(StrictModel):
    """One tool the model may call."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    """``tool_choice`` forcing one function."""

    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions`` body.

    Tools follow vLLM's structured-output path: ``tool_choice`` ``required`` or a named function
    constrains the output to the tools' JSON schemas; ``none`` generates text. ``auto`` needs a
    tool-call parser for the model's own format, which synthd does not have: it is a 400.
    """

    model: ModelId
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ChatTool], Field(min_length=1, max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    # --- vLLM extensions ---
    add_special_tokens: StrictBool = Field(
        default=False,
        description="vLLM extension: add the tokenizer's special tokens (e.g. BOS) on top of the chat template's.",
    )

    @model_validator(mode="after")
    def _tools_consistent(self) -> "ChatCompletionRequest":
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {tool.function.name for tool in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names '{self.tool_choice.function.name}', which is not in tools")
        elif self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs tools")
        if self.forced_tool_mode() is not None and self.output_schema() is not None:
            raise ValueError("response_format cannot be combined with a required or named tool_choice")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def logprobs_count(self) -> int | None:
        """Alternatives per token the engine must return (None: no logprobs)."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def forced_tool_mode(self) -> Literal["required", "named"] | None:
        """``required`` or ``named`` when the output must be tool calls; None for text."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return "required" if self.tool_choice == "required" else None

    def wants_auto_tools(self) -> bool:
        """True when tools are offered with ``auto`` (explicit, or OpenAI's default with tools)."""
        return bool(self.tools) and self.tool_choice in (None, "auto")

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema ``response_format`` asks guided decoding to enforce, or None for free text."""
        if self.response_format is None or self.response_format.type == "text":
            return None
        if self.response_format.json_schema is None:
            return {**ANY_JSON_OBJECT}
        return self.response_format.json_schema.json_schema

    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (OpenAI's current name) or else ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    """``POST /v1/completions`` body. ``prompt`` is a string or a list of strings."""

    model: ModelId
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_SEQUENCES_PER_REQUEST)]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    # --- vLLM extensions ---
    add_special_tokens: StrictBool = Field(
        default=True, description="vLLM extension: add the tokenizer's special tokens (e.g. BOS) to the prompt."
    )

    @model_validator(mode="after")
    def _bounded_sequences(self) -> "CompletionRequest":
        if len(self.prompts()) * self.n > MAX_SEQUENCES_PER_REQUEST:
            raise ValueError(f"len(prompt) x n must be at most {MAX_SEQUENCES_PER_REQUEST}")
        return self

    def prompts(self) -> list[str]:
        """The prompts as a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def _absent_when_none(value: Any) -> bool:
    return value is None


Optional = Field(default=None, exclude_if=_absent_when_none)
"""A key OpenAI sends only when it has a value (``tool_calls``, a delta's ``role``/``content``)."""


class Usage(BaseModel):
    """Token counts of one request: exact, from the model's tokenizer."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    """One alternative token: its text, log-probability (natural log) and UTF-8 bytes."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    """One output token's log-probability and the most likely alternatives (``top_logprobs``)."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """A chat choice's ``logprobs``: ``content`` (one entry per output token) and ``refusal``."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    """A completion choice's ``logprobs`` (the legacy shape): per-token text, log-probability, the
    top alternatives as ``{token: logprob}`` and each token's character offset in the text."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class AssistantMessage(BaseModel):
    """The generated message: text, or (``content`` null) the tool calls. ``refusal`` is always null."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = Optional


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    """One choice of a chat completion."""

    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    """``chat.completion`` response object."""

    id: str = Field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class DeltaToolCall(BaseModel):
    """A tool call in a stream chunk; synthd sends each call whole, once its JSON is complete."""

    index: int
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class DeltaMessage(BaseModel):
    """Incremental message content in a stream chunk: only the keys that change are sent."""

    role: Literal["assistant"] | None = Optional
    content: str | None = Optional
    tool_calls: list[DeltaToolCall] | None = Optional


class ChatChunkChoice(BaseModel):
    """One choice's delta in a ``chat.completion.chunk``; ``logprobs`` and ``finish_reason`` are
    always sent (null while running), as OpenAI does."""

    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """``chat.completion.chunk`` stream object. With ``stream_options.include_usage`` every chunk has
    ``usage`` (null but on the last, which has no choices); without it the key is absent."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    """One choice of a text completion (``finish_reason`` null while streaming)."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    """``text_completion`` response or stream object (``usage`` as for chat chunks when streaming)."""

    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """An entry of ``/v1/models``: OpenAI's fields, vLLM's ``root`` (the base model's id; never a
    server path), ``parent`` (a fine-tune's base) and ``max_model_len``, and synthd's serving state:
    ``status`` (cold | warming | warmed | failed), ``gpu`` (placement label), ``node``,
    ``load_seconds``, ``error``, and ``requests_served`` / ``tokens_served`` (completion tokens)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "synthd"
    root: str
    parent: str | None = None
    max_model_len: int | None = None
    status: Literal["cold", "warming", "warmed", "failed"] = "cold"
    gpu: str | None = None
    node: str | None = None
    load_seconds: float | None = None
    error: str | None = None
    requests_served: int = 0
    tokens_served: int = 0


class ModelList(BaseModel):
    """``/v1/models`` response."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
