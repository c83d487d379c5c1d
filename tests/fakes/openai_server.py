"""A fake of OpenAI's Chat Completions API (platform.openai.com/docs/api-reference/chat): the
``chat.completion`` object, ``chat.completion.chunk`` SSE ending in ``data: [DONE]``, streamed
tool-call deltas, ``stream_options.include_usage``, and ``{"error": {...}}`` bodies. It checks what
the real API checks that a client could get wrong: the bearer key, message roles, and that every
``tool`` message answers a ``tool_call_id`` of an earlier assistant turn."""

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tests.fakes.script import Reply, Script, count_tokens, default_text, words

API_KEY = "sk-fake-openai"


def error(
    status: int,
    message: str,
    error_type: str,
    headers: dict[str, str] | None = None,
    code: str | None = None,
    param: str | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}},
        status_code=status,
        headers=headers,
    )


def check(body: dict[str, Any]) -> str | None:
    """The message a real server would return for this body, or None if it is acceptable."""
    if not body.get("model"):
        return "you must provide a model parameter"
    seen_calls: set[str] = set()
    for i, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            return f"Invalid value: '{role}'. messages[{i}].role"
        for call in message.get("tool_calls") or []:
            seen_calls.add(call["id"])
            json.loads(call["function"]["arguments"])
        if role == "tool" and message.get("tool_call_id") not in seen_calls:
            return f"messages[{i}]: tool message must answer a preceding tool_call_id"
    if not body.get("messages"):
        return "messages must be a non-empty array"
    return None


def create_app(script: Script) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return error(401, "Incorrect API key provided", "invalid_request_error")
        body = await request.json()
        reply = script.next(body)
        await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            return error(reply.status, reply.message, reply.error_type, reply.headers, reply.code, reply.param)
        if (problem := check(body)) is not None:
            return error(400, problem, "invalid_request_error")
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if reply.json is not None:
            text, cut = json.dumps(reply.json), False
        elif reply.text is not None:
            text, cut = reply.text, False
        else:
            text, cut = default_text(limit)
        calls = [
            {
                "id": f"call_{uuid.uuid4().hex[:8]}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for name, args in reply.tool_calls
        ]
        finish = "tool_calls" if calls else "length" if cut else "stop"
        usage = {
            "prompt_tokens": count_tokens(body["messages"]),
            "completion_tokens": len(text.split()) + len(calls),
            "total_tokens": 0,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if not body.get("stream"):
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": text if not calls else None,
                            **({"tool_calls": calls} if calls else {}),
                        },
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            stream(
                reply,
                completion_id,
                body["model"],
                "" if calls else text,
                calls,
                finish,
                usage if include_usage else None,
            ),
            media_type="text/event-stream",
        )

    return app


def stream(
    reply: Reply, completion_id: str, model: str, text: str, calls: list[dict], finish: str, usage: dict | None
) -> Iterator[str]:
    def chunk(delta: dict, finish_reason: str | None = None, **extra: Any) -> str:
        payload = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            **extra,
        }
        return f"data: {json.dumps(payload)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for sent, piece in enumerate(words(text)):
        if reply.break_after is not None and sent >= reply.break_after:
            raise ConnectionResetError("scripted break")
        yield chunk({"content": piece})
    for index, call in enumerate(calls):
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                ]
            }
        )
        arguments = call["function"]["arguments"]
        for start in range(0, len(arguments), 5):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[start : start + 5]}}]})
    if reply.truncate:
        return
    yield chunk({}, finish)
    if usage is not None:
        final = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(final)}\n\n"
    yield "data: [DONE]\n\n"
