"""Token ids → text on the asyncio side: incremental detokenization and stop strings.

After vLLM v1's output processor: the engine thread only produces token ids; each request's
``OutputProcessor`` turns them into text deltas with ``tokenizers``' ``DecodeStream`` (O(1) per
token, holding back incomplete UTF-8), and watches for stop strings. Text that could still grow
into a stop string is held back until it is ruled out; when a stop string appears the text is cut
before it (OpenAI and vLLM exclude it) and the request is told to stop.
"""

from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerBase


class OutputProcessor:
    """One request's text assembly. ``stopped`` turns True once a stop string was found."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer.backend_tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)
        self._stops = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False

    def add(self, token_ids: list[int] | tuple[int, ...]) -> str:
        """Feed new token ids; return the text now safe to send (may be empty)."""
        if self.stopped:
            return ""
        pieces = [self._held]
        for token in token_ids:
            piece = self._stream.step(self._tokenizer, token)
            if piece:
                pieces.append(piece)
        text = "".join(pieces)
        cut = min((i for s in self._stops if (i := text.find(s)) != -1), default=None)
        if cut is not None:
            self.stopped, self._held = True, ""
            return text[:cut]
        keep = self._partial_stop_len(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """Release the held-back text (the request has ended without a stop string)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best
