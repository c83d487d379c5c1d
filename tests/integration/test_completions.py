"""Text completions, streaming included, through the official SDK."""

import openai

from tests.support.server import MODEL


def test_completion_text_usage_and_stream_equality(client: openai.OpenAI, tokenizer) -> None:
    prompt = "The capital of France is"
    whole = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6)
    assert whole.object == "text_completion"
    assert "Paris" in whole.choices[0].text
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert whole.usage.completion_tokens == 6
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=prompt, temperature=0, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_completion_list_of_prompts_and_stop(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt=["The capital of France is", "One, two, three,"], temperature=0, max_tokens=8, stop=["\n"]
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert "Paris" in reply.choices[0].text
    assert all("\n" not in c.text for c in reply.choices)


def test_add_special_tokens_as_vllm(client: openai.OpenAI, tokenizer) -> None:
    """vLLM's ``add_special_tokens``: on by default for completions, off for chat; either turned over
    per request (the embedded tokenizer adds none; test_conformance covers one that adds a BOS)."""
    prompt = "The capital of France is"
    bare = client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, extra_body={"add_special_tokens": False})
    assert bare.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    messages = [{"role": "user", "content": "Hi"}]
    chat = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=1, extra_body={"add_special_tokens": True}
    )
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert chat.usage.prompt_tokens == len(tokenizer(text)["input_ids"])


def test_logprobs_of_characters_split_across_tokens_streamed_and_not(client: openai.OpenAI) -> None:
    """Every generated token has its logprob, streamed or not, also the tokens whose text waits for
    the rest of a character (streams dropped those); ``text_offset`` stays inside the text."""
    body = {"model": MODEL, "prompt": "😀🎉 你好", "max_tokens": 12, "temperature": 0, "logprobs": 2}
    whole = client.completions.create(**body)
    logprobs = whole.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == whole.usage.completion_tokens == 12
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    assert all(0 <= offset <= len(whole.choices[0].text) for offset in logprobs.text_offset)
    chunks = list(client.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    streamed = [
        lp for c in chunks if c.choices and c.choices[0].logprobs for lp in c.choices[0].logprobs.token_logprobs
    ]
    assert streamed == logprobs.token_logprobs
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
