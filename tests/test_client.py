"""The LM client against a live synthd server (real model) and local servers speaking OpenAI's and
Anthropic's real wire formats. The shared tests run one body for every provider."""

import asyncio
import itertools
import random
import re
import time
from email.utils import formatdate

import anthropic
import httpx2
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from openai._models import FinalRequestOptions
from pydantic import BaseModel

from synthd import LM, LMResponse
from synthd.client import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    MissingCredentialsError,
    NotFoundError,
    ProviderError,
    RateLimitError,
    StructuredOutputError,
)
from synthd.client.errors import retry_after, status_error
from synthd.client.retry import ANTHROPIC_RULES, OPENAI_RULES, RetryRules, retry_delay, should_retry
from synthd.client.routing import route
from synthd.server_process import free_port
from tests.conftest import MODEL, FakeProvider
from tests.fakes import anthropic_server, openai_server
from tests.fakes.script import DEFAULT_TEXT, Reply, serve

PROVIDERS = ["synthd", "openai", "anthropic", "together", "openai_compatible"]
FAKE_PROVIDERS = PROVIDERS[1:]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class Person(BaseModel):
    name: str
    age: int


STRICT_PERSON = {**Person.model_json_schema(), "additionalProperties": False}


def make_lm(provider: str, fakes: dict[str, FakeProvider], server=None, **kwargs) -> LM:
    """An LM for ``provider``: the live synthd server or the fake speaking its wire format."""
    openai_url = f"{fakes['openai'].url}/v1"
    if provider == "synthd":
        return LM(MODEL, base_url=server.root_url, **kwargs)
    if provider == "openai":
        return LM("gpt-4o-mini", base_url=openai_url, api_key=openai_server.API_KEY, **kwargs)
    if provider == "anthropic":
        return LM(
            "claude-3-haiku-20240307", base_url=fakes["anthropic"].url, api_key=anthropic_server.API_KEY, **kwargs
        )
    if provider == "together":
        return LM(
            "together/meta-llama/Llama-3-8b-chat-hf", base_url=openai_url, api_key=openai_server.API_KEY, **kwargs
        )
    return LM("local-model", base_url=openai_url, api_key=openai_server.API_KEY, **kwargs)


def fake_of(provider: str, fakes: dict[str, FakeProvider]) -> FakeProvider:
    return fakes["anthropic" if provider == "anthropic" else "openai"]


@pytest.fixture(params=PROVIDERS)
def any_lm(request, fakes, server) -> LM:
    return make_lm(request.param, fakes, server)


def assert_sound(response: LMResponse, lm: LM, max_tokens: int) -> None:
    """What every provider's reply must satisfy, in OpenAI's vocabulary."""
    assert response.provider == lm.provider
    assert response.model == lm.model
    assert response.text and response.text == response.raw_response
    assert response.finish_reason in ("stop", "length")
    assert 0 < response.usage.completion_tokens <= max_tokens
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert response.response_id
    assert response.latency_s > 0
    assert response.tool_calls == []


# --- the same body for every provider -------------------------------------------------------------


def test_respond_with_system_and_user_message(any_lm: LM) -> None:
    response = any_lm.respond(
        system_message="You are terse.", user_message="Say hello.", max_tokens=6, temperature=0, seed=7
    )
    assert_sound(response, any_lm, 6)
    assert response.ttft_s is None


def test_respond_sync_alias_takes_messages(any_lm: LM) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
    response = any_lm.respond_sync(messages, max_tokens=5, temperature=0)
    assert_sound(response, any_lm, 5)


def test_respond_async(any_lm: LM) -> None:
    async def two_at_once() -> list[LMResponse]:
        return await asyncio.gather(
            *(any_lm.respond_async(user_message=f"Count to {n}.", max_tokens=5, temperature=0) for n in (2, 3))
        )

    for response in asyncio.run(two_at_once()):
        assert_sound(response, any_lm, 5)


def test_stream_yields_deltas_then_the_final_response(any_lm: LM) -> None:
    pieces = list(any_lm.stream(user_message="Say hello.", max_tokens=6, temperature=0))
    *deltas, final = pieces
    assert isinstance(final, LMResponse) and all(isinstance(piece, str) for piece in deltas)
    assert "".join(deltas) == final.text
    assert_sound(final, any_lm, 6)
    assert 0 < final.ttft_s <= final.latency_s


def test_stream_async_matches_respond_at_temperature_zero(any_lm: LM) -> None:
    async def collect() -> list:
        return [piece async for piece in any_lm.stream_async(user_message="Say hello.", max_tokens=6, temperature=0)]

    *deltas, final = asyncio.run(collect())
    assert "".join(deltas) == final.text
    assert final.text == any_lm.respond(user_message="Say hello.", max_tokens=6, temperature=0).text
    assert final.ttft_s is not None


# --- tools and structured output on every provider's wire format ----------------------------------


@pytest.mark.parametrize("provider", FAKE_PROVIDERS)
@pytest.mark.parametrize("streamed", [False, True])
def test_tool_call_then_tool_result_turn(provider: str, streamed: bool, fakes) -> None:
    lm = make_lm(provider, fakes)
    fake = fake_of(provider, fakes)
    fake.script.push(Reply(tool_calls=[("get_weather", {"city": "Paris"})]), Reply(text="Sunny in Paris."))
    messages = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"}]
    if streamed:
        *_, first = lm.stream(messages, tools=[WEATHER_TOOL], tool_choice="required")
        assert first.ttft_s is not None
    else:
        first = lm.respond(messages, tools=[WEATHER_TOOL], tool_choice="required")
    assert first.finish_reason == "tool_calls"
    [call] = first.tool_calls
    assert call.type == "function" and call.id and call.function.name == "get_weather"
    assert call.function.parsed_arguments() == {"city": "Paris"}

    messages += [first.to_message(), {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}]
    second = lm.respond(messages, tools=[WEATHER_TOOL])
    assert second.text == "Sunny in Paris." and second.finish_reason == "stop"

    sent_first, sent_second = fake.script.requests
    if provider == "anthropic":
        assert sent_first["system"] == "Use tools."
        assert sent_first["tools"] == [
            {
                "name": "get_weather",
                "description": "Current weather in a city.",
                "input_schema": WEATHER_TOOL["function"]["parameters"],
            }
        ]
        assert sent_first["tool_choice"] == {"type": "any"}
        assert sent_second["messages"][1] == {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "Paris"}}],
        }
        assert sent_second["messages"][2] == {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 24 C"}],
        }
    else:
        assert sent_first["tools"] == [WEATHER_TOOL] and sent_first["tool_choice"] == "required"
        assert sent_second["messages"][2]["tool_calls"][0]["id"] == call.id
        assert sent_second["messages"][3] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}


def test_tools_on_live_synthd_by_named_tool_choice(server) -> None:
    lm = LM(MODEL, base_url=server.root_url)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = lm.respond(
        messages,
        tools=[WEATHER_TOOL],
        max_tokens=40,
        temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    [call] = first.tool_calls
    assert call.function.name == "get_weather" and "city" in call.function.parsed_arguments()
    assert first.finish_reason == "stop" and first.text == ""
    messages += [first.to_message(), {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"}]
    second = lm.respond(messages, tools=[WEATHER_TOOL], tool_choice="none", max_tokens=20, temperature=0)
    assert second.text and second.tool_calls == []


def test_structured_output_on_live_synthd_is_guided(server) -> None:
    lm = LM(MODEL, base_url=server.root_url)

    async def streamed() -> list:
        return [
            piece
            async for piece in lm.stream_async(
                user_message="Describe Ada, aged 36.", response_model=Person, max_tokens=60, temperature=0
            )
        ]

    response = lm.respond(user_message="Describe Ada, aged 36.", response_model=Person, max_tokens=60, temperature=0)
    assert isinstance(response.structured_output, Person) and response.finish_reason == "stop"
    *deltas, final = asyncio.run(streamed())
    assert isinstance(final.structured_output, Person) and "".join(deltas) == final.text


@pytest.mark.parametrize("provider", FAKE_PROVIDERS)
def test_structured_output_is_validated(provider: str, fakes) -> None:
    lm = make_lm(provider, fakes)
    fake = fake_of(provider, fakes)
    fake.script.push(Reply(json={"name": "Ada", "age": 36}))
    response = lm.respond(user_message="Who wrote the first program?", response_model=Person)
    assert response.structured_output == Person(name="Ada", age=36)
    assert response.finish_reason == "stop" and response.tool_calls == []
    [sent] = fake.script.requests
    if provider == "anthropic":
        assert sent["tool_choice"] == {"type": "tool", "name": "Person"}
        assert sent["tools"][0]["input_schema"] == STRICT_PERSON
    else:
        assert sent["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "Person", "schema": STRICT_PERSON, "strict": True},
        }


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_structured_output_retries_once_showing_the_error(provider: str, fakes) -> None:
    lm = make_lm(provider, fakes)
    fake = fake_of(provider, fakes)
    fake.script.push(Reply(json={"name": "Ada", "age": "thirty-six"}), Reply(json={"name": "Ada", "age": 36}))
    response = lm.respond(user_message="Who?", response_model=Person)
    assert response.structured_output == Person(name="Ada", age=36)
    _first, retry = fake.script.requests
    feedback = retry["messages"][-1]["content"]
    feedback = feedback if isinstance(feedback, str) else feedback[0]["text"]
    assert "age: Input should be a valid integer" in feedback
    assert response.usage.completion_tokens > 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_structured_output_fails_after_one_retry(provider: str, fakes) -> None:
    lm = make_lm(provider, fakes)
    fake_of(provider, fakes).script.push(Reply(text="not json"), Reply(json={"name": "Ada"}))
    with pytest.raises(StructuredOutputError) as caught:
        lm.respond(user_message="Who?", response_model=Person)
    assert "age: Field required" in caught.value.errors
    assert caught.value.text == '{"name": "Ada"}'
    assert len(fake_of(provider, fakes).script.requests) == 2


def test_anthropic_streams_structured_output_as_json_text(fakes) -> None:
    lm = make_lm("anthropic", fakes)
    fakes["anthropic"].script.push(Reply(json={"name": "Ada", "age": 36}))
    *deltas, final = lm.stream(user_message="Who?", response_model=Person)
    assert "".join(deltas) == '{"name": "Ada", "age": 36}' and len(deltas) > 1
    assert final.structured_output == Person(name="Ada", age=36)


def test_anthropic_request_mapping_and_stop_reasons(fakes) -> None:
    lm = make_lm("anthropic", fakes)
    script = fakes["anthropic"].script
    script.push(Reply(text="a b", stop_reason="max_tokens"), Reply(text="a", stop_reason="stop_sequence"))
    assert lm.respond(user_message="Go.", stop="END", seed=3).finish_reason == "length"
    assert (
        lm.respond(
            [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "Go."},
                {"role": "user", "content": [{"type": "text", "text": "Now."}]},
            ]
        ).finish_reason
        == "stop"
    )
    plain, merged = script.requests
    assert plain["max_tokens"] == 4096 and plain["stop_sequences"] == ["END"] and "seed" not in plain
    assert merged["system"] == "Be brief."
    assert merged["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Go."}, {"type": "text", "text": "Now."}]}
    ]


def test_openai_sends_max_completion_tokens_and_others_max_tokens(fakes) -> None:
    make_lm("openai", fakes).respond(user_message="Hi", max_tokens=3)
    make_lm("together", fakes).respond(user_message="Hi", max_tokens=3)
    to_openai, to_together = fakes["openai"].script.requests
    assert to_openai["max_completion_tokens"] == 3 and "max_tokens" not in to_openai
    assert to_together["max_tokens"] == 3 and to_together["model"] == "meta-llama/Llama-3-8b-chat-hf"


# --- errors and retries ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("status", "error", "error_type"),
    [
        (400, BadRequestError, "invalid_request_error"),
        (404, NotFoundError, "not_found_error"),
        (429, RateLimitError, "rate_limit_error"),
        (503, ProviderError, "overloaded_error"),
    ],
)
def test_typed_errors_carry_provider_status_and_message(provider, status, error, error_type, fakes) -> None:
    lm = make_lm(provider, fakes, max_retries=0)
    fake_of(provider, fakes).script.push(Reply(status=status, error_type=error_type, message="nope, scripted"))
    with pytest.raises(error) as caught:
        lm.respond(user_message="Hi")
    assert (caught.value.provider, caught.value.status_code, caught.value.message) == (
        provider,
        status,
        "nope, scripted",
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_wrong_key_is_an_authentication_error(provider: str, fakes) -> None:
    base_url = f"{fakes['openai'].url}/v1" if provider == "openai" else fakes["anthropic"].url
    with pytest.raises(AuthenticationError) as caught:
        LM("some-model", provider=provider, base_url=base_url, api_key="wrong").respond(user_message="Hi")
    assert caught.value.status_code == 401 and caught.value.provider == provider


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_bad_request_is_not_retried(provider: str, fakes) -> None:
    fake_of(provider, fakes).script.push(Reply(status=400, error_type="invalid_request_error"))
    with pytest.raises(BadRequestError):
        make_lm(provider, fakes, max_retries=3).respond(user_message="Hi")
    assert len(fake_of(provider, fakes).script.requests) == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_429_is_retried_after_retry_after(provider: str, fakes) -> None:
    script = fake_of(provider, fakes).script
    script.push(Reply(status=429, error_type="rate_limit_error", headers={"retry-after": "1"}))
    response = make_lm(provider, fakes).respond(user_message="Hi")
    assert response.text == DEFAULT_TEXT
    assert len(script.requests) == 2 and script.times[1] - script.times[0] >= 0.95
    assert response.latency_s >= 0.95


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_500_then_200_is_retried_and_retries_run_out(provider: str, fakes) -> None:
    script = fake_of(provider, fakes).script
    script.push(Reply(status=500, error_type="api_error"))
    assert make_lm(provider, fakes).respond(user_message="Hi").text == DEFAULT_TEXT
    script.reset()
    script.push(*(Reply(status=500, error_type="api_error", headers={"retry-after": "0"}) for _ in range(3)))
    with pytest.raises(ProviderError) as caught:
        make_lm(provider, fakes, max_retries=2).respond(user_message="Hi")
    assert caught.value.status_code == 500 and len(script.requests) == 3


# The SDKs' own decisions are the specification: ours must agree with them case by case.
SDKS: dict[str, tuple[object, RetryRules]] = {
    "openai": (openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9", max_retries=2), OPENAI_RULES),
    "anthropic": (anthropic.Anthropic(api_key="unused", base_url="http://127.0.0.1:9", max_retries=2), ANTHROPIC_RULES),
}
STATUSES = [400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 529]
RETRY_HEADERS = [{}, {"x-should-retry": "true"}, {"x-should-retry": "false"}, {"x-should-retry": "TRUE"}]
WAIT_HEADERS = [
    {},
    {"retry-after": "1"},
    {"retry-after": "0"},
    {"retry-after": "-3"},
    {"retry-after": "2.5"},
    {"retry-after": "120"},
    {"retry-after": "121"},
    {"retry-after": "1e999"},
    {"retry-after": "inf"},
    {"retry-after": "soon"},
    {"retry-after-ms": "1500"},
    {"retry-after-ms": "x", "retry-after": "2"},
    {"retry-after-ms": "200000"},
    {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"},
]


@pytest.mark.parametrize("sdk", SDKS)
def test_retry_decisions_match_the_sdks(sdk: str) -> None:
    client, rules = SDKS[sdk]
    for status, retry, wait in itertools.product(STATUSES, RETRY_HEADERS, WAIT_HEADERS):
        headers = {**retry, **wait}
        ours = should_retry(status_error(status, "m", provider=sdk, headers=headers), rules)
        assert ours == client._should_retry(httpx2.Response(status, headers=headers)), (status, headers)
    assert should_retry(APIConnectionError("down", provider=sdk), rules) is True
    assert should_retry(ConfigurationError("bad"), rules) is False


@pytest.mark.parametrize("sdk", SDKS)
def test_retry_waits_match_the_sdks(sdk: str) -> None:
    client, rules = SDKS[sdk]
    options = FinalRequestOptions.construct(method="post", url="/v1/chat/completions")
    for headers, retries_taken in itertools.product(WAIT_HEADERS, range(6)):
        error = status_error(429, "m", provider=sdk, headers=headers)
        random.seed(retries_taken)  # both draw their jitter from the random module
        theirs = client._calculate_retry_timeout(2 - retries_taken, options, httpx2.Headers(headers))
        random.seed(retries_taken)
        assert retry_delay(error, retries_taken, rules) == theirs, (headers, retries_taken)


def test_retry_after_reads_an_http_date() -> None:
    in_a_minute = formatdate(time.time() + 60, usegmt=True)
    assert 58 < retry_after({"retry-after": in_a_minute}) <= 60
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) < 0
    assert retry_after({"retry-after-ms": "250"}) == 0.25 and retry_after({}) is None


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_x_should_retry_false_is_raised_after_one_request(provider: str, fakes) -> None:
    script = fake_of(provider, fakes).script
    script.push(Reply(status=500, error_type="api_error", headers={"x-should-retry": "false"}))
    with pytest.raises(ProviderError) as caught:
        make_lm(provider, fakes, max_retries=3).respond(user_message="Hi")
    assert caught.value.status_code == 500 and caught.value.should_retry is False
    assert len(script.requests) == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(("status", "headers"), [(400, {"x-should-retry": "true"}), (409, {})])
def test_x_should_retry_true_and_409_are_retried(provider: str, status: int, headers: dict, fakes) -> None:
    script = fake_of(provider, fakes).script
    script.push(Reply(status=status, error_type="invalid_request_error", headers=headers))
    assert make_lm(provider, fakes).respond(user_message="Hi").text == DEFAULT_TEXT
    assert len(script.requests) == 2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_retry_after_ms_is_waited(provider: str, fakes) -> None:
    script = fake_of(provider, fakes).script
    script.push(Reply(status=429, error_type="rate_limit_error", headers={"retry-after-ms": "1500"}))
    assert make_lm(provider, fakes).respond(user_message="Hi").text == DEFAULT_TEXT
    assert len(script.requests) == 2 and script.times[1] - script.times[0] >= 1.5  # the backoff alone is <= 0.5 s


def test_openai_does_not_retry_when_asked_to_wait_over_two_minutes(fakes) -> None:
    script = fakes["openai"].script
    script.push(Reply(status=503, error_type="server_error", headers={"retry-after": "121"}))
    with pytest.raises(ProviderError) as caught:
        make_lm("openai", fakes).respond(user_message="Hi")
    assert caught.value.retry_after_s == 121 and len(script.requests) == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_error_code_param_and_type_survive(provider: str, fakes) -> None:
    fake_of(provider, fakes).script.push(
        Reply(
            status=400,
            error_type="invalid_request_error",
            code="context_length_exceeded",
            param="messages",
            message="This model's maximum context length is 8192 tokens.",
        )
    )
    with pytest.raises(BadRequestError) as caught:
        make_lm(provider, fakes).respond(user_message="Hi")
    error = caught.value
    assert (error.code, error.type, error.status_code) == ("context_length_exceeded", "invalid_request_error", 400)
    assert error.param == ("messages" if provider == "openai" else None)  # Anthropic's errors have no param
    assert error.message == "This model's maximum context length is 8192 tokens."


def test_timeout_is_retried(fakes) -> None:
    script = fakes["openai"].script
    script.push(Reply(delay_s=3))
    response = make_lm("openai", fakes, timeout=0.5).respond(user_message="Hi")
    assert response.text == DEFAULT_TEXT and len(script.requests) == 2


def test_unreachable_server_is_a_connection_error() -> None:
    lm = LM("local-model", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    with pytest.raises(APIConnectionError) as caught:
        lm.respond(user_message="Hi")
    assert caught.value.provider == "openai_compatible" and "cannot reach" in caught.value.message


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_stream_is_retried_before_its_first_byte(provider: str, fakes) -> None:
    script = fake_of(provider, fakes).script
    script.push(Reply(status=503, error_type="overloaded_error", headers={"retry-after": "0"}))
    *deltas, final = make_lm(provider, fakes).stream(user_message="Hi")
    assert "".join(deltas) == final.text == DEFAULT_TEXT and len(script.requests) == 2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_stream_broken_midway_raises_and_is_not_retried(provider: str, fakes) -> None:
    script = fake_of(provider, fakes).script
    script.push(Reply(break_after=3))
    received: list[str] = []
    with pytest.raises(ProviderError) as caught:
        for piece in make_lm(provider, fakes).stream(user_message="Hi"):
            received.append(piece)  # noqa: PERF402 -- keeps the pieces that arrived before the stream broke
    assert "".join(received) == "The quick brown"
    assert "stream interrupted" in caught.value.message and len(script.requests) == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_stream_ending_early_is_not_a_normal_end(provider: str, fakes) -> None:
    fake_of(provider, fakes).script.push(Reply(truncate=True))

    async def consume() -> None:
        async for _ in make_lm(provider, fakes).stream_async(user_message="Hi"):
            pass

    with pytest.raises(ProviderError, match="ended before"):
        asyncio.run(consume())


def test_anthropic_error_event_inside_a_stream_is_raised(fakes) -> None:
    fakes["anthropic"].script.push(Reply(break_after=2, stream_error="overloaded_error"))
    with pytest.raises(ProviderError) as caught:
        list(make_lm("anthropic", fakes).stream(user_message="Hi"))
    assert caught.value.status_code == 529 and caught.value.message == "Overloaded"
    assert len(fakes["anthropic"].script.requests) == 1


# --- routing, credentials, arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "provider", "model"),
    [
        ("gpt-4o-mini", "openai", "gpt-4o-mini"),
        ("o1", "openai", "o1"),
        ("o3-mini", "openai", "o3-mini"),
        ("o4-mini", "openai", "o4-mini"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123"),
        ("claude-3-haiku-20240307", "anthropic", "claude-3-haiku-20240307"),
        ("anthropic/claude-3-haiku-20240307", "anthropic", "claude-3-haiku-20240307"),
        ("together/meta-llama/Llama-3-8b-chat-hf", "together", "meta-llama/Llama-3-8b-chat-hf"),
        ("SmolLM2-135M-Instruct", "synthd", "SmolLM2-135M-Instruct"),
        ("ft:SmolLM2-135M-Instruct:facts:ftjob-1", "synthd", "ft:SmolLM2-135M-Instruct:facts:ftjob-1"),
        ("synthd/HuggingFaceTB/SmolLM2-360M-Instruct", "synthd", "HuggingFaceTB/SmolLM2-360M-Instruct"),
    ],
)
def test_routing(name: str, provider: str, model: str) -> None:
    assert route(name) == (provider, model)


def test_ambiguous_names_say_how_to_disambiguate() -> None:
    with pytest.raises(ConfigurationError, match=r"pass provider=.*together/meta-llama/Llama-3-8b"):
        LM("meta-llama/Llama-3-8b")
    with pytest.raises(ConfigurationError, match="unknown provider 'openia'"):
        LM("gpt-4o", provider="openia")
    assert route("meta-llama/Llama-3-8b", base_url="http://x/v1") == ("openai_compatible", "meta-llama/Llama-3-8b")


@pytest.mark.parametrize(
    ("model", "variable"),
    [
        ("gpt-4o", "OPENAI_API_KEY"),
        ("claude-3-haiku-20240307", "ANTHROPIC_API_KEY"),
        ("together/x/y", "TOGETHER_API_KEY"),
    ],
)
def test_missing_key_names_the_variable(model: str, variable: str, monkeypatch) -> None:
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(MissingCredentialsError, match=f"set {variable}"):
        LM(model)
    monkeypatch.setenv(variable, "sk-from-env")
    assert LM(model)._provider.api_key == "sk-from-env"


def test_bad_arguments_are_configuration_errors(fakes) -> None:
    lm = make_lm("openai", fakes)
    with pytest.raises(ConfigurationError, match="not both"):
        lm.respond([{"role": "user", "content": "x"}], user_message="y")
    with pytest.raises(ConfigurationError, match="messages= or user_message="):
        lm.respond()
    with pytest.raises(ConfigurationError, match="gpu_preference is a synthd option"):
        lm.respond(user_message="x", gpu_preference="H100")
    with pytest.raises(ConfigurationError, match="unknown option"):
        lm.respond(user_message="x", temprature=0.5)
    with pytest.raises(ConfigurationError, match="warmup is a synthd operation"):
        lm.warmup()
    with pytest.raises(ConfigurationError, match="needs base_url"):
        LM("x", provider="openai_compatible")
    assert fakes["openai"].script.requests == []


# --- synthd specifics -----------------------------------------------------------------------------


def test_synthd_from_environment_warmup_and_gpu_preference(server, monkeypatch) -> None:
    monkeypatch.setenv("SYNTH_API_URL", server.root_url)
    monkeypatch.delenv("SYNTH_API_KEY", raising=False)
    lm = LM(MODEL)
    status = lm.warmup(gpu_preference="auto")
    assert status["status"] == "warmed" and status["model"] == MODEL
    response = lm.respond(user_message="Hi", max_tokens=3, gpu_preference="auto")
    assert response.provider == "synthd" and response.usage.completion_tokens <= 3
    with pytest.raises(ConflictError) as caught:
        lm.respond(user_message="Hi", max_tokens=3, gpu_preference="H100")
    assert caught.value.status_code == 409 and "H100" in caught.value.message
    with pytest.raises(BadRequestError):
        lm.respond(user_message="Hi", gpu_preference="Z900")
    with pytest.raises(NotFoundError):
        LM("ft:SmolLM2-135M-Instruct:none:ftjob-missing", base_url=server.root_url).respond(user_message="Hi")


def test_stream_broken_before_its_first_delta_is_retried(fakes) -> None:
    script = fakes["openai"].script
    script.push(Reply(break_after=0))
    *deltas, final = make_lm("openai", fakes).stream(user_message="Hi")
    assert "".join(deltas) == final.text == DEFAULT_TEXT and len(script.requests) == 2


def test_anthropic_sampling_settings_go_in_the_body(fakes) -> None:
    make_lm("anthropic", fakes).respond(user_message="Hi", temperature=0.7, top_p=0.9, max_tokens=5)
    make_lm("anthropic", fakes).respond(user_message="Hi", temperature=0)
    first, second = fakes["anthropic"].script.requests
    assert (first["temperature"], first["top_p"], first["max_tokens"]) == (0.7, 0.9, 5)
    assert second["temperature"] == 0


@pytest.mark.parametrize(
    ("messages", "options", "message"),
    [
        ("hi", {}, "non-empty list"),
        (["hi"], {}, "messages.0: must be a dict"),
        ([{"role": "tool", "content": "x"}], {}, "messages.0: Value error, a 'tool' message needs tool_call_id"),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{bad"}}]}],
            {},
            "arguments is not JSON",
        ),
        ([{"role": "user", "content": "x"}], {"tools": [{"type": "function"}]}, "tools.0.function: Field required"),
        ([{"role": "user", "content": "x"}], {"tool_choice": "sometimes"}, "tool_choice"),
        ([{"role": "user", "content": "x"}], {"max_tokens": 0}, "max_tokens"),
        ([{"role": "user", "content": "x"}], {"temperature": float("nan")}, "temperature"),
        ([{"role": "user", "content": "x"}], {"extra_body": [1]}, "extra_body"),
        ([{"role": "user", "content": "x"}], {"response_model": dict}, "response_model must be a pydantic model class"),
    ],
)
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_malformed_calls_are_configuration_errors(provider, messages, options, message, fakes) -> None:
    options = dict(options)
    response_model = options.pop("response_model", None)
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        make_lm(provider, fakes).respond(messages, response_model=response_model, **options)
    assert fake_of(provider, fakes).script.requests == []


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        (5, {}, "model must be a string"),
        ("gpt-4o", {"timeout": 0}, "timeout must be a positive"),
        ("gpt-4o", {"max_retries": -1}, "max_retries"),
        ("gpt-4o", {"base_url": "http://[::1"}, "not a valid URL"),
        ("anthropic/", {}, "no model name after 'anthropic/'"),
        ("ft:", {}, "'ft:' needs"),
    ],
)
def test_bad_constructor_arguments(model, kwargs, message) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        LM(model, api_key="k", **kwargs)


def test_malformed_replies_are_provider_errors(fakes) -> None:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def broken(request: Request) -> Response:
        body = await request.json()
        if body["messages"][0]["content"] == "bad-json":
            return Response("{not json", media_type="application/json")
        if body["messages"][0]["content"] == "no-finish":
            return JSONResponse(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 1,
                    "model": "m",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": None}],
                }
            )
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 99},
            }
        )

    with serve(app) as url:
        lm = LM("m", base_url=f"{url}/v1", max_retries=0)
        for content, message in (("bad-json", "malformed reply"), ("no-finish", "no finish_reason")):
            with pytest.raises(ProviderError, match=message):
                lm.respond(user_message=content)
        assert lm.respond(user_message="ok").usage.total_tokens == 7
