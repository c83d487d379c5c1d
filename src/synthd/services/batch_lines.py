"""The lines of a batch input file, checked one by one: a bad line is that line's error, never the batch's.

Each non-blank line of the JSONL file is one request, as OpenAI's batch input defines it:
``{"custom_id", "method": "POST", "url", "body"}``. A line is either runnable (its ``request`` is
the endpoint's validated body) or carries its ``problem``:

- ``MalformedLine``: the line itself is wrong (not a JSON object, no ``custom_id`` or a duplicate
  one, a method other than POST, a url this batch does not run, no ``body`` object, unknown keys).
  It becomes an error record with ``error: {code, message}``.
- any other exception (a pydantic ``ValidationError`` of the body, ``stream: true``): the request
  is one the endpoint would refuse; its error record carries the endpoint's error response.

Parsing is deterministic, so a batch resumed after a restart sees the same lines under the same
numbers (1-based line numbers of the file, blank lines counted).
"""

import json
from dataclasses import dataclass

from pydantic import ValidationError

from synthd.errors import InvalidRequest
from synthd.protocol.batches import BATCH_ENDPOINTS, CHAT_URL
from synthd.protocol.openai import ChatCompletionRequest, CompletionRequest

LINE_KEYS = ("custom_id", "method", "url", "body")
MAX_BATCH_REQUESTS = 50_000
"""Most requests in one batch (OpenAI's limit)."""


class MalformedLine(InvalidRequest):
    """A batch input line that is not a well-formed request line; ``code`` says what is wrong:
    ``invalid_json_line``, ``invalid_custom_id``, ``duplicate_custom_id``, ``invalid_method``,
    ``invalid_url``, ``invalid_body`` or ``unsupported_parameter``."""


@dataclass(frozen=True)
class BatchLine:
    """One request line: its 1-based ``number`` in the file, ``custom_id`` (None when missing),
    and either ``request`` (runnable) or ``problem`` (why not)."""

    number: int
    custom_id: str | None
    request: ChatCompletionRequest | CompletionRequest | None = None
    problem: Exception | None = None


def parse_lines(content: bytes, endpoint: str) -> list[BatchLine]:
    """Every non-blank line of ``content`` checked for a batch running ``endpoint``; later lines
    with a ``custom_id`` already seen are ``duplicate_custom_id`` problems."""
    lines: list[BatchLine] = []
    seen: set[str] = set()
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if not raw.strip():
            continue
        line = _parse_line(number, raw, endpoint)
        if line.custom_id is not None:
            if line.custom_id in seen:
                line = BatchLine(
                    number,
                    line.custom_id,
                    problem=MalformedLine(
                        f"Line {number}: custom_id '{line.custom_id}' was already used by an earlier line; each request "
                        "needs its own.",
                        param="custom_id",
                        code="duplicate_custom_id",
                    ),
                )
            seen.add(line.custom_id)
        lines.append(line)
    return lines


def _parse_line(number: int, raw: bytes, endpoint: str) -> BatchLine:
    try:
        item = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return BatchLine(
            number, None, problem=MalformedLine(f"Line {number} is not valid JSON.", code="invalid_json_line")
        )
    if not isinstance(item, dict):
        return BatchLine(
            number, None, problem=MalformedLine(f"Line {number} is not a JSON object.", code="invalid_json_line")
        )
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return BatchLine(
            number,
            None,
            problem=MalformedLine(
                f"Line {number} has no custom_id (a non-empty string).", param="custom_id", code="invalid_custom_id"
            ),
        )
    return BatchLine(number, custom_id, *_request(number, item, endpoint))


def _request(
    number: int, item: dict, endpoint: str
) -> tuple[ChatCompletionRequest | CompletionRequest | None, Exception | None]:
    unknown = sorted(set(item) - set(LINE_KEYS))
    if unknown:
        return None, MalformedLine(
            f"Line {number} has keys a batch line does not have: {', '.join(unknown)}.",
            param=unknown[0],
            code="unsupported_parameter",
        )
    if item.get("method") != "POST":
        return None, MalformedLine(
            f"Line {number}: method must be 'POST', not {item.get('method')!r}.", param="method", code="invalid_method"
        )
    url = item.get("url")
    if url not in BATCH_ENDPOINTS:
        return None, MalformedLine(
            f"Line {number}: url {url!r} is not an endpoint synthd batches run ({', '.join(BATCH_ENDPOINTS)}).",
            param="url",
            code="invalid_url",
        )
    if url != endpoint:
        return None, MalformedLine(
            f"Line {number}: url '{url}' differs from the batch's endpoint '{endpoint}'; all "
            "requests in a batch use its endpoint.",
            param="url",
            code="invalid_url",
        )
    body = item.get("body")
    if not isinstance(body, dict):
        return None, MalformedLine(f"Line {number} has no body object.", param="body", code="invalid_body")
    try:
        request = (ChatCompletionRequest if url == CHAT_URL else CompletionRequest).model_validate(body)
    except ValidationError as exc:
        return None, exc
    if request.stream:
        return None, InvalidRequest(
            "Streaming is not available in a batch: remove 'stream' from the body.",
            param="stream",
            code="invalid_value",
        )
    return request, None
