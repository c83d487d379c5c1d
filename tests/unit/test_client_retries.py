"""``LM`` retries are the SDKs' own: each try's headers recorded by local servers speaking OpenAI's
and Anthropic's wire formats, compared with what the bare SDK sends for the same script."""

import asyncio
from collections.abc import Callable

import anthropic
import openai
import pytest

from synthd import LM
from synthd.client import RateLimitError
from tests.fakes import anthropic_server, openai_server
from tests.fakes.script import DEFAULT_TEXT, FakeProvider, Reply

RETRY_AFTER_MS_S = 0.9
"""Above the SDKs' first backoff (at most 0.5 s), so a gap this long shows the header was obeyed."""
RETRY_AFTER_S = 1.5
"""Above the SDKs' second backoff (at most 1 s)."""


def script_two_failures(fake: FakeProvider) -> None:
    """A 429 asking for ``RETRY_AFTER_MS_S`` in ``retry-after-ms``, a 503 asking for
    ``RETRY_AFTER_S`` in ``retry-after``, then the default answer."""
    fake.script.reset()
    fake.script.push(
        Reply(status=429, error_type="rate_limit_error", headers={"retry-after-ms": str(int(RETRY_AFTER_MS_S * 1000))}),
        Reply(status=503, error_type="overloaded_error", headers={"retry-after": str(RETRY_AFTER_S)}),
    )


def lm_for(provider: str, fakes: dict[str, FakeProvider]) -> LM:
    if provider == "openai":
        return LM("gpt-4o-mini", base_url=f"{fakes['openai'].url}/v1", api_key=openai_server.API_KEY, max_retries=2)
    return LM(
        "claude-3-haiku-20240307", base_url=fakes["anthropic"].url, api_key=anthropic_server.API_KEY, max_retries=2
    )


def bare_sdk_call(provider: str, fakes: dict[str, FakeProvider]) -> Callable[[], object]:
    """The same chat through the provider's SDK alone, with its default ``max_retries`` (2)."""
    if provider == "openai":
        client = openai.OpenAI(base_url=f"{fakes['openai'].url}/v1", api_key=openai_server.API_KEY, timeout=120)
        return lambda: client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    client = anthropic.Anthropic(base_url=fakes["anthropic"].url, api_key=anthropic_server.API_KEY, timeout=120)
    return lambda: client.messages.create(
        model="claude-3-haiku-20240307", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_every_try_is_the_sdks_retry(provider: str, mode: str, fakes: dict[str, FakeProvider]) -> None:
    fake = fakes[provider]
    script_two_failures(fake)
    lm = lm_for(provider, fakes)
    reply = lm.respond(user_message="Hi") if mode == "sync" else asyncio.run(lm.respond_async(user_message="Hi"))
    assert reply.text == DEFAULT_TEXT
    ours, times = list(fake.script.headers), list(fake.script.times)

    script_two_failures(fake)
    bare_sdk_call(provider, fakes)()
    theirs = list(fake.script.headers)

    assert [h["x-stainless-retry-count"] for h in ours] == ["0", "1", "2"]
    assert [h["x-stainless-retry-count"] for h in theirs] == ["0", "1", "2"]
    # One idempotency key for every try, the SDK's (these SDK versions send none: their clients
    # leave `_idempotency_header` unset), and otherwise the very same request each time.
    assert len({h.get("idempotency-key") for h in ours}) == 1
    assert ours[0].get("idempotency-key") == theirs[0].get("idempotency-key") is None
    without_count = [{k: v for k, v in h.items() if k != "x-stainless-retry-count"} for h in ours]
    assert without_count == [without_count[0]] * 3
    assert ours[0]["x-stainless-async"] == ("false" if mode == "sync" else "async:asyncio")
    # The server's waits are obeyed: retry-after-ms, then retry-after.
    assert times[1] - times[0] >= RETRY_AFTER_MS_S
    assert times[2] - times[1] >= RETRY_AFTER_S


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_max_retries_zero_is_one_try(provider: str, fakes: dict[str, FakeProvider]) -> None:
    fake = fakes[provider]
    script_two_failures(fake)
    base_url = f"{fake.url}/v1" if provider == "openai" else fake.url
    key = openai_server.API_KEY if provider == "openai" else anthropic_server.API_KEY
    lm = LM("some-model", provider=provider, base_url=base_url, api_key=key, max_retries=0)
    with pytest.raises(RateLimitError) as caught:
        lm.respond(user_message="Hi")
    assert caught.value.status_code == 429 and caught.value.retry_after_s == RETRY_AFTER_MS_S
    assert [h["x-stainless-retry-count"] for h in fake.script.headers] == ["0"]
