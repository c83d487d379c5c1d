"""Chat completions and completions: request → prompt ids and sampling params → engine → response.

Routes call ``OpenAIServing``; it alone knows both the wire models and the engine's types.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from synthd import __version__
from synthd.api.errors import APIError, bad_request
from synthd.engine.guided import GrammarError
from synthd.engine.native.loaded import LoadedModel
from synthd.engine.native.sampling import SamplingParams
from synthd.engine.native.sequence import FINISH_ABORT, FINISH_ERROR
from synthd.gpus.selection import Placement
from synthd.gpus.spec import parse_gpu_preference
from synthd.models.pool import ModelManager, Served, generate
from synthd.protocol.openai import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    DeltaMessage,
    DeltaToolCall,
    SamplingFields,
    Usage,
)
from synthd.services.tool_calls import (
    ToolMode,
    forced_name,
    parse_tool_calls,
    template_messages,
    tool_schema,
)

DONE = "data: [DONE]\n\n"


@dataclass
class ChoiceResult:
    """The finished text of one choice."""

    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclass
class PreparedRequest:
    """A validated request in engine terms: one entry per choice, in choice-index order."""

    served: Served
    prompt_ids: list[list[int]]
    params: list[SamplingParams]
    prompt_tokens: int
    request_id: str
    created: int = field(default_factory=lambda: int(time.time()))
    tool_mode: ToolMode | None = None
    tool_name: str | None = None

    @property
    def loaded(self) -> LoadedModel:
        """The resident base model."""
        return self.served.loaded

    @property
    def placement(self) -> Placement:
        """Where it runs."""
        return self.served.placement

    @property
    def model_id(self) -> str:
        """The id answered under (a fine-tune's own ``ft:`` id)."""
        return self.served.model_id


def sse(payload: dict) -> str:
    """One server-sent event carrying ``payload`` as JSON."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class OpenAIServing:
    """Serves ``/v1/chat/completions`` and ``/v1/completions`` from a ``ModelManager``."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    @staticmethod
    def fingerprint(prepared: "PreparedRequest") -> str:
        """``system_fingerprint``: synthd version, the device used (placement) and the dtype."""
        dtype = str(prepared.loaded.dtype).removeprefix("torch.")
        return f"synthd-{__version__}-{prepared.placement.label}-{dtype}"

    async def acquire(self, model: str, body_preference: str | None, header_preference: str | None) -> Served:
        """The model placed per the GPU preference (body wins over header), loaded if cold.

        Raises:
            GPUSpecError, SelectionError, ModelNotFound, ModelLoadError: mapped to API errors.
        """
        preference = parse_gpu_preference(body_preference if body_preference is not None else header_preference)
        return await self.manager.acquire(model, preference)

    # --- chat completions -------------------------------------------------------------------
    async def prepare_chat(self, request: ChatCompletionRequest, header_preference: str | None = None) -> PreparedRequest:
        """Place, load if needed, validate and tokenise a chat request.

        Raises:
            APIError: 400 no chat template, or ``context_length_exceeded``; the errors of ``acquire``.
        """
        if request.wants_auto_tools():
            raise bad_request("tool_choice 'auto' needs a tool-call parser for the model's own format, which "
                              "synthd does not have: use 'required', a named function, or 'none'", "tool_choice")
        served = await self.acquire(request.model, request.gpu_preference, header_preference)
        loaded = served.loaded
        messages = template_messages(request.messages, loaded.tokenizer.chat_template)
        try:
            prompt = loaded.encode_chat(messages)
        except ValueError as exc:
            raise bad_request(str(exc), "messages") from None
        except TypeError:
            raise bad_request("The messages could not be tokenized (invalid Unicode?).", "messages") from None
        param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        grammar = None
        tools_schema = tool_schema(request)
        if (schema := request.output_schema() or tools_schema) is not None:
            try:
                grammar = await asyncio.to_thread(loaded.guided.compile, schema)
            except GrammarError as exc:
                where = "tools" if tools_schema is not None else "response_format.json_schema.schema"
                raise bad_request(f"Invalid JSON schema in {where}: {exc}", where) from None
        prepared = self._prepare(served, [prompt], request, request.token_limit(), "messages", param, "chatcmpl",
                                 grammar=grammar)
        prepared.tool_mode, prepared.tool_name = request.forced_tool_mode(), forced_name(request)
        return prepared

    async def chat(self, prepared: PreparedRequest) -> ChatCompletion:
        """Run every choice to the end and build the ``chat.completion``."""
        results = await self._collect(prepared)
        return ChatCompletion(
            id=prepared.request_id,
            created=prepared.created,
            model=prepared.model_id,
            choices=[ChatChoice(index=i, **self._reply(prepared, r)) for i, r in enumerate(results)],
            usage=self._usage(prepared, results),
            system_fingerprint=self.fingerprint(prepared),
        )

    async def chat_stream(self, prepared: PreparedRequest, include_usage: bool) -> AsyncIterator[str]:
        """SSE ``chat.completion.chunk`` events, then a usage chunk if asked, then ``[DONE]``."""
        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
            body = ChatCompletionChunk(
                id=prepared.request_id, created=prepared.created, model=prepared.model_id,
                choices=choices, usage=usage, system_fingerprint=self.fingerprint(prepared),
            )
            return sse(body.model_dump(exclude_none=True))

        for index in range(len(prepared.params)):
            yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
        held: dict[int, str] = {}
        async for index, text, finish, results in self._stream_events(prepared):
            if isinstance(finish, APIError):
                yield sse(finish.body())
                break
            if prepared.tool_mode is not None:
                held[index] = held.get(index, "") + text
                if finish is not None:
                    reply = self._reply(prepared, ChoiceResult(text=held.pop(index), finish_reason=finish))
                    message = reply["message"]
                    calls = [DeltaToolCall(index=i, id=c.id, function=c.function)
                             for i, c in enumerate(message.tool_calls)]
                    yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(content=message.content,
                                                                                 tool_calls=calls or None))])
                    yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(),
                                                 finish_reason=reply["finish_reason"])])
            else:
                if text:
                    yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(content=text))])
                if finish is not None:
                    yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(), finish_reason=finish)])
            if results is not None and include_usage:
                yield chunk([], self._usage(prepared, results))
        yield DONE

    @staticmethod
    def _reply(prepared: PreparedRequest, result: ChoiceResult) -> dict:
        """``message`` and ``finish_reason`` of one choice: text, or the tool calls of a forced
        ``tool_choice`` (a reply cut by ``max_tokens`` or a ``stop`` string stays text)."""
        text = {"message": AssistantMessage(content=result.text), "finish_reason": result.finish_reason}
        if prepared.tool_mode is None or result.finish_reason != "stop":
            return text
        try:
            calls = parse_tool_calls(result.text, prepared.tool_mode, prepared.tool_name)
        except ValueError:
            return text
        return {"message": AssistantMessage(content=None, tool_calls=calls),
                "finish_reason": "tool_calls" if prepared.tool_mode == "required" else "stop"}

    # --- completions ------------------------------------------------------------------------
    async def prepare_completion(self, request: CompletionRequest, header_preference: str | None = None) -> PreparedRequest:
        """Place, load if needed, validate and tokenise a completions request (one or more prompts).

        Raises:
            APIError: 400 empty prompt or ``context_length_exceeded``; the errors of ``acquire``.
        """
        served = await self.acquire(request.model, request.gpu_preference, header_preference)
        loaded = served.loaded
        try:
            prompts = [loaded.encode_text(text) for text in request.prompts()]
        except TypeError:
            raise bad_request("The prompt could not be tokenized (invalid Unicode?).", "prompt") from None
        if any(not ids for ids in prompts):
            raise bad_request("The prompt must not be empty.", "prompt")
        return self._prepare(served, prompts, request, request.max_tokens, "prompt", "max_tokens", "cmpl")

    async def completion(self, prepared: PreparedRequest) -> Completion:
        """Run every choice to the end and build the ``text_completion``."""
        results = await self._collect(prepared)
        return Completion(
            id=prepared.request_id,
            created=prepared.created,
            model=prepared.model_id,
            choices=[CompletionChoice(index=i, text=r.text, finish_reason=r.finish_reason) for i, r in enumerate(results)],
            usage=self._usage(prepared, results),
            system_fingerprint=self.fingerprint(prepared),
        )

    async def completion_stream(self, prepared: PreparedRequest, include_usage: bool) -> AsyncIterator[str]:
        """SSE ``text_completion`` events, then a usage event if asked, then ``[DONE]``."""
        def event(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
            body = Completion(
                id=prepared.request_id, created=prepared.created, model=prepared.model_id,
                choices=choices, usage=usage, system_fingerprint=self.fingerprint(prepared),
            )
            return sse(body.model_dump(exclude_none=True))

        async for index, text, finish, results in self._stream_events(prepared):
            if isinstance(finish, APIError):
                yield sse(finish.body())
                break
            if text or finish is not None:
                yield event([CompletionChoice(index=index, text=text, finish_reason=finish)])
            if results is not None and include_usage:
                yield event([], self._usage(prepared, results))
        yield DONE

    # --- shared -------------------------------------------------------------------------------
    def _prepare(
        self,
        served: Served,
        prompts: list[list[int]],
        request: SamplingFields,
        token_limit: int | None,
        prompt_param: str,
        limit_param: str,
        id_prefix: str,
        grammar: str | None = None,
    ) -> PreparedRequest:
        context = served.loaded.max_model_len
        longest = max(len(ids) for ids in prompts)
        if longest >= context or (token_limit is not None and longest + token_limit > context):
            asked = f" + {token_limit} requested completion tokens" if token_limit is not None else ""
            raise bad_request(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{longest} prompt tokens{asked}. Please reduce the length of the {prompt_param} or {limit_param}.",
                prompt_param if token_limit is None else limit_param,
                "context_length_exceeded",
            )
        ids, params = [], []
        for prompt in prompts:
            for choice in range(request.n):
                ids.append(prompt)
                params.append(SamplingParams(
                    max_tokens=token_limit if token_limit is not None else context - len(prompt),
                    temperature=request.temperature,
                    top_p=request.top_p,
                    stop=request.stop_list(),
                    seed=None if request.seed is None else (request.seed + choice) % 2**64,
                    presence_penalty=request.presence_penalty,
                    frequency_penalty=request.frequency_penalty,
                    ignore_eos=request.ignore_eos,
                    grammar=grammar,
                ))
        return PreparedRequest(
            served=served,
            prompt_ids=ids,
            params=params,
            prompt_tokens=sum(len(p) for p in prompts),
            request_id=f"{id_prefix}-{uuid.uuid4().hex}",
        )

    @staticmethod
    def _usage(prepared: PreparedRequest, results: list[ChoiceResult]) -> Usage:
        completion = sum(r.completion_tokens for r in results)
        return Usage(prompt_tokens=prepared.prompt_tokens, completion_tokens=completion,
                     total_tokens=prepared.prompt_tokens + completion)

    async def _collect(self, prepared: PreparedRequest) -> list[ChoiceResult]:
        results = [ChoiceResult() for _ in prepared.params]
        async for _index, _text, finish, _ in self._stream_events(prepared, results):
            if isinstance(finish, APIError):
                raise finish
        return results

    async def _stream_events(
        self, prepared: PreparedRequest, results: list[ChoiceResult] | None = None
    ) -> AsyncIterator[tuple[int, str, str | APIError | None, list[ChoiceResult] | None]]:
        """Fan in all choices' events as ``(index, text, finish, results)``.

        ``finish`` is a finish reason, None while running, or an ``APIError`` when the engine
        failed. ``results`` is given once, with the last event, when every choice has finished.
        """
        results = results if results is not None else [ChoiceResult() for _ in prepared.params]
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int) -> None:
            try:
                async for event in generate(prepared.loaded, prepared.prompt_ids[index], prepared.params[index],
                                            prepared.served.adapter):
                    await queue.put((index, event))
            except Exception as exc:  # surfaced as this request's error instead of a silent hang
                await queue.put((index, exc))

        tasks = [asyncio.create_task(pump(i)) for i in range(len(prepared.params))]
        pending = len(tasks)
        try:
            while pending:
                index, event = await queue.get()
                if isinstance(event, Exception):
                    yield index, "", APIError(500, f"Generation failed: {type(event).__name__}: {event}",
                                              type="server_error"), None
                    return
                result = results[index]
                result.text += event.text
                result.completion_tokens = event.completion_tokens
                if event.finish_reason == FINISH_ERROR:
                    yield index, "", APIError(500, f"Generation failed: {event.error}", type="server_error"), None
                    return
                if event.finish_reason == FINISH_ABORT:
                    yield index, "", APIError(503, "The server is shutting down.", type="server_error"), None
                    return
                if event.finish_reason is not None:
                    result.finish_reason = event.finish_reason
                    pending -= 1
                yield index, event.text, event.finish_reason, results if pending == 0 else None
        finally:
            for task in tasks:
                task.cancel()
