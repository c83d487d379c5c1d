"""Prompt and stop token ids from a Hugging Face tokenizer, the same for every engine: chat messages
in the model's chat template with the assistant cue, raw completion prompts, and the ids that end a
sequence."""

from typing import Any

from transformers import GenerationConfig, PreTrainedTokenizerBase

from synthd.errors import InvalidRequest


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    model_id: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Token ids of ``messages`` in ``tokenizer``'s chat template plus the assistant cue.

    Raises:
        InvalidRequest: no chat template, or the messages cannot be rendered or tokenized.
    """
    if not tokenizer.chat_template:
        raise InvalidRequest(f"model '{model_id}' has no chat template; use /v1/completions", param="messages")
    try:
        ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
    except TypeError:
        raise InvalidRequest("The messages could not be tokenized (invalid Unicode?).", param="messages") from None
    except ValueError as exc:
        raise InvalidRequest(
            f"The messages could not be rendered with the chat template: {exc}", param="messages"
        ) from None
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return list(ids)


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a raw prompt (no special tokens added).

    Raises:
        InvalidRequest: the text cannot be tokenized.
    """
    try:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    except (TypeError, ValueError):
        raise InvalidRequest("The prompt could not be tokenized (invalid Unicode?).", param="prompt") from None


def eos_token_ids(generation: GenerationConfig, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every id that ends a sequence: the generation config's, the tokenizer's, and ``<|endoftext|>``."""
    configured = generation.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    if "<|endoftext|>" in vocab:
        ids.add(vocab["<|endoftext|>"])
    return ids
