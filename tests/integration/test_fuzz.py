"""Fuzzing every route of `/openapi.json` with Schemathesis (issue 13, item 9), against a live keyed
server: valid and invalid inputs, a bounded number of examples per operation (`SYNTHD_FUZZ_EXAMPLES`,
default 20, valid and invalid each; derandomized so `make test` sees the same inputs each run).
Checked on every answer:
no 5xx; status code, content type and JSON body as the schema documents them; auth enforced where
the schema says so; every error in OpenAI's envelope.

Generation costs are kept small by rewriting what the fuzzer sends to the generating routes: chat
and text completions name the served model (so validation runs to the end, guided decoding
included) with at most 2 new tokens and 2 choices, and chat messages the schema allows but the
server refuses (no content, a tool message without ``tool_call_id``) become one user message.

Each operation is driven through Schemathesis' Hypothesis strategies (its Python API): the pytest
plugin's lazy ``from_fixture`` loader, which a server started by a fixture would need, does not run
under pytest 9 (it sets ``Node._nodeid``, which pytest 9 no longer has)."""

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from synthd.server_process import ServerProcess
from tests.support.server import MODEL, server_env

KEY = "fuzz-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
EXAMPLES = int(os.environ.get("SYNTHD_FUZZ_EXAMPLES", "20"))
VALID = {
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    "/v1/completions": {"model": MODEL, "prompt": "Hi", "max_tokens": 2},
}
"""One request per generating route that must reach generation, sent first (Hypothesis' explicit
phase): what the fuzzer draws for these routes can, depending on the draw, all be refused."""
GENERATING = tuple(VALID)
ENVELOPE_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def fuzzed_server(models_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz")
    with ServerProcess(
        ["--api-key", KEY], log_path=home / "server.log", env=server_env(home, models_dir), api_key=KEY
    ) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzzed_server: ServerProcess):
    return schemathesis.openapi.from_url(fuzzed_server.root_url + "/openapi.json", headers=AUTH)


def openai_error_envelope(ctx: CheckContext, response: schemathesis.Response, case: schemathesis.Case) -> bool:
    """Every 4xx/5xx body is ``{"error": {"message", "type", "param", "code"}}`` with a message."""
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == ENVELOPE_KEYS, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return True


def valid_message(message: object) -> bool:
    """Whether a generated chat message passes the checks the schema cannot express (content present,
    ``tool_call_id`` on tool messages), so the request goes on to generation."""
    return (
        isinstance(message, dict)
        and message.get("content") is not None
        and (message.get("role") != "tool" or bool(message.get("tool_call_id")))
    )


def cheap_generation(case: schemathesis.Case) -> None:
    """Point generating requests at the served model with at most 2 tokens and 2 choices; a chat whose
    messages the schema allows but the server refuses gets one user message instead."""
    if case.path not in GENERATING or not isinstance(case.body, dict):
        return
    case.body["model"] = MODEL
    case.body.pop("max_completion_tokens", None)
    case.body["max_tokens"] = 2
    if isinstance(case.body.get("n"), int) and case.body["n"] > 2:
        case.body["n"] = 2
    messages = case.body.get("messages")
    if isinstance(messages, list) and not all(valid_message(m) for m in messages):
        case.body["messages"] = [{"role": "user", "content": "Hi"}]


CHECKS = [
    not_a_server_error,
    openai_error_envelope,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]


def fuzzer(operation: schemathesis.APIOperation, mode: schemathesis.GenerationMode, statuses: Counter[tuple[str, int]]):
    """A Hypothesis test sending ``mode`` inputs to ``operation`` and checking each answer."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )
    def fuzz(case: schemathesis.Case) -> None:
        cheap_generation(case)
        response = case.call_and_validate(headers=AUTH, timeout=120, checks=CHECKS)
        statuses[operation.path, response.status_code] += 1

    if mode == schemathesis.GenerationMode.POSITIVE and operation.path in VALID:
        return example(case=operation.Case(body=dict(VALID[operation.path]), media_type="application/json"))(fuzz)
    return fuzz


def test_every_route(api_schema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/files/{file_id}", "/health", "/metrics"}
    statuses: Counter[tuple[str, int]] = Counter()
    failures = []
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                fuzzer(operation, mode, statuses)()
            except Unsatisfiable:  # no invalid input exists (an operation without parameters)
                continue
            except (AssertionError, FailureGroup) as exc:  # every operation is fuzzed; failures reported together
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    for path in GENERATING:  # the fuzzer reached generation, not only validation
        assert statuses[path, 200] > 0 and statuses[path, 400] > 0, sorted(
            k for k in statuses.items() if k[0][0] == path
        )
