"""Chat completions through the official openai SDK against a live server with the real model."""

import asyncio
import json

import openai
import pytest

from tests.support.server import MODEL

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]

# Questions whose greedy answer contains the expected word, solo and in bf16 batches (checked with
# rotated orders; "capital of Italy/Spain" were dropped: their margins flip under bf16 padding).
KNOWN_ANSWERS = {
    "What is the capital of France?": "Paris",
    "What is 2 + 2?": "4",
    "How many days are in a week?": "7",
    "What is the opposite of hot?": "cold",
    "What is the capital of England?": "London",
    "What is the capital of Japan?": "Tokyo",
    "What color is the sky on a clear day?": "blue",
    "What is the capital of Germany?": "Berlin",
}


def chat(client: openai.OpenAI, **kwargs):
    return client.chat.completions.create(model=MODEL, **{"messages": FRANCE, "temperature": 0, **kwargs})


def streamed_text(client: openai.OpenAI, **kwargs) -> tuple[str, str | None, list]:
    chunks = list(chat(client, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = next((c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason), None)
    return text, finish, chunks


def test_models_list_and_retrieve_with_slash(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve("HuggingFaceTB/SmolLM2-135M-Instruct").id == MODEL
    assert client.models.retrieve(MODEL).object == "model"


def test_answer_is_real_and_shaped_like_openai(client: openai.OpenAI) -> None:
    reply = chat(client, max_tokens=30)
    assert "Paris" in reply.choices[0].message.content
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.role == "assistant"
    assert reply.model == MODEL
    assert reply.system_fingerprint.startswith("synthd-") and "-cpu-" in reply.system_fingerprint


def test_hub_id_is_accepted(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="HuggingFaceTB/SmolLM2-135M-Instruct", messages=FRANCE, temperature=0, max_tokens=30
    )
    assert "Paris" in reply.choices[0].message.content


def test_greedy_is_deterministic(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Write one sentence about autumn."}]
    first = chat(client, messages=messages, max_tokens=40).choices[0].message.content
    second = chat(client, messages=messages, max_tokens=40).choices[0].message.content
    assert first == second
    assert len(first) > 10


def test_stream_equals_non_stream(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Describe a cat in two sentences."}]
    whole = chat(client, messages=messages, max_tokens=48)
    text, finish, chunks = streamed_text(client, messages=messages, max_tokens=48)
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_stream_include_usage_adds_final_usage_chunk(client: openai.OpenAI) -> None:
    whole = chat(client, max_tokens=20)
    _, _, chunks = streamed_text(client, max_tokens=20, stream_options={"include_usage": True})
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])
    _, _, plain = streamed_text(client, max_tokens=20)
    assert all(c.usage is None for c in plain)


def test_max_tokens_is_exact_with_finish_length(client: openai.OpenAI) -> None:
    long_answer = [{"role": "user", "content": "Write a long essay about the history of Rome."}]
    for field in ("max_tokens", "max_completion_tokens"):
        reply = chat(client, messages=long_answer, **{field: 7})
        assert reply.usage.completion_tokens == 7
        assert reply.choices[0].finish_reason == "length"
    _, finish, chunks = streamed_text(
        client, messages=long_answer, max_tokens=7, stream_options={"include_usage": True}
    )
    assert finish == "length" and chunks[-1].usage.completion_tokens == 7


def test_stop_sequences_cut_and_are_excluded(client: openai.OpenAI) -> None:
    full = chat(client, max_tokens=30).choices[0].message.content
    assert "Paris" in full
    expected = full[: full.index("Paris")]
    for stop in ("Paris", ["nothing-like-this", "Paris"]):
        reply = chat(client, max_tokens=30, stop=stop)
        assert reply.choices[0].message.content == expected
        assert reply.choices[0].finish_reason == "stop"
    text, finish, _ = streamed_text(client, max_tokens=30, stop=["Paris"])
    assert (text, finish) == (expected, "stop")


def test_n_gives_independent_choices_and_seed_reproduces(client: openai.OpenAI) -> None:
    poem = [{"role": "user", "content": "Write a short poem about the moon."}]
    reply = chat(client, messages=poem, n=2, temperature=1.0, seed=11, max_tokens=24)
    assert [c.index for c in reply.choices] == [0, 1]
    texts = [c.message.content for c in reply.choices]
    assert texts[0] != texts[1]
    again = chat(client, messages=poem, n=2, temperature=1.0, seed=11, max_tokens=24)
    assert [c.message.content for c in again.choices] == texts
    exact = chat(client, messages=poem, n=2, temperature=1.0, seed=11, max_tokens=24, extra_body={"ignore_eos": True})
    assert exact.usage.completion_tokens == 2 * 24


def test_n_streamed_assembles_to_the_non_streamed_choices(client: openai.OpenAI) -> None:
    """Each index's deltas put together are that choice's text and finish reason when not streamed
    with the same seed, and the streamed usage is the non-streamed one."""
    sampling = {"n": 2, "temperature": 0.8, "seed": 3, "max_tokens": 10}
    whole = chat(client, **sampling)
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}, **sampling))
    texts, finishes = ["", ""], [None, None]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert texts == [c.message.content for c in whole.choices]
    assert finishes == [c.finish_reason for c in whole.choices]
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()


def test_usage_matches_tokenizer(client: openai.OpenAI, tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    reply = chat(client, messages=messages, max_tokens=40)
    expected_prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(expected_prompt, list):
        expected_prompt = expected_prompt["input_ids"]
    assert reply.usage.prompt_tokens == len(expected_prompt)
    answer_tokens = len(tokenizer(reply.choices[0].message.content, add_special_tokens=False)["input_ids"])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == answer_tokens + 1  # + the <|im_end|> that ended it
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_penalties_change_sampling(client: openai.OpenAI) -> None:
    repeat = [{"role": "user", "content": "Write a haiku about the sea."}]
    plain = chat(client, messages=repeat, max_tokens=64).choices[0].message.content
    penalised = (
        chat(client, messages=repeat, max_tokens=64, frequency_penalty=2.0, presence_penalty=2.0)
        .choices[0]
        .message.content
    )

    def repeated_words(text: str) -> int:
        words = text.lower().split()
        return len(words) - len(set(words))

    assert repeated_words(penalised) < repeated_words(plain)


def test_eight_concurrent_requests_each_get_their_own_answer(server) -> None:
    async def ask_all() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client:

            async def ask(question: str) -> str:
                reply = await client.chat.completions.create(
                    model=MODEL, temperature=0, max_tokens=30, messages=[{"role": "user", "content": question}]
                )
                return reply.choices[0].message.content

            return list(await asyncio.gather(*(ask(q) for q in KNOWN_ANSWERS)))

    answers = asyncio.run(asyncio.wait_for(ask_all(), 120))
    for (question, word), answer in zip(KNOWN_ANSWERS.items(), answers):
        assert word in answer, (question, answer)
    capitals = {"Paris", "London", "Tokyo", "Berlin"}
    for (question, word), answer in zip(KNOWN_ANSWERS.items(), answers):
        assert not (capitals - {word}) & set(answer.replace(".", " ").split()), (question, answer)


PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_response_format_json_schema_is_enforced(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "Person", "schema": PERSON_SCHEMA, "strict": True}}
    for temperature in (0, 1.0):
        reply = chat(
            client,
            messages=[{"role": "user", "content": "Describe a person named Ada, aged 36."}],
            response_format=fmt,
            max_tokens=60,
            temperature=temperature,
            seed=3,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "stop"
        person = json.loads(choice.message.content)
        assert set(person) == {"name", "age"} and isinstance(person["name"], str) and isinstance(person["age"], int)
    streamed, finish, _ = streamed_text(client, response_format=fmt, max_tokens=60)
    assert finish == "stop" and set(json.loads(streamed)) == {"name", "age"}


def test_response_format_json_object_and_errors(client: openai.OpenAI) -> None:
    reply = chat(client, response_format={"type": "json_object"}, max_tokens=200)
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:
        assert reply.choices[0].message.content.startswith("{")
    with pytest.raises(openai.BadRequestError) as bad_schema:
        chat(
            client,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
        )
    assert (
        "Invalid JSON schema" in str(bad_schema.value)
        and bad_schema.value.body["param"] == "response_format.json_schema.schema"
    )
    with pytest.raises(openai.BadRequestError, match="json_schema is required"):
        chat(client, response_format={"type": "json_schema"})
    for matches_nothing in ({"$ref": "#"}, {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}):
        with pytest.raises(openai.BadRequestError) as nothing:
            chat(
                client, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": matches_nothing}}
            )
        assert "no JSON value can match it" in nothing.value.message and len(nothing.value.message) < 300
        assert nothing.value.body["param"] == "response_format.json_schema.schema"
    assert chat(client, response_format={"type": "text"}, max_tokens=5).choices[0].message.content


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}},
            "required": ["tz"],
            "additionalProperties": False,
        },
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_required_tool_choice_with_pydantic_defs(client: openai.OpenAI) -> None:
    """Tools whose parameters refer to their own ``$defs`` (every pydantic model with a nested model)."""
    place = {
        "type": "function",
        "function": {
            "name": "locate",
            "parameters": {
                "type": "object",
                "properties": {"where": {"$ref": "#/$defs/City"}},
                "required": ["where"],
                "additionalProperties": False,
                "$defs": {
                    "City": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                        "additionalProperties": False,
                    }
                },
            },
        },
    }
    reply = chat(
        client,
        messages=WEATHER_QUESTION,
        tools=[place, WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
    )
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and calls, reply
    for call in calls:
        arguments = json.loads(call.function.arguments)
        assert set(arguments) == ({"where"} if call.function.name == "locate" else {"city"})
        if call.function.name == "locate":
            assert set(arguments["where"]) == {"city"}


def test_named_tool_choice_returns_a_tool_call(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    reply = chat(client, messages=WEATHER_QUESTION, tools=[WEATHER, CLOCK], tool_choice=named, max_tokens=60)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.id.startswith("chatcmpl-tool-")
    assert set(json.loads(call.function.arguments)) == {"city"}
    chunks = list(
        chat(client, messages=WEATHER_QUESTION, tools=[WEATHER, CLOCK], tool_choice=named, max_tokens=60, stream=True)
    )
    [streamed] = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert streamed[0].function.arguments == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "stop"

    turn = WEATHER_QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24 C"},
    ]
    answer = chat(client, messages=turn, tools=[WEATHER], tool_choice="none", max_tokens=30).choices[0]
    assert answer.message.content and not answer.message.tool_calls


def test_required_tool_choice_returns_tool_calls(client: openai.OpenAI) -> None:
    reply = chat(
        client,
        messages=WEATHER_QUESTION,
        tools=[WEATHER, CLOCK],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    expected_keys = {"get_weather": {"city"}, "get_time": {"tz"}}[call.function.name]
    assert set(json.loads(call.function.arguments)) == expected_keys


def test_tool_errors(client: openai.OpenAI) -> None:
    for extra, param in (
        ({"tools": [WEATHER]}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "x", "parameters": {"type": "nonsense"}}}],
                "tool_choice": "required",
            },
            "tools",
        ),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            chat(client, max_tokens=5, **extra)
        assert caught.value.body["param"] == param
    with pytest.raises(openai.BadRequestError, match="not in tools"):
        chat(client, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="needs tool_call_id"):
        chat(client, messages=[{"role": "tool", "content": "x"}])


def test_tool_call_cut_by_a_stop_string_stays_text(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    choice = chat(
        client, messages=WEATHER_QUESTION, tools=[WEATHER], tool_choice=named, stop=['"city"'], max_tokens=40
    ).choices[0]
    assert (choice.finish_reason, choice.message.content, choice.message.tool_calls) == ("stop", "{", None)
