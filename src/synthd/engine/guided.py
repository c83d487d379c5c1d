"""Guided decoding (structured outputs): JSON Schema → grammar → a per-sequence token mask.

Built on llguidance (github.com/guidance-ai/llguidance), the library behind vLLM's ``guidance``
structured-output backend. At each step the matcher says which tokens keep the output a valid
prefix of the grammar; every other logit is set to ``-inf`` before sampling. Once the JSON value is
complete only end-of-sequence is allowed, so the sequence ends with ``finish_reason`` ``stop``; if
``max_tokens`` runs out first the output is cut (``length``), as with OpenAI.
"""

import json
import threading
from typing import Any

import llguidance
import llguidance.hf
import llguidance.numpy
import torch
from transformers import PreTrainedTokenizerBase

from synthd.engine.protocol import GuideError


class GuideMatcher:
    """One sequence's matcher: ``mask`` the next token's logits, then ``accept`` the token chosen."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self.matcher = matcher
        self.bitmask = llguidance.numpy.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits (float32, shape ``[vocab]``, CPU) of disallowed tokens to ``-inf`` in place."""
        llguidance.numpy.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        llguidance.numpy.apply_token_bitmask_inplace(logits.numpy(), self.bitmask)

    def accept(self, token: int) -> None:
        """Advance past ``token`` (one the mask allowed).

        Raises:
            RuntimeError: the matcher refused the token or is in an error state.
        """
        if not self.matcher.consume_token(token) or self.matcher.is_error():
            raise RuntimeError(f"structured output: {short_error(self.matcher.get_error()) or 'token not allowed'}")


class GuidedDecoding:
    """Grammars for one tokenizer. Building the llguidance tokenizer takes about a second, so it is
    built on first use and kept, as are compiled grammars (by schema); safe from several threads."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()
        self._grammars: dict[str, str] = {}

    def _ll(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = llguidance.hf.from_tokenizer(self.tokenizer)
            return self._ll_tokenizer

    def compile(self, schema: dict[str, Any]) -> str:
        """The grammar for JSON matching ``schema`` (compact: no free whitespace between tokens).

        Raises:
            GuideError: the schema is not one llguidance can compile (its message says why).
        """
        key = json.dumps(schema, sort_keys=True)
        if (cached := self._grammars.get(key)) is not None:
            return cached
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        except (ValueError, TypeError) as exc:
            raise GuideError(f"Invalid JSON schema: {exc}") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._ll())
        if is_error:
            raise GuideError(f"Invalid JSON schema: {messages[0] if messages else 'cannot be compiled'}")
        if (problem := self._first_step_error(grammar)) is not None:
            raise GuideError(f"Invalid JSON schema: no JSON value can match it ({problem}).")
        with self._lock:
            self._grammars[key] = grammar
        return grammar

    def _first_step_error(self, grammar: str) -> str | None:
        """Why no first token is allowed by ``grammar``, or None. A grammar can compile and still match
        nothing (a schema that only refers to itself, ``{"$ref": "#"}``): llguidance reports that only
        when the first mask is computed, so it is computed once here, per schema."""
        probe = GuideMatcher(llguidance.LLMatcher(self._ll(), grammar), self._ll().vocab_size)
        llguidance.numpy.fill_next_token_bitmask(probe.matcher, probe.bitmask, 0)
        return short_error(probe.matcher.get_error()) if probe.matcher.is_error() else None

    def matcher(self, schema: dict[str, Any]) -> GuideMatcher:
        """A fresh matcher for JSON matching ``schema``, for one sequence.

        Raises:
            GuideError: the schema cannot be compiled.
        """
        tokenizer = self._ll()
        return GuideMatcher(llguidance.LLMatcher(tokenizer, self.compile(schema)), tokenizer.vocab_size)


def short_error(message: str) -> str:
    """llguidance's error without the parser state it appends: its first line, at most 200 characters."""
    return message.strip().splitlines()[0][:200] if message.strip() else ""
