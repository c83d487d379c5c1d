"""Every bad input gets OpenAI's error object with the right status, and the server keeps serving."""

import json
import logging
import threading
import time

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI

from synthd.api.errors import UnexpectedErrorMiddleware, install_error_handlers
from synthd.server_process import ServerProcess, free_port
from tests.support.server import MODEL, server_env

GOOD = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def with_(**changes):
    body = {**GOOD, **changes}
    return {k: v for k, v in body.items() if v is not ...}


CASES = [
    # (id, path, body, status, code, param)
    (
        "unsupported param",
        "/chat/completions",
        with_(prediction={"type": "content", "content": "x"}),
        400,
        "unsupported_parameter",
        "prediction",
    ),
    ("unsupported functions", "/chat/completions", with_(functions=[]), 400, "unsupported_parameter", "functions"),
    ("empty tools", "/chat/completions", with_(tools=[]), 400, "invalid_value", "tools"),
    ("temperature too high", "/chat/completions", with_(temperature=5), 400, "invalid_value", "temperature"),
    ("top_p zero", "/chat/completions", with_(top_p=0), 400, "invalid_value", "top_p"),
    ("n zero", "/chat/completions", with_(n=0), 400, "invalid_value", "n"),
    ("max_tokens zero", "/chat/completions", with_(max_tokens=0), 400, "invalid_value", "max_tokens"),
    ("max_tokens string", "/chat/completions", with_(max_tokens="many"), 400, "invalid_value", "max_tokens"),
    ("penalty out of range", "/chat/completions", with_(presence_penalty=3), 400, "invalid_value", "presence_penalty"),
    ("five stops", "/chat/completions", with_(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value", "stop"),
    ("no messages", "/chat/completions", with_(messages=...), 400, "invalid_value", "messages"),
    ("empty messages", "/chat/completions", with_(messages=[]), 400, "invalid_value", "messages"),
    (
        "bad role",
        "/chat/completions",
        with_(messages=[{"role": "robot", "content": "x"}]),
        400,
        "invalid_value",
        "messages.0.role",
    ),
    (
        "image part",
        "/chat/completions",
        with_(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        None,
        None,
    ),
    ("no model", "/chat/completions", with_(model=...), 400, "invalid_value", "model"),
    (
        "stream_options without stream",
        "/chat/completions",
        with_(stream_options={"include_usage": True}),
        400,
        "invalid_value",
        None,
    ),
    ("unknown model", "/chat/completions", with_(model="gpt-9"), 404, "model_not_found", "model"),
    ("context exceeded", "/chat/completions", with_(max_tokens=9000), 400, "context_length_exceeded", "max_tokens"),
    (
        "context exceeded by prompt",
        "/chat/completions",
        with_(messages=[{"role": "user", "content": "word " * 9000}], max_tokens=...),
        400,
        "context_length_exceeded",
        "messages",
    ),
    ("completions unknown model", "/completions", {"model": "nope", "prompt": "x"}, 404, "model_not_found", "model"),
    ("completions empty prompt", "/completions", {"model": MODEL, "prompt": ""}, 400, None, "prompt"),
    (
        "completions echo",
        "/completions",
        {"model": MODEL, "prompt": "x", "echo": True},
        400,
        "unsupported_parameter",
        "echo",
    ),
    ("seed beyond int64", "/chat/completions", with_(seed=2**64), 400, "invalid_value", "seed"),
    ("seed below int64", "/chat/completions", with_(seed=-(2**63) - 1), 400, "invalid_value", "seed"),
    ("stream as string", "/chat/completions", with_(stream="yes"), 400, "invalid_value", "stream"),
    ("unknown field with dash", "/chat/completions", with_(**{"foo-bar": 1}), 400, "unsupported_parameter", "foo-bar"),
    ("model name too long", "/chat/completions", with_(model="x" * 5000), 400, "invalid_value", "model"),
    ("model as a path", "/chat/completions", with_(model="/etc/passwd"), 404, "model_not_found", "model"),
    (
        "model escaping the models folder",
        "/chat/completions",
        with_(model="../models/x"),
        404,
        "model_not_found",
        "model",
    ),
    ("stop string too long", "/chat/completions", with_(stop="x" * 300), 400, "invalid_value", "stop"),
    (
        "too many messages",
        "/chat/completions",
        with_(messages=[{"role": "user", "content": "x"}] * 2049),
        400,
        "invalid_value",
        "messages",
    ),
    (
        "schema too deep",
        "/chat/completions",
        with_(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "deep", "schema": {"a": json.loads("[" * 40 + "1" + "]" * 40)}},
            }
        ),
        400,
        "invalid_value",
        "response_format.json_schema.schema",
    ),
    (
        "logit bias out of range",
        "/chat/completions",
        with_(logit_bias={"42": 101}),
        400,
        "invalid_value",
        "logit_bias.42",
    ),
    (
        "logit bias beyond the vocabulary",
        "/chat/completions",
        with_(logit_bias={"99999999": 1}),
        400,
        "invalid_value",
        "logit_bias",
    ),
    ("top_logprobs without logprobs", "/chat/completions", with_(top_logprobs=2), 400, "invalid_value", None),
    ("model under unknown home", "/chat/completions", with_(model="~nosuchuser/foo"), 404, "model_not_found", "model"),
    (
        "unicode digit count",
        "/chat/completions",
        with_(gpu_preference="H100:²"),
        400,
        "invalid_gpu_preference",
        "gpu_preference",
    ),
    (
        "arabic digit count",
        "/chat/completions",
        with_(gpu_preference="H100:٢"),
        400,
        "invalid_gpu_preference",
        "gpu_preference",
    ),
    (
        "count past int's digit limit",
        "/chat/completions",
        with_(gpu_preference="H100:" + "9" * 5000),
        400,
        "invalid_gpu_preference",
        "gpu_preference",
    ),
    ("too many sequences", "/completions", {"model": MODEL, "prompt": ["a"] * 100, "n": 2}, 400, "invalid_value", None),
]


@pytest.mark.parametrize("name,path,body,status,code,param", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_openai_error(server: ServerProcess, name, path, body, status, code, param) -> None:
    response = httpx.post(server.base_url + path, json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    follow_up = httpx.post(server.base_url + "/chat/completions", json=GOOD, timeout=60)
    assert follow_up.status_code == 200


def test_lone_surrogate_is_400(server: ServerProcess) -> None:
    for path, body in (
        ("/chat/completions", b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}'),
        ("/completions", b'{"model": "%s", "prompt": "\\ud800"}'),
    ):
        response = httpx.post(
            server.base_url + path,
            content=body % MODEL.encode(),
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 400, response.text
        assert "tokenized" in response.json()["error"]["message"]


def test_extreme_seeds_and_tiny_temperature_answer(server: ServerProcess) -> None:
    """The int64 ends are seeds like any other (the same seed, the same answer), and temperatures
    too small for a float32 division mean greedy: the temperature-0 answer, streamed or not."""

    def ask(**extra) -> dict:
        response = httpx.post(server.base_url + "/chat/completions", json=with_(max_tokens=8, **extra), timeout=60)
        assert response.status_code == 200, (extra, response.text)
        return response.json()

    def texts(reply: dict) -> list[str]:
        return [choice["message"]["content"] for choice in reply["choices"]]

    for seed in (2**63 - 1, -(2**63)):
        first = ask(seed=seed, n=2, temperature=1.0)
        assert [c["index"] for c in first["choices"]] == [0, 1]
        assert all(c["finish_reason"] in ("stop", "length") and c["message"]["content"] for c in first["choices"])
        assert first["usage"]["completion_tokens"] <= 2 * 8
        assert texts(ask(seed=seed, n=2, temperature=1.0)) == texts(first)  # reproducible at the int64 ends
    greedy = texts(ask(temperature=0))
    assert texts(ask(temperature=1e-38)) == greedy
    with httpx.stream(
        "POST", server.base_url + "/chat/completions", json=with_(max_tokens=8, temperature=1e-45, stream=True)
    ) as stream:
        assert stream.status_code == 200
        events = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
    assert ["".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])] == greedy


def test_invalid_json_is_400(server: ServerProcess) -> None:
    response = httpx.post(
        server.base_url + "/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_route_and_model_are_404_envelopes(server: ServerProcess) -> None:
    assert httpx.get(server.base_url + "/nothing-here").json()["error"]["type"] == "not_found_error"
    response = httpx.get(server.base_url + "/models/org/unknown-model")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_a_model_name_no_folder_can_have_is_404_everywhere(server: ServerProcess) -> None:
    """256 characters pass the id check but no file system holds such a folder name (it answered 500)."""
    name = "b" * 256
    chat = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    answers = [
        httpx.post(f"{server.base_url}/chat/completions", json=chat),
        httpx.post(f"{server.base_url}/completions", json={"model": name, "prompt": "hi", "max_tokens": 2}),
        httpx.get(f"{server.base_url}/models/{name}"),
        httpx.post(f"{server.root_url}/warmup/{name}"),
        httpx.get(f"{server.root_url}/warmup/status/{name}"),
    ]
    for answer in answers:
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found", answer.text


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=100000)
    assert info.value.code == "context_length_exceeded"


API_KEYS_BEFORE_ENGINES = "API keys are checked before a request reaches any engine"


@pytest.fixture(scope="module")
def keyed_server(models_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("keyed")
    with ServerProcess(
        ["--api-key", "s3cret"], log_path=home / "server.log", env=server_env(home, models_dir), api_key="s3cret"
    ) as process:
        yield process


@pytest.mark.native_only(API_KEYS_BEFORE_ENGINES)
def test_api_key_required_when_configured(keyed_server: ServerProcess) -> None:
    wrong = openai.OpenAI(base_url=keyed_server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    response = httpx.get(keyed_server.base_url + "/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    right = openai.OpenAI(base_url=keyed_server.base_url, api_key="s3cret", max_retries=0)
    assert right.models.list().data[0].id == MODEL
    assert httpx.get(keyed_server.root_url + "/health").status_code == 200


@pytest.mark.native_only(API_KEYS_BEFORE_ENGINES)
def test_api_key_from_environment(models_dir, tmp_path) -> None:
    env = server_env(tmp_path, models_dir, SYNTH_API_KEY="from-env")
    del env["SYNTHD_API_KEY"]  # SYNTHD_API_KEY would take precedence over the Synth platform's name
    with ServerProcess(log_path=tmp_path / "server.log", env=env) as process:
        assert httpx.get(process.base_url + "/models").status_code == 401
        ok = httpx.get(process.base_url + "/models", headers={"Authorization": "Bearer from-env"})
        assert ok.status_code == 200


def test_unexpected_error_is_a_500_envelope_and_keeps_the_connection() -> None:
    """An exception no handler maps (any future bug) answers 500 in the envelope, and the client's
    keep-alive connection stays usable: Starlette's last-resort handler re-raised, so the server
    reset the connection and the next request on it failed."""
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(UnexpectedErrorMiddleware)

    @app.get("/broken")
    async def broken() -> dict:
        raise RuntimeError("a bug")

    @app.get("/fine")
    async def fine() -> dict:
        return {"ok": True}

    escaped: list[logging.LogRecord] = []  # uvicorn closes the connection of a request whose exception reaches it
    catcher = logging.Handler()
    catcher.emit = escaped.append
    logging.getLogger("uvicorn.error").addHandler(catcher)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(100):
                if server.started:
                    break
                time.sleep(0.05)
            answer = http.get("/broken")
            assert answer.status_code == 500
            assert answer.json()["error"] == {
                "message": "Internal server error: RuntimeError",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            assert http.get("/fine").json() == {"ok": True}
        assert not [r for r in escaped if r.exc_info], [r.getMessage() for r in escaped]
    finally:
        logging.getLogger("uvicorn.error").removeHandler(catcher)
        server.should_exit = True
        thread.join(10)
