"""A token's text and raw bytes, for OpenAI's logprobs (``token`` and ``bytes``), on both engines.

OpenAI's ``bytes`` are the token's own UTF-8 bytes, so a character split across tokens (an emoji,
CJK) can be rebuilt by joining them. Decoding one token alone cannot give them: a partial UTF-8
sequence decodes to U+FFFD, whose bytes (239, 191, 189) are those of '�', not the token's. The raw
bytes come from the vocabulary instead:

- a byte-level BPE vocabulary (GPT-2's, SmolLM2's, Llama 3's: a ``ByteLevel`` decoder) spells each
  byte as one printable character; transformers' ``bytes_to_unicode`` (GPT-2's table) maps them back;
- a sentencepiece byte-fallback token ``<0xE6>`` is that one byte;
- any other token (added and special tokens, other vocabularies) is the UTF-8 of its decoded text.
"""

import json
import re
from functools import cache

from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character → byte: the inverse of ``bytes_to_unicode``."""
    return {char: byte for byte, char in bytes_to_unicode().items()}


def is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer``'s decoder is (or contains) ``ByteLevel``: its pieces spell bytes."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return False
    try:
        state = json.loads(decoder.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return False
    return state.get("type") == "ByteLevel" or any(d.get("type") == "ByteLevel" for d in state.get("decoders", []))


def token_bytes(piece: str | None, text: str, byte_level: bool) -> tuple[int, ...]:
    """The raw bytes of a token whose vocabulary piece is ``piece`` and whose decoded text is
    ``text`` (see the module docstring for the rule)."""
    if piece is not None:
        if match := BYTE_TOKEN.fullmatch(piece):
            return (int(match.group(1), 16),)
        if byte_level and piece and all(char in byte_decoder() for char in piece):
            return tuple(byte_decoder()[char] for char in piece)
    return tuple(text.encode("utf-8"))


class TokenPieces:
    """``(text, bytes)`` of token ids of one tokenizer (OpenAI's ``token`` and ``bytes``)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.byte_level = is_byte_level(tokenizer)

    def __call__(self, token_id: int) -> tuple[str, tuple[int, ...]]:
        text = self.tokenizer.decode([token_id])
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        return text, token_bytes(piece if isinstance(piece, str) else None, text, self.byte_level)
