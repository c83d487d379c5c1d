"""Issue 13's serving-side reports, each as a test of its whole kind: response shapes as OpenAI sends
them, logit_bias, metrics per request, models listed while loading, ids that are names, broken
models, leases under concurrent deletes and preferences, bounded queues."""

import asyncio
import json
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from synthd.server_process import ServerProcess
from tests.support.server import ENGINE, MODEL, metric, server_env

HI = [{"role": "user", "content": "Hi"}]


def sse_payloads(response: httpx.Response) -> list[dict]:
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_stream_chunks_carry_every_key_openai_always_sends(server: ServerProcess) -> None:
    chat = httpx.post(
        server.base_url + "/chat/completions",
        timeout=60,
        json={"model": MODEL, "stream": True, "max_tokens": 5, "messages": HI},
    )
    chunks = sse_payloads(chat)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        assert {"id", "object", "created", "model", "choices", "system_fingerprint"} <= chunk.keys()
        assert "usage" not in chunk  # only with stream_options.include_usage
        for choice in chunk["choices"]:
            assert {"index", "delta", "logprobs", "finish_reason"} <= choice.keys()
    assert [c["choices"][0]["finish_reason"] for c in chunks][:-1] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    with_usage = sse_payloads(
        httpx.post(
            server.base_url + "/chat/completions",
            timeout=60,
            json={
                "model": MODEL,
                "stream": True,
                "max_tokens": 5,
                "messages": HI,
                "stream_options": {"include_usage": True},
            },
        )
    )
    assert all("usage" in c for c in with_usage) and [c["usage"] for c in with_usage[:-1]] == [None] * (
        len(with_usage) - 1
    )
    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"]["completion_tokens"] > 0
    whole = httpx.post(
        server.base_url + "/chat/completions", timeout=60, json={"model": MODEL, "max_tokens": 5, "messages": HI}
    ).json()
    ChatCompletion.model_validate(whole)
    assert {"index", "message", "logprobs", "finish_reason"} <= whole["choices"][0].keys()
    assert {"role", "content", "refusal"} <= whole["choices"][0]["message"].keys()
    assert "tool_calls" not in whole["choices"][0]["message"]
    streamed = sse_payloads(
        httpx.post(
            server.base_url + "/completions",
            timeout=60,
            json={"model": MODEL, "prompt": "Once upon", "max_tokens": 4, "stream": True},
        )
    )
    for chunk in streamed:  # the SDK's Completion type has no null finish_reason; OpenAI streams send one
        assert {"id", "object", "created", "model", "choices"} <= chunk.keys()
        assert {"index", "text", "logprobs", "finish_reason"} <= chunk["choices"][0].keys()
    Completion.model_validate(streamed[-1])


def test_logit_bias_absent_empty_or_null_alike_and_applied(client: openai.OpenAI, tokenizer) -> None:
    def complete(**extra) -> str:
        return (
            client.completions.create(
                model=MODEL, prompt="The capital of France is", max_tokens=3, temperature=0, **extra
            )
            .choices[0]
            .text
        )

    plain = complete()
    assert complete(logit_bias={}) == plain
    assert complete(extra_body={"logit_bias": None}) == plain
    banana = tokenizer(" banana", add_special_tokens=False)["input_ids"][0]
    assert complete(logit_bias={str(banana): 100}).startswith(" banana")
    first = tokenizer(plain, add_special_tokens=False)["input_ids"][0]
    assert not complete(logit_bias={str(first): -100}).startswith(tokenizer.decode([first]))


def test_logprobs_on_chat_and_completions(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 and t.logprob == t.top_logprobs[0].logprob for t in content)
    assert "".join(t.token for t in content).startswith(chat.choices[0].message.content[:3])
    text = client.completions.create(model=MODEL, prompt="One, two,", max_tokens=3, temperature=0, logprobs=2)
    legacy = text.choices[0].logprobs
    assert len(legacy.tokens) == 3 and len(legacy.token_logprobs) == 3 and all(len(t) <= 2 for t in legacy.top_logprobs)
    assert legacy.text_offset[0] == 0 and "".join(legacy.tokens) == text.choices[0].text


def test_logprobs_bytes_rebuild_characters_split_across_tokens(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Repeat exactly: 日本"}],
        max_tokens=7,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content, text = chat.choices[0].logprobs.content, chat.choices[0].message.content
    assert "日本" in text and any(t.token == "\ufffd" for t in content)  # 日 is split over tokens
    assert bytes(b for t in content for b in t.bytes).decode() == text
    tokens = [*content, *(top for t in content for top in t.top_logprobs)]
    assert all(t.bytes == list(t.token.encode()) for t in tokens if t.token.isascii())


def test_metrics_count_requests_not_sequences(server: ServerProcess, client: openai.OpenAI) -> None:
    before = {
        n: metric(server, f"synthd:{n}", model_name=MODEL)
        for n in (
            "request_success_total",
            "prompt_tokens_total",
            "generation_tokens_total",
            "time_to_first_token_seconds_count",
            "e2e_request_latency_seconds_count",
        )
    }
    reply = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=4, n=2, temperature=1, seed=1)
    after = {n: metric(server, f"synthd:{n}", model_name=MODEL) for n in before}
    assert after["request_success_total"] - before["request_success_total"] == 1
    assert after["time_to_first_token_seconds_count"] - before["time_to_first_token_seconds_count"] == 1
    assert after["e2e_request_latency_seconds_count"] - before["e2e_request_latency_seconds_count"] == 1
    assert after["prompt_tokens_total"] - before["prompt_tokens_total"] == reply.usage.prompt_tokens
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == reply.usage.completion_tokens


def test_engine_gauges_while_a_request_streams(server: ServerProcess, client: openai.OpenAI) -> None:
    stream = iter(
        client.chat.completions.create(
            model=MODEL, messages=HI, max_tokens=200, stream=True, extra_body={"ignore_eos": True}
        )
    )
    next(stream), next(stream)
    assert metric(server, "synthd:num_requests_running", model_name=MODEL) == 1
    assert metric(server, "synthd:num_requests_waiting", model_name=MODEL) == 0
    assert 0 < metric(server, "synthd:kv_cache_usage_perc", model_name=MODEL) <= 1
    assert list(stream)[-1].choices[0].finish_reason == "length"
    assert metric(server, "synthd:num_requests_running", model_name=MODEL) == 0


def test_model_cards_name_models_not_server_paths(client: openai.OpenAI, models_dir: Path) -> None:
    cards = client.models.list().data
    assert all(str(models_dir) not in json.dumps(card.model_dump()) for card in cards)
    card = client.models.retrieve(MODEL)
    assert card.model_extra["root"] == MODEL and card.model_extra["status"] == "warmed"
    assert card.model_extra["gpu"] == "cpu"
    for path in (str(models_dir / MODEL), f"../{models_dir.name}/{MODEL}", f"{MODEL}/../{MODEL}"):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(path)


@pytest.fixture
def odd_models(models_dir: Path, tmp_path: Path) -> Path:
    """A models folder with the embedded model, a copy served as ``smol-copy`` (symlinks), and
    ``broken`` whose config.json is truncated JSON."""
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / MODEL).symlink_to(models_dir / MODEL)
    copy = directory / "smol-copy"
    copy.mkdir()
    for item in (models_dir / MODEL).iterdir():
        (copy / item.name).symlink_to(item)
    broken = directory / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_si')
    return directory


def _linked_copy(source: Path, target: Path, skip: tuple[str, ...] = ()) -> Path:
    target.mkdir()
    for item in source.iterdir():
        if item.name not in skip:
            (target / item.name).symlink_to(item)
    return target


def _with_config(source: Path, target: Path, **changes) -> None:
    _linked_copy(source, target, skip=("config.json",))
    config = json.loads((source / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **changes}))


def _small_vocabulary(source: Path, target: Path) -> None:
    """A tiny Llama with 100 token embeddings beside the embedded model's 49,152-token tokenizer: it
    loads, and fails on the first prompt (ids past its vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)


BROKEN_FOLDERS = {  # name → (how it is broken, a word its reason names); each answered 500 once, or loaded
    "broken": (lambda src, dst: None, "config.json"),  # the odd_models fixture's truncated config.json
    "wrong-types": (lambda src, dst: _with_config(src, dst, hidden_size="576", num_hidden_layers=[30]), "config"),
    "no-weights": (lambda src, dst: _linked_copy(src, dst, skip=("model.safetensors",)), "model.safetensors"),
    "torn-weights": (
        lambda src, dst: (
            _linked_copy(src, dst, skip=("model.safetensors",)),
            (dst / "model.safetensors").write_bytes(bytes(range(100))),
        ),
        "",
    ),
    "no-tokenizer": (
        lambda src, dst: _linked_copy(src, dst, skip=("tokenizer.json", "tokenizer_config.json")),
        "",
    ),
    "missing-layers": (  # more layers than the checkpoint holds: transformers would start them random
        lambda src, dst: _with_config(
            src, dst, num_hidden_layers=json.loads((src / "config.json").read_text())["num_hidden_layers"] + 1
        ),
        "missing",
    ),
    "cannot-generate": (_small_vocabulary, ""),  # loaded, was warmed, then every request failed
}


@pytest.fixture(scope="module")
def broken_server(models_dir: Path, tmp_path_factory) -> ServerProcess:
    """One server over a models folder with the embedded model and every kind of ``BROKEN_FOLDERS``."""
    home = tmp_path_factory.mktemp("broken-home")
    directory = home / "models"
    directory.mkdir()
    (directory / MODEL).symlink_to(models_dir / MODEL)
    (directory / "broken").mkdir()
    (directory / "broken" / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_si')
    for name, (damage, _) in BROKEN_FOLDERS.items():
        if name != "broken":
            damage(models_dir / MODEL, directory / name)
    (
        _linked_copy(models_dir / MODEL, directory / "bad-template", skip=("chat_template.jinja",))
        / "chat_template.jinja"
    ).write_text("{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor")
    (  # past the Jinja sandbox's limits: OverflowError, "Range too big"
        _linked_copy(models_dir / MODEL, directory / "huge-template", skip=("chat_template.jinja",))
        / "chat_template.jinja"
    ).write_text("{% for i in range(100000000) %}x{% endfor %}")
    refused = directory / "stablelm"  # an architecture the native engine refuses: its config alone
    refused.mkdir()
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = {"architectures": ["StableLmForCausalLM"], "model_type": "stablelm", "vocab_size": 1000, **shape}
    (refused / "config.json").write_text(json.dumps(config))
    with ServerProcess(log_path=home / "server.log", env=server_env(home, directory)) as server:
        yield server


@pytest.mark.parametrize("name", list(BROKEN_FOLDERS))
def test_broken_model_fails_its_warmup_with_the_reason(broken_server: ServerProcess, name: str) -> None:
    """A folder that cannot load, for any reason, is a failed warmup with the reason and a 400
    ``model_load_failed`` on every route; the server keeps serving its other models."""
    server, hint = broken_server, BROKEN_FOLDERS[name][1]
    if ENGINE == "vllm" and name not in ("broken", "wrong-types"):
        hint = ""  # failed while loading: vLLM's engine core reports that it failed, its cause only in its log
    warm = httpx.post(f"{server.root_url}/warmup/{name}", timeout=120)
    if warm.status_code == 200:  # it failed while loading, in the background
        assert warm.json()["status"] == "warming", warm.text
    else:  # it failed before (its config.json)
        assert warm.status_code == 400 and warm.json()["error"]["code"] == "model_load_failed", warm.text
    for _ in range(600):
        status = httpx.get(f"{server.root_url}/warmup/status/{name}").json()
        if status["status"] != "warming":
            break
        time.sleep(0.05)
    assert status["status"] == "failed" and hint in status["error"] and status["error"], status
    for route, body in (("chat/completions", {"messages": HI}), ("completions", {"prompt": "Hi"})):
        answer = httpx.post(f"{server.base_url}/{route}", json={"model": name, **body}, timeout=120)
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "model_load_failed", answer.text
        assert hint in answer.json()["error"]["message"]
    healthy = httpx.post(
        f"{server.base_url}/chat/completions", timeout=60, json={"model": MODEL, "messages": HI, "max_tokens": 2}
    )
    assert healthy.status_code == 200


@pytest.mark.native_only("synthd renders chat templates itself for both engines (engine/prompts.py): one load shows it")
@pytest.mark.parametrize("model", ["bad-template", "huge-template"])
def test_a_chat_template_that_fails_is_a_400_and_completions_still_answer(
    broken_server: ServerProcess, model: str
) -> None:
    """A broken template (or one whose raise_exception rejects the messages, or one past the
    sandbox's limits) answered 500."""
    chat = httpx.post(
        f"{broken_server.base_url}/chat/completions",
        json={"model": model, "messages": HI, "max_tokens": 2},
        timeout=120,
    )
    assert chat.status_code == 400 and "chat template" in chat.json()["error"]["message"], chat.text
    completion = httpx.post(
        f"{broken_server.base_url}/completions", json={"model": model, "prompt": "Hi", "max_tokens": 2}
    )
    assert completion.status_code == 200, completion.text


@pytest.mark.native_only("the native engine's list of architectures it runs exactly")
def test_an_architecture_the_native_engine_cannot_run_exactly_is_refused(broken_server: ServerProcess) -> None:
    """Refused when it loads, naming the architecture and the way out; never a wrong answer or a 500."""
    answer = httpx.post(f"{broken_server.base_url}/completions", json={"model": "stablelm", "prompt": "Hi"}, timeout=60)
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["code"] == "model_load_failed", answer.text
    assert "StableLmForCausalLM" in error["message"] and "--engine vllm" in error["message"]


def test_concurrent_warmups_respect_max_loaded_models(odd_models: Path, tmp_path: Path) -> None:
    """Three warmups of one model sent at once with room for one model: the idle embedded model
    is evicted, one warmup starts the load and the two others join it; one model is ever resident."""
    env = server_env(tmp_path, odd_models, SYNTHD_MAX_LOADED_MODELS="1")
    with ServerProcess(log_path=tmp_path / "server.log", env=env) as server:
        root = server.root_url

        async def together() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as http:
                return await asyncio.gather(*(http.post(f"{root}/warmup/smol-copy") for _ in range(3)))

        answers = asyncio.run(together())
        assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
        assert sorted(a.json()["status"] for a in answers) == ["already_warming", "already_warming", "warming"]
        assert len(httpx.get(f"{root}/ready").json()["models"]) <= 1
        deadline = time.monotonic() + 120
        while (status := httpx.get(f"{root}/warmup/status/smol-copy").json())[
            "status"
        ] == "warming" and time.monotonic() < deadline:
            assert len(httpx.get(f"{root}/ready").json()["models"]) <= 1
            time.sleep(0.2)
        assert status["status"] == "warmed"
        assert httpx.get(f"{root}/ready").json()["models"] == ["smol-copy"]


@pytest.mark.native_only("the listing comes from the registry before any engine is loaded")
def test_models_are_listed_from_the_first_answer(odd_models: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path, odd_models)
    with ServerProcess(
        ["--model", "smol-copy"], log_path=tmp_path / "server.log", env=env, ready_path="/health"
    ) as server:
        listed = httpx.get(server.base_url + "/models").json()["data"]
        assert [m["id"] for m in listed][:1] == ["smol-copy"]
        assert listed[0]["status"] in ("cold", "warming", "warmed")


def test_queue_beyond_its_bound_answers_429(models_dir: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path, models_dir, SYNTHD_MAX_NUM_SEQS="1", SYNTHD_MAX_WAITING="1")
    with ServerProcess(log_path=tmp_path / "server.log", env=env) as server:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as http:
                body = {"model": MODEL, "messages": HI, "max_tokens": 40, "ignore_eos": True}
                return await asyncio.gather(
                    *(http.post(server.base_url + "/chat/completions", json=body) for _ in range(6))
                )

        answers = asyncio.run(burst())
        codes = sorted(a.status_code for a in answers)
        assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
        limited = next(a for a in answers if a.status_code == 429)
        assert limited.headers["retry-after"] and limited.json()["error"]["type"] == "rate_limit_error"
