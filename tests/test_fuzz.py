"""Fuzzing every route of `/openapi.json` with Schemathesis (issue 13, item 9), against a live keyed
server: valid and invalid inputs, a bounded number of examples per operation (`SYNTHD_FUZZ_EXAMPLES`,
default 20; derandomized so `make test` sees the same inputs each run). Checked on every answer:
no 5xx; status code, content type and JSON body as the schema documents them; auth enforced where
the schema says so; every error in OpenAI's envelope.

Generation costs are kept small by rewriting what the fuzzer sends to the generating routes: chat
and text completions name the served model (so validation runs to the end, guided decoding
included) with at most 2 new tokens and 2 choices."""

import os

import pytest
import schemathesis
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import MODEL, server_env
from synthd.server_process import ServerProcess

KEY = "fuzz-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = int(os.environ.get("SYNTHD_FUZZ_EXAMPLES", "20"))
GENERATING = ("/v1/chat/completions", "/v1/completions")
ENVELOPE_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def fuzzed_server(models_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz")
    with ServerProcess(["--api-key", KEY], log_path=home / "server.log", env=server_env(home, models_dir),
                       api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: ServerProcess):
    schema = schemathesis.openapi.from_url(fuzzed_server.root_url + "/openapi.json", headers=AUTH)
    schema.config.generation.update(max_examples=EXAMPLES, deterministic=True, modes=list(schemathesis.GenerationMode))
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


def openai_error_envelope(ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> bool:
    """Every 4xx/5xx body is ``{"error": {"message", "type", "param", "code"}}`` with a message."""
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == ENVELOPE_KEYS, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return True


def cheap_generation(case: schemathesis.Case) -> None:
    """Point generating requests at the served model with at most 2 tokens and 2 choices."""
    if case.path not in GENERATING or not isinstance(case.body, dict):
        return
    case.body["model"] = MODEL
    case.body.pop("max_completion_tokens", None)
    case.body["max_tokens"] = 2
    if isinstance(case.body.get("n"), int) and case.body["n"] > 2:
        case.body["n"] = 2


@schema.parametrize()
def test_every_route(case: schemathesis.Case) -> None:
    cheap_generation(case)
    case.call_and_validate(headers=AUTH, timeout=120, checks=[
        not_a_server_error, openai_error_envelope, status_code_conformance, content_type_conformance,
        response_schema_conformance, ignored_auth])
