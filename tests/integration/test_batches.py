"""The Batch API through the official SDK: bad lines reported per line, chat and completions,
cancel keeps finished results, a restart resumes where the batch was, batches private to the
creating key's project."""

import json
import time
from pathlib import Path

import openai
import pytest

from synthd.server_process import ServerProcess
from tests.support.cli import create_key
from tests.support.server import MODEL, server_env

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
ENDED = ("completed", "failed", "cancelled", "expired")


@pytest.fixture(scope="module")
def keys(home: Path, models_dir: Path) -> dict[str, str]:
    """Two projects' keys, made before the server starts (so every request needs one)."""
    return {project: create_key(home, models_dir, "--project", project) for project in ("alpha", "beta")}


@pytest.fixture(scope="module")
def server(home: Path, models_dir: Path, keys: dict[str, str]) -> ServerProcess:
    with ServerProcess(
        ["--dtype", "float32"], log_path=home / "server.log", env=server_env(home, models_dir), api_key=keys["alpha"]
    ) as process:
        yield process


@pytest.fixture(scope="module")
def sdk(server: ServerProcess, keys: dict[str, str]) -> openai.OpenAI:
    """Project alpha's client."""
    return openai.OpenAI(base_url=server.base_url, api_key=keys["alpha"], max_retries=0, timeout=120)


def chat_body(text: str, max_tokens: int = 2, model: str = MODEL) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0}


def line(custom_id: str, body: dict, url: str = CHAT) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def submit(sdk: openai.OpenAI, lines: list[str], endpoint: str = CHAT, **extra):
    upload = sdk.files.create(file=("requests.jsonl", "\n".join(lines).encode() + b"\n"), purpose="batch")
    return sdk.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h", **extra)


def wait(sdk: openai.OpenAI, batch_id: str, until=lambda b: b.status in ENDED, timeout_s: float = 900):
    deadline = time.monotonic() + timeout_s
    while not until(batch := sdk.batches.retrieve(batch_id)):
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
    return batch


def records(sdk: openai.OpenAI, file_id: str | None) -> dict[str, dict]:
    """A result file's records by custom_id (each custom_id exactly once)."""
    if file_id is None:
        return {}
    rows = [json.loads(r) for r in sdk.files.content(file_id).text.splitlines()]
    by_id = {r["custom_id"]: r for r in rows}
    assert len(by_id) == len(rows)
    return by_id


def test_batch_of_20_with_2_bad_lines(sdk: openai.OpenAI) -> None:
    good = {f"q{i}": chat_body(f"Name a color, number {i}.") for i in range(18)}
    lines = [line(cid, body) for cid, body in good.items()]
    lines.insert(5, line("no-such-model", chat_body("Hi", model="no-such-model")))
    lines.insert(11, line("empty-messages", {"model": MODEL, "messages": []}))
    created = submit(sdk, lines, metadata={"purpose": "test"})
    assert created.status == "validating" and created.metadata == {"purpose": "test"}

    batch = wait(sdk, created.id)
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (20, 18, 2)
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.model == MODEL and batch.usage.output_tokens == 18 * 2
    outputs = records(sdk, batch.output_file_id)
    assert set(outputs) == set(good)
    for custom_id, record in outputs.items():
        assert record["error"] is None and record["response"]["status_code"] == 200
        assert record["response"]["body"]["object"] == "chat.completion"
        assert record["response"]["body"]["usage"]["completion_tokens"] == 2, custom_id
    direct = sdk.chat.completions.create(**good["q7"])
    assert outputs["q7"]["response"]["body"]["choices"][0]["message"]["content"] == direct.choices[0].message.content

    errors = records(sdk, batch.error_file_id)
    assert set(errors) == {"no-such-model", "empty-messages"}
    missing = errors["no-such-model"]["response"]
    assert missing["status_code"] == 404 and missing["body"]["error"]["code"] == "model_not_found"
    invalid = errors["empty-messages"]["response"]
    assert invalid["status_code"] == 400 and invalid["body"]["error"]["param"] == "messages"
    assert created.id in [b.id for b in sdk.batches.list(limit=100)]


def test_completions_batch(sdk: openai.OpenAI) -> None:
    prompts = {"a": "The capital of France is", "b": "One, two, three,"}
    lines = [
        line(cid, {"model": MODEL, "prompt": p, "max_tokens": 3, "temperature": 0}, COMPLETIONS)
        for cid, p in prompts.items()
    ]
    batch = wait(sdk, submit(sdk, lines, endpoint=COMPLETIONS).id)
    assert batch.status == "completed" and batch.error_file_id is None
    outputs = records(sdk, batch.output_file_id)
    for custom_id, prompt in prompts.items():
        body = outputs[custom_id]["response"]["body"]
        direct = sdk.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0)
        assert body["object"] == "text_completion" and body["choices"][0]["text"] == direct.choices[0].text


def test_malformed_lines_are_reported_per_line(sdk: openai.OpenAI) -> None:
    lines = [
        line("ok-1", chat_body("Hello")),
        "{not json",
        json.dumps({"custom_id": "get", "method": "GET", "url": CHAT, "body": chat_body("Hi")}),
        line("embeddings", {"model": MODEL, "input": "x"}, "/v1/embeddings"),
        line("completions-url", {"model": MODEL, "prompt": "x"}, COMPLETIONS),
        line("ok-1", chat_body("Again")),
        line("streamed", {**chat_body("Hi"), "stream": True}),
        line("ok-2", chat_body("Bye")),
    ]
    batch = wait(sdk, submit(sdk, lines).id)
    assert batch.status == "completed"
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (8, 2, 6)
    assert set(records(sdk, batch.output_file_id)) == {"ok-1", "ok-2"}
    rows = [json.loads(r) for r in sdk.files.content(batch.error_file_id).text.splitlines()]
    codes = {(r["custom_id"], (r["error"] or {}).get("code") or r["response"]["body"]["error"]["param"]) for r in rows}
    assert codes == {
        (None, "invalid_json_line"),
        ("get", "invalid_method"),
        ("embeddings", "invalid_url"),
        ("completions-url", "invalid_url"),
        ("ok-1", "duplicate_custom_id"),
        ("streamed", "stream"),
    }
    assert all(r["response"] is None for r in rows if r["custom_id"] != "streamed")


def test_a_file_without_any_request_fails_the_batch(sdk: openai.OpenAI) -> None:
    batch = wait(sdk, submit(sdk, ["this is not jsonl", "[1, 2]"]).id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert [(e.line, e.code) for e in batch.errors.data] == [(1, "invalid_json_line"), (2, "invalid_json_line")]


def test_create_errors(sdk: openai.OpenAI) -> None:
    tuning = sdk.files.create(file=("t.jsonl", line("x", chat_body("x")).encode()), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as info:
        sdk.batches.create(input_file_id=tuning.id, endpoint=CHAT, completion_window="24h")
    assert info.value.param == "input_file_id"
    with pytest.raises(openai.NotFoundError):
        sdk.batches.create(input_file_id="file-missing", endpoint=CHAT, completion_window="24h")
    upload = sdk.files.create(file=("b.jsonl", line("x", chat_body("x")).encode()), purpose="batch")
    for field, value in (("completion_window", "48h"), ("endpoint", "/v1/embeddings")):
        with pytest.raises(openai.BadRequestError) as info:
            sdk.batches.create(
                **{"input_file_id": upload.id, "endpoint": CHAT, "completion_window": "24h", field: value}
            )
        assert info.value.param == field
    with pytest.raises(openai.NotFoundError):
        sdk.batches.retrieve("batch_missing")


def test_batches_are_private_to_their_project(server: ServerProcess, sdk: openai.OpenAI, keys: dict[str, str]) -> None:
    created = submit(sdk, [line("p1", chat_body("Hi"))])
    beta = openai.OpenAI(base_url=server.base_url, api_key=keys["beta"], max_retries=0, timeout=120)
    for call in (
        lambda: beta.batches.retrieve(created.id),
        lambda: beta.batches.cancel(created.id),
        lambda: beta.batches.create(input_file_id=created.input_file_id, endpoint=CHAT, completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert created.id not in [b.id for b in beta.batches.list(limit=100)]
    batch = wait(sdk, created.id)
    assert batch.status == "completed" and set(records(sdk, batch.output_file_id)) == {"p1"}
    with pytest.raises(openai.NotFoundError):
        beta.files.content(batch.output_file_id)
    assert created.id in [b.id for b in sdk.batches.list(limit=100)]


def test_cancel_mid_batch_keeps_finished_results(sdk: openai.OpenAI) -> None:
    lines = [line(f"c{i}", chat_body(f"Count to {i}.", max_tokens=4)) for i in range(40)]
    created = submit(sdk, lines)
    wait(sdk, created.id, until=lambda b: b.request_counts.completed >= 2)
    cancelling = sdk.batches.cancel(created.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
    batch = wait(sdk, created.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert 2 <= batch.request_counts.completed < 40 and batch.request_counts.failed == 0
    outputs = records(sdk, batch.output_file_id)
    assert len(outputs) == batch.request_counts.completed
    assert all(r["response"]["status_code"] == 200 for r in outputs.values())
    with pytest.raises(openai.ConflictError):
        sdk.batches.cancel(created.id)
    assert sdk.chat.completions.create(**chat_body("Still there?")).choices[0].message.content


def test_batch_waits_while_an_interactive_request_runs(sdk: openai.OpenAI) -> None:
    stream = iter(
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell a story."}],
            max_tokens=40,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    next(stream)
    created = submit(sdk, [line(f"w{i}", chat_body(f"Hi {i}")) for i in range(2)])
    seen = [sdk.batches.retrieve(created.id).request_counts.completed for _chunk in stream]
    assert len(seen) >= 35 and set(seen) == {0}  # no line ran beside the user's request
    batch = wait(sdk, created.id)
    assert batch.status == "completed" and batch.request_counts.completed == 2


def test_restart_mid_batch_resumes(server: ServerProcess, sdk: openai.OpenAI) -> None:
    lines = [line(f"r{i}", chat_body(f"Say {i}.", max_tokens=3)) for i in range(10)]
    created = submit(sdk, lines)
    before = wait(sdk, created.id, until=lambda b: b.request_counts.completed >= 2).request_counts.completed
    stopped_at = time.time()
    server.stop()
    server.start()
    batch = wait(sdk, created.id)
    assert batch.status == "completed"
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (10, 10, 0)
    outputs = records(sdk, batch.output_file_id)
    assert set(outputs) == {f"r{i}" for i in range(10)}
    answered_before = [r for r in outputs.values() if r["response"]["body"]["created"] <= stopped_at]
    assert len(answered_before) >= before  # kept from before the restart, not run again
