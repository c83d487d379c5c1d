"""Tokenised supervised examples with the loss on assistant messages of weight 1 only.

TRL's ``assistant_only_loss`` needs a chat template with ``{% generation %}`` markers, which most
shipped templates (SmolLM2's included) lack, and it has no per-message ``weight``. So the labels are
built here and handed to ``SFTTrainer`` as a pre-tokenised dataset (``input_ids`` + ``labels``,
``-100`` where no loss is taken; TRL uses such a ``labels`` column as is):

1. render the whole conversation with the model's chat template and tokenise it with offsets;
2. for each trainable assistant message, its character span is what rendering
   ``messages[:i+1]`` adds to rendering ``messages[:i]`` with the generation prompt: the content
   and the end-of-turn token, so the model learns to stop;
3. a token is labelled when its first character lies in such a span.

A template that does not render prefixes of a conversation as prefixes of its rendering cannot be
split this way; such a conversation raises ``DataFormatError``.
"""

from synthd.training.data import DataFormatError

IGNORE_INDEX = -100


def trainable_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans ``[start, end)`` of its trainable
    assistant messages (``weight`` 1).

    Raises:
        DataFormatError: the chat template is not prefix-preserving for this conversation.
    """
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = tokenizer.apply_chat_template(plain, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or not message.get("weight", 1):
            continue
        before = (
            tokenizer.apply_chat_template(plain[:index], tokenize=False, add_generation_prompt=True) if index else ""
        )
        through = tokenizer.apply_chat_template(plain[: index + 1], tokenize=False)
        if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
            raise DataFormatError(
                "the model's chat template does not render conversations prefix by prefix, so "
                "assistant turns cannot be told apart for the loss"
            )
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_example(tokenizer, messages: list[dict], max_length: int) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` for one conversation, truncated to ``max_length`` tokens
    (keeping the start, as TRL's default ``truncation_mode``)."""
    text, spans = trainable_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(start <= offset[0] < end for start, end in spans) else IGNORE_INDEX
        for token, offset in zip(encoded["input_ids"], encoded["offset_mapping"])
    ]
    return {"input_ids": encoded["input_ids"][:max_length], "labels": labels[:max_length]}


def tokenize_rows(tokenizer, rows: list[dict], max_length: int) -> list[dict[str, list[int]]]:
    """Tokenise normalised SFT rows; examples left with no labelled token (all weights 0, or
    truncated away) are dropped.

    Raises:
        DataFormatError: no example has a trainable token.
    """
    examples = [tokenize_example(tokenizer, row["messages"], max_length) for row in rows]
    kept = [e for e in examples if any(label != IGNORE_INDEX for label in e["labels"])]
    if not kept:
        raise DataFormatError(
            f"no trainable tokens: no assistant message of weight 1 within the first {max_length} tokens of any example"
        )
    return kept
