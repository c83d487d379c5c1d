"""A fake of Anthropic's Messages API (docs.anthropic.com/en/api/messages, /messages-streaming,
/errors): the ``message`` object with content blocks, ``tool_use``, stop reasons, the SSE event
sequence (``message_start``, ``content_block_start``, ``ping``, ``content_block_delta`` with
``text_delta``/``input_json_delta``, ``content_block_stop``, ``message_delta``, ``message_stop``),
``error`` events and ``{"type": "error", "error": {...}}`` bodies. It checks what the real API
checks that a client could get wrong: the key (``x-api-key``, or a bearer token as SDK 2.x sends
it), ``anthropic-version``, required ``max_tokens``,
only ``user``/``assistant`` roles, alternating turns starting with ``user``, and every
``tool_result`` answering a ``tool_use`` of the turn before."""

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tests.fakes.script import Reply, Script, count_tokens, default_text, words

API_KEY = "sk-ant-fake"


def error(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None, code: str | None = None
) -> JSONResponse:
    details = {"details": {"error_code": code}} if code is not None else {}
    return JSONResponse(
        {"type": "error", "error": {"type": error_type, "message": message, **details}},
        status_code=status,
        headers=headers,
    )


def check(body: dict[str, Any]) -> str | None:
    """The message the real API would return for this body, or None if it is acceptable."""
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages") or []
    if not messages or messages[0].get("role") != "user":
        return 'messages: first message must use the "user" role'
    previous_tool_uses: set[str] = set()
    for i, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if i and messages[i - 1]["role"] == message["role"]:
            return 'messages: roles must alternate between "user" and "assistant"'
        blocks = (
            message["content"]
            if isinstance(message["content"], list)
            else [{"type": "text", "text": message["content"]}]
        )
        for block in blocks:
            if block["type"] == "text" and not block["text"]:
                return f"messages.{i}: text content blocks must be non-empty"
            if block["type"] == "tool_result" and block["tool_use_id"] not in previous_tool_uses:
                return f"messages.{i}: tool_result block(s) provided when previous message does not have tool_use"
        previous_tool_uses = {b["id"] for b in blocks if b["type"] == "tool_use"}
    return None


def create_app(script: Script) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/messages")
    async def messages(request: Request) -> Any:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if API_KEY not in (request.headers.get("x-api-key"), bearer):
            return error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return error(400, "invalid_request_error", "anthropic-version: header is required")
        body = await request.json()
        reply = script.next(body, request.headers)
        await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return error(reply.status, reply.error_type, reply.message, reply.headers, reply.code)
        if (problem := check(body)) is not None:
            return error(400, "invalid_request_error", problem)
        blocks, stop = content(reply, body)
        usage = {
            "input_tokens": count_tokens(body["messages"]) + count_tokens(body.get("system") or ""),
            "output_tokens": count_tokens([b.get("text") or b.get("input") for b in blocks]),
        }
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "content": blocks,
            "model": body["model"],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return message
        return StreamingResponse(stream(reply, message), media_type="text/event-stream")

    return app


def content(reply: Reply, body: dict[str, Any]) -> tuple[list[dict], str]:
    """Content blocks and stop reason for ``reply``."""
    choice = body.get("tool_choice") or {}
    forced = choice.get("name") if choice.get("type") == "tool" else None
    if reply.json is not None and forced:
        block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:12]}", "name": forced, "input": reply.json}
        return [block], "tool_use"
    if reply.json is not None:
        return [{"type": "text", "text": json.dumps(reply.json)}], reply.stop_reason or "end_turn"
    if reply.text is not None or reply.tool_calls:
        text, cut = reply.text or "", False
    else:
        text, cut = default_text(body["max_tokens"])
    blocks = [{"type": "text", "text": text}] if text else []
    blocks += [
        {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:12]}", "name": name, "input": args}
        for name, args in reply.tool_calls
    ]
    stop = reply.stop_reason or ("tool_use" if reply.tool_calls else "max_tokens" if cut else "end_turn")
    return blocks, stop


def stream(reply: Reply, message: dict[str, Any]) -> Iterator[str]:
    def event(name: str, data: dict) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 1},
    }
    yield event("message_start", {"message": start})
    sent = 0
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            yield event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
            yield event("ping", {})
            for piece in words(block["text"]):
                if reply.break_after is not None and sent >= reply.break_after:
                    if reply.stream_error:
                        yield event("error", {"error": {"type": reply.stream_error, "message": "Overloaded"}})
                        return
                    raise ConnectionResetError("scripted break")
                yield event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}})
                sent += 1
        else:
            yield event(
                "content_block_start",
                {
                    "index": index,
                    "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}},
                },
            )
            arguments = json.dumps(block["input"])
            for begin in range(0, len(arguments), 7):
                yield event(
                    "content_block_delta",
                    {
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": arguments[begin : begin + 7]},
                    },
                )
        yield event("content_block_stop", {"index": index})
    if reply.truncate:
        return
    yield event(
        "message_delta",
        {
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        },
    )
    yield event("message_stop", {})
