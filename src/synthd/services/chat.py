"""Chat completions and completions: request → lease → prompt ids and sampling params → engine →
OpenAI shapes.

``OpenAIServing`` is the only code that knows both the wire models and the engine protocol. A
request leases its model (and adapter) from the pool when it is prepared and gives the lease back
when its last choice ends (``PreparedRequest.close``). Tokenization and schema compilation run off
the event loop. Each choice is one ``engine.generate`` call; a request with ``n`` > 1 fans them in.
"""

import asyncio
import codecs
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from synthd import __version__
from synthd.engine.protocol import Guide, RequestOutput, SamplingParams, TokenLogprob
from synthd.errors import InvalidRequest, Overloaded
from synthd.gpus.spec import parse_gpu_preference
from synthd.models.adapters import stored_chat_template
from synthd.models.pool import Lease, ModelPool
from synthd.protocol.openai import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    DeltaMessage,
    DeltaToolCall,
    SamplingFields,
    TopLogprob,
    Usage,
)
from synthd.protocol.openai import TokenLogprob as WireTokenLogprob
from synthd.services.projects import OPERATOR, ModelAccess, Principal
from synthd.services.tool_calls import ToolMode, forced_name, parse_tool_calls, template_messages, tool_schema


@dataclass
class ChoiceResult:
    """One choice as it accumulates."""

    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class RequestRecord:
    """What one finished request reports to metrics and rate limits: token counts, ``finish_reason``
    (of its last choice, or ``abort``), ``n`` choices, ``time.perf_counter()`` times, and the API
    key that asked (None: the server's own key, or auth off)."""

    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    n: int
    arrival_s: float
    scheduled_s: float | None
    first_token_s: float | None
    finished_s: float
    max_choice_tokens: int
    key_id: str | None = None


RequestObserver = Callable[[RequestRecord], None]


@dataclass(eq=False)
class PreparedRequest:
    """A validated request in engine terms, holding its lease: one entry per choice."""

    lease: Lease
    prompt_ids: list[list[int]]
    params: list[SamplingParams]
    prompt_tokens: int
    request_id: str
    guide: Guide | None = None
    tool_mode: ToolMode | None = None
    tool_name: str | None = None
    key_id: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    arrival_s: float = field(default_factory=time.perf_counter)

    @property
    def model_id(self) -> str:
        """The id answered under (a fine-tune's own ``ft:`` id)."""
        return self.lease.model_id

    @property
    def gpu(self) -> str:
        """Where it runs: the placement label (``cpu``, ``H100:2``), with the node and device ids on
        a cluster (``H100:2@gpu-a/0,1``)."""
        return self.lease.placement.where

    def close(self) -> None:
        """Give the model lease back (idempotent)."""
        self.lease.release()


def sse(payload: dict) -> str:
    """One server-sent event carrying ``payload`` as JSON."""
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


def utf8_decoder() -> codecs.IncrementalDecoder:
    """Decodes tokens' raw bytes into characters as they complete (a character split across tokens
    counts once, at its last byte)."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


class OpenAIServing:
    """Serves ``/v1/chat/completions`` and ``/v1/completions`` from a ``ModelPool``.

    Args:
        pool: the model pool. on_request: called once per finished request (metrics, token limits).
        access: which ``ft:`` models each caller may use (None: every model to everyone).
    """

    def __init__(
        self, pool: ModelPool, on_request: RequestObserver | None = None, access: ModelAccess | None = None
    ) -> None:
        self.pool = pool
        self.on_request = on_request
        self.access = access

    @staticmethod
    def fingerprint(prepared: PreparedRequest) -> str:
        """``system_fingerprint``: synthd version, the devices used (placement, node) and the dtype."""
        return f"synthd-{__version__}-{prepared.gpu}-{prepared.lease.engine.dtype}"

    async def _lease(
        self, model: str, body_preference: str | None, header_preference: str | None, principal: Principal
    ) -> Lease:
        """The model leased on a placement meeting the GPU preference (the body's wins over the
        header's), if ``principal`` may use it (else ``ModelNotFound``, as for an unknown id)."""
        preference = parse_gpu_preference(body_preference if body_preference is not None else header_preference)
        if self.access is not None:
            await self.access.check(principal, model)
        return await self.pool.acquire(model, preference)

    # --- chat completions -----------------------------------------------------------------------
    async def prepare_chat(
        self, request: ChatCompletionRequest, header_preference: str | None = None, principal: Principal = OPERATOR
    ) -> PreparedRequest:
        """Lease the model (loading it if cold), render and tokenize the messages, check the guide.

        Raises:
            InvalidRequest: ``tool_choice`` auto, no chat template, ``context_length_exceeded``, a bad
                schema or logit bias; the errors of ``ModelPool.acquire``.
        """
        if request.wants_auto_tools():
            raise InvalidRequest(
                "tool_choice 'auto' needs a tool-call parser for the model's own format, which "
                "synthd does not have: use 'required', a named function, or 'none'",
                param="tool_choice",
            )
        lease = await self._lease(request.model, request.gpu_preference, header_preference, principal)
        try:
            engine = lease.engine
            own_template = await asyncio.to_thread(stored_chat_template, lease.lora.path) if lease.lora else None
            own_template = own_template or lease.replica.source.chat_template
            messages = template_messages(request.messages, own_template or engine.tokenizer.chat_template)
            prompt = await asyncio.to_thread(
                engine.render_chat, messages, None, request.add_special_tokens, own_template
            )
            guide = None
            tools_schema = tool_schema(request)
            if (schema := request.output_schema() or tools_schema) is not None:
                guide = Guide(schema)
                try:
                    await asyncio.to_thread(engine.check_guide, guide)
                except InvalidRequest as exc:
                    exc.param = "tools" if tools_schema is not None else "response_format.json_schema.schema"
                    raise
            param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
            prepared = self._prepare(
                lease, [prompt], request, request.token_limit(), "messages", param, "chatcmpl", request.logprobs_count()
            )
            prepared.guide = guide
            prepared.tool_mode, prepared.tool_name = request.forced_tool_mode(), forced_name(request)
            prepared.key_id = principal.key_id
            return prepared
        except BaseException:
            lease.release()
            raise

    async def chat(self, prepared: PreparedRequest) -> ChatCompletion:
        """Run every choice to the end and build the ``chat.completion``."""
        results = await self._collect(prepared)
        choices = []
        for index, result in enumerate(results):
            message, finish = self._reply(prepared, result)
            choices.append(
                ChatChoice(
                    index=index,
                    message=message,
                    finish_reason=finish,
                    logprobs=self._chat_logprobs(prepared, result.logprobs),
                )
            )
        return ChatCompletion(
            id=prepared.request_id,
            created=prepared.created,
            model=prepared.model_id,
            choices=choices,
            usage=self._usage(prepared, results),
            system_fingerprint=self.fingerprint(prepared),
        )

    async def chat_stream(self, prepared: PreparedRequest, include_usage: bool) -> AsyncIterator[str]:
        """SSE ``chat.completion.chunk`` events, then a usage chunk if asked (the router adds
        ``[DONE]``). Tool calls of a forced ``tool_choice`` are sent whole once their JSON is complete.

        Raises:
            SynthdError: generation failed; the router turns it into an error event.
        """

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
            body = ChatCompletionChunk(
                id=prepared.request_id,
                created=prepared.created,
                model=prepared.model_id,
                choices=choices,
                usage=usage,
                system_fingerprint=self.fingerprint(prepared),
            )
            return sse(body.model_dump(exclude=None if include_usage else {"usage"}))

        for index in range(len(prepared.params)):
            yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])
        held: dict[int, list[RequestOutput]] = {}
        async for index, output, results in self._stream_outputs(prepared):
            if prepared.tool_mode is not None:
                held.setdefault(index, []).append(output)
                if output.finish_reason is None:
                    continue
                outputs = held.pop(index)
                result = ChoiceResult(
                    "".join(o.text for o in outputs),
                    output.completion_tokens,
                    output.finish_reason,
                    [lp for o in outputs for lp in o.logprobs],
                )
                message, finish = self._reply(prepared, result)
                calls = [
                    DeltaToolCall(index=i, id=c.id, function=c.function) for i, c in enumerate(message.tool_calls or [])
                ]
                yield chunk(
                    [
                        ChatChunkChoice(
                            index=index,
                            delta=DeltaMessage(content=message.content, tool_calls=calls or None),
                            logprobs=self._chat_logprobs(prepared, result.logprobs),
                        )
                    ]
                )
                yield chunk([ChatChunkChoice(index=index, delta=DeltaMessage(), finish_reason=finish)])
            else:
                logprobs = self._chat_logprobs(prepared, list(output.logprobs))
                if output.text or logprobs is not None:
                    yield chunk(
                        [ChatChunkChoice(index=index, delta=DeltaMessage(content=output.text), logprobs=logprobs)]
                    )
                if output.finish_reason is not None:
                    yield chunk(
                        [ChatChunkChoice(index=index, delta=DeltaMessage(), finish_reason=output.finish_reason)]
                    )
            if results is not None and include_usage:
                yield chunk([], self._usage(prepared, results))

    @staticmethod
    def _reply(prepared: PreparedRequest, result: ChoiceResult) -> tuple[AssistantMessage, str]:
        """``message`` and ``finish_reason`` of one choice: text, or the tool calls of a forced
        ``tool_choice`` (a reply cut by ``max_tokens`` or a ``stop`` string stays text)."""
        text = AssistantMessage(content=result.text), result.finish_reason or "stop"
        if prepared.tool_mode is None or result.finish_reason != "stop":
            return text
        try:
            calls = parse_tool_calls(result.text, prepared.tool_mode, prepared.tool_name)
        except ValueError:
            return text
        return (
            AssistantMessage(content=None, tool_calls=calls),
            "tool_calls" if prepared.tool_mode == "required" else "stop",
        )

    @staticmethod
    def _chat_logprobs(prepared: PreparedRequest, logprobs: list[TokenLogprob]) -> ChoiceLogprobs | None:
        if prepared.params[0].logprobs is None:
            return None
        if not logprobs:
            return None
        return ChoiceLogprobs(
            content=[
                WireTokenLogprob(
                    token=lp.token,
                    logprob=lp.logprob,
                    bytes=list(lp.bytes),
                    top_logprobs=[TopLogprob(token=t, logprob=v, bytes=list(b)) for t, v, b in lp.top],
                )
                for lp in logprobs
            ]
        )

    # --- completions ------------------------------------------------------------------------------
    async def prepare_completion(
        self, request: CompletionRequest, header_preference: str | None = None, principal: Principal = OPERATOR
    ) -> PreparedRequest:
        """Lease the model (loading it if cold) and tokenize the prompts.

        Raises:
            InvalidRequest: empty prompt, ``context_length_exceeded``, a bad logit bias; the errors of
                ``ModelPool.acquire``.
        """
        lease = await self._lease(request.model, request.gpu_preference, header_preference, principal)
        try:
            prompts = await asyncio.to_thread(
                lambda: [lease.engine.encode(text, request.add_special_tokens) for text in request.prompts()]
            )
            if any(not ids for ids in prompts):
                raise InvalidRequest("The prompt must not be empty.", param="prompt")
            prepared = self._prepare(
                lease, prompts, request, request.max_tokens, "prompt", "max_tokens", "cmpl", request.logprobs
            )
            prepared.key_id = principal.key_id
            return prepared
        except BaseException:
            lease.release()
            raise

    async def completion(self, prepared: PreparedRequest) -> Completion:
        """Run every choice to the end and build the ``text_completion``."""
        results = await self._collect(prepared)
        return Completion(
            id=prepared.request_id,
            created=prepared.created,
            model=prepared.model_id,
            choices=[
                CompletionChoice(
                    index=i,
                    text=r.text,
                    finish_reason=r.finish_reason,
                    logprobs=self._completion_logprobs(prepared, r.logprobs, 0),
                )
                for i, r in enumerate(results)
            ],
            usage=self._usage(prepared, results),
            system_fingerprint=self.fingerprint(prepared),
        )

    async def completion_stream(self, prepared: PreparedRequest, include_usage: bool) -> AsyncIterator[str]:
        """SSE ``text_completion`` events, then a usage event if asked (the router adds ``[DONE]``).

        Raises:
            SynthdError: generation failed; the router turns it into an error event.
        """

        def event(choices: list[CompletionChoice], usage: Usage | None = None) -> str:
            body = Completion(
                id=prepared.request_id,
                created=prepared.created,
                model=prepared.model_id,
                choices=choices,
                usage=usage,
                system_fingerprint=self.fingerprint(prepared),
            )
            return sse(body.model_dump(exclude=None if include_usage else {"usage"}))

        offsets = [0] * len(prepared.params)
        decoders = [utf8_decoder() for _ in prepared.params]
        async for index, output, results in self._stream_outputs(prepared):
            # A token whose text is held back (part of a character) still sends its logprob.
            if output.text or output.logprobs or output.finish_reason is not None:
                logprobs = self._completion_logprobs(prepared, list(output.logprobs), offsets[index], decoders[index])
                offsets[index] += len(output.text)
                yield event(
                    [
                        CompletionChoice(
                            index=index, text=output.text, finish_reason=output.finish_reason, logprobs=logprobs
                        )
                    ]
                )
            if results is not None and include_usage:
                yield event([], self._usage(prepared, results))

    @staticmethod
    def _completion_logprobs(
        prepared: PreparedRequest,
        logprobs: list[TokenLogprob],
        offset: int,
        decoder: codecs.IncrementalDecoder | None = None,
    ) -> CompletionLogprobs | None:
        """The legacy ``logprobs`` object; ``text_offset`` counts the characters the tokens before
        complete (``decoder`` carries a character split across chunks of a stream)."""
        if prepared.params[0].logprobs is None:
            return None
        decoder = decoder or utf8_decoder()
        offsets = []
        for lp in logprobs:
            offsets.append(offset)
            offset += len(decoder.decode(bytes(lp.bytes)))
        return CompletionLogprobs(
            tokens=[lp.token for lp in logprobs],
            token_logprobs=[lp.logprob for lp in logprobs],
            top_logprobs=[{t: v for t, v, _ in lp.top} for lp in logprobs],
            text_offset=offsets,
        )

    # --- shared -----------------------------------------------------------------------------------
    def _prepare(
        self,
        lease: Lease,
        prompts: list[list[int]],
        request: SamplingFields,
        token_limit: int | None,
        prompt_param: str,
        limit_param: str,
        id_prefix: str,
        logprobs: int | None,
    ) -> PreparedRequest:
        context = lease.engine.max_model_len
        longest = max(len(ids) for ids in prompts)
        if longest >= context or (token_limit is not None and longest + token_limit > context):
            asked = f" + {token_limit} requested completion tokens" if token_limit is not None else ""
            raise InvalidRequest(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{longest} prompt tokens{asked}. Please reduce the length of the {prompt_param} or {limit_param}.",
                param=prompt_param if token_limit is None else limit_param,
                code="context_length_exceeded",
            )
        bias = request.logit_bias_pairs()
        vocab = len(lease.engine.tokenizer)
        if any(token >= vocab for token, _ in bias):
            raise InvalidRequest(
                f"logit_bias names a token id outside the vocabulary (0-{vocab - 1}).",
                param="logit_bias",
                code="invalid_value",
            )
        ids, params = [], []
        for prompt in prompts:
            for choice in range(request.n):
                ids.append(prompt)
                params.append(
                    SamplingParams(
                        max_tokens=token_limit if token_limit is not None else context - len(prompt),
                        temperature=request.temperature,
                        top_p=request.top_p,
                        stop=request.stop_list(),
                        seed=None if request.seed is None else (request.seed + choice) % 2**64,
                        presence_penalty=request.presence_penalty,
                        frequency_penalty=request.frequency_penalty,
                        logit_bias=bias,
                        logprobs=logprobs,
                        ignore_eos=request.ignore_eos,
                    )
                )
        return PreparedRequest(
            lease=lease,
            prompt_ids=ids,
            params=params,
            prompt_tokens=sum(len(p) for p in prompts),
            request_id=f"{id_prefix}-{uuid.uuid4().hex}",
        )

    @staticmethod
    def _usage(prepared: PreparedRequest, results: list[ChoiceResult]) -> Usage:
        completion = sum(r.completion_tokens for r in results)
        return Usage(
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=completion,
            total_tokens=prepared.prompt_tokens + completion,
        )

    async def _collect(self, prepared: PreparedRequest) -> list[ChoiceResult]:
        results: list[ChoiceResult] = []
        async for _index, _output, finished in self._stream_outputs(prepared):
            if finished is not None:
                results = finished
        return results

    async def _stream_outputs(
        self, prepared: PreparedRequest
    ) -> AsyncIterator[tuple[int, RequestOutput, list[ChoiceResult] | None]]:
        """Fan in every choice's outputs as ``(choice index, output, results)``; ``results`` (all
        choices) comes with the last output. Records the request's metrics once it ends.

        Raises:
            GenerationError: a choice failed in the engine. Overloaded: the engine aborted it
                (shutting down).
        """
        results = [ChoiceResult() for _ in prepared.params]
        queue: asyncio.Queue[tuple[int, RequestOutput | BaseException]] = asyncio.Queue()
        engine = prepared.lease.engine
        first_token_s: float | None = None
        scheduled_s: float | None = None

        async def pump(index: int) -> None:
            try:
                async for output in engine.generate(
                    f"{prepared.request_id}-{index}",
                    prepared.prompt_ids[index],
                    prepared.params[index],
                    prepared.lease.lora,
                    prepared.guide,
                ):
                    await queue.put((index, output))
            except Exception as exc:  # noqa: BLE001 -- surfaced as this request's error, never a silent hang
                await queue.put((index, exc))

        tasks = [asyncio.create_task(pump(i)) for i in range(len(prepared.params))]
        pending = len(tasks)
        finish_reason = "abort"
        try:
            while pending:
                index, item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason == "abort":
                    raise Overloaded("The request was aborted: the server is shutting down.", retry_after_s=5)
                if scheduled_s is None:
                    scheduled_s = item.scheduled_s
                if first_token_s is None and item.token_ids:
                    first_token_s = time.perf_counter()
                result = results[index]
                result.text += item.text
                result.completion_tokens = item.completion_tokens
                result.logprobs.extend(item.logprobs)
                if item.finish_reason is not None:
                    result.finish_reason = finish_reason = item.finish_reason
                    pending -= 1
                yield index, item, results if pending == 0 else None
        finally:
            for task in tasks:
                task.cancel()
            if self.on_request is not None:
                self.on_request(
                    RequestRecord(
                        model=prepared.model_id,
                        prompt_tokens=prepared.prompt_tokens,
                        completion_tokens=sum(r.completion_tokens for r in results),
                        finish_reason=finish_reason if pending == 0 else "abort",
                        n=len(results),
                        arrival_s=prepared.arrival_s,
                        scheduled_s=scheduled_s,
                        first_token_s=first_token_s,
                        finished_s=time.perf_counter(),
                        max_choice_tokens=max(r.completion_tokens for r in results),
                        key_id=prepared.key_id,
                    )
                )
