"""Prompt and stop token ids from a Hugging Face tokenizer, the same for every engine: chat messages
in the model's chat template with the assistant cue, raw completion prompts, and the ids that end a
sequence.

One rule for special tokens (``encode``), vLLM's and transformers': a completion prompt gets the
tokenizer's own special tokens (``tokenizer(prompt)``: a BOS where the tokenizer adds one), a chat is
its rendered template as written (the template writes its BOS itself, so adding one would double
it). Either default can be turned over per request with vLLM's ``add_special_tokens`` extra field.
"""

from typing import Any

from jinja2 import TemplateError
from transformers import GenerationConfig, PreTrainedTokenizerBase

from synthd.errors import InvalidRequest

COMPLETION_ADD_SPECIAL_TOKENS = True
"""vLLM's default for ``/v1/completions``: ``tokenizer(prompt)`` as transformers encodes it."""
CHAT_ADD_SPECIAL_TOKENS = False
"""vLLM's default for ``/v1/chat/completions``: the template's own special tokens only."""
CHAT_TEMPLATE_FILE = "chat_template.jinja"
"""Where a chat template is stored beside a tokenizer or an adapter (transformers' file name)."""
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{{ eos_token if message['role'] == 'assistant' else '<|im_end|>' }}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML-style turns (``<|im_start|>role``, a newline, the content), each assistant turn ended by the
tokenizer's EOS token so that a fine-tune learns to stop: the template an SFT or DPO job on a base
model without one is trained with, then stored with its adapter (``CHAT_TEMPLATE_FILE``)."""


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    model_id: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_special_tokens: bool = CHAT_ADD_SPECIAL_TOKENS,
    chat_template: str | None = None,
) -> list[int]:
    """Token ids of ``messages`` in ``chat_template`` (a fine-tune's own) or else ``tokenizer``'s,
    plus the assistant cue, encoded by ``encode`` (``add_special_tokens``: the tokenizer's special
    tokens on top of the template's, as vLLM does when a chat request asks for them).

    Raises:
        InvalidRequest: no chat template, or the messages cannot be rendered or tokenized.
    """
    chat_template = chat_template or tokenizer.chat_template
    if not chat_template:
        raise InvalidRequest(f"model '{model_id}' has no chat template; use /v1/completions", param="messages")
    try:
        text = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=False, chat_template=chat_template
        )
    except TypeError:
        raise InvalidRequest("The messages could not be tokenized (invalid Unicode?).", param="messages") from None
    # ValueError, TemplateError: the template's raise_exception, or a broken template; OverflowError,
    # RecursionError: a template past the sandbox's limits (a range too big, runaway recursion)
    except (ValueError, TemplateError, OverflowError, RecursionError) as exc:
        raise InvalidRequest(
            f"The messages could not be rendered with the chat template: {exc}", param="messages"
        ) from None
    return encode(tokenizer, text, add_special_tokens, param="messages")


def encode(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    add_special_tokens: bool = COMPLETION_ADD_SPECIAL_TOKENS,
    param: str = "prompt",
) -> list[int]:
    """Token ids of ``text``: ``tokenizer(text, add_special_tokens=...)``, the one place prompts are
    tokenized (see the module docstring for the defaults).

    Raises:
        InvalidRequest: the text cannot be tokenized (``param`` names the field).
    """
    try:
        return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
    except (TypeError, ValueError):
        raise InvalidRequest(f"The {param} could not be tokenized (invalid Unicode?).", param=param) from None


class TokenizerPrompts:
    """``Engine.render_chat`` and ``Engine.encode`` for an engine holding its ``tokenizer`` in this
    process (the native and vLLM engines): the functions above over ``self.tokenizer``."""

    model_id: str
    tokenizer: PreTrainedTokenizerBase

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_special_tokens: bool = CHAT_ADD_SPECIAL_TOKENS,
        chat_template: str | None = None,
    ) -> list[int]:
        """See ``Engine.render_chat``."""
        return render_chat(self.tokenizer, self.model_id, messages, tools, add_special_tokens, chat_template)

    def encode(self, text: str, add_special_tokens: bool = COMPLETION_ADD_SPECIAL_TOKENS) -> list[int]:
        """See ``Engine.encode``."""
        return encode(self.tokenizer, text, add_special_tokens)


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
