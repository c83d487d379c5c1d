"""Incremental detokenisation with stop-string handling, shared by streamed and whole answers."""

from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

REPLACEMENT_CHAR = "\ufffd"


@dataclass
class TextAssembler:
    """Turns a growing list of token ids into safe text deltas.

    Text is released only when it cannot change any more: a trailing incomplete UTF-8 sequence
    (decoded as U+FFFD) is held back, and so is any suffix that could still grow into a stop
    string. When a stop string appears, the text is cut before it and ``stopped`` is set.
    """

    tokenizer: PreTrainedTokenizerBase
    stop: tuple[str, ...] = ()
    token_ids: list[int] = field(default_factory=list)
    emitted: str = ""
    stopped: bool = False

    def add(self, token_id: int) -> str:
        """Append one token; return the new text that is safe to send (may be empty)."""
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cut = self._stop_index(text)
        if cut is not None:
            self.stopped = True
            return self._release(text[:cut])
        if text.endswith(REPLACEMENT_CHAR):
            return ""
        return self._release(text[: len(text) - self._partial_stop_len(text)])

    def flush(self) -> str:
        """Release everything still held back (called once the sequence has ended)."""
        if self.stopped:
            return ""
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        return self._release(text)

    def _release(self, text: str) -> str:
        if len(text) <= len(self.emitted) or not text.startswith(self.emitted):
            return ""
        delta = text[len(self.emitted):]
        self.emitted = text
        return delta

    def _stop_index(self, text: str) -> int | None:
        # Only the region that the newest token could have completed needs searching.
        longest = max((len(s) for s in self.stop), default=0)
        start = max(0, len(self.emitted) - longest)
        hits = [i for s in self.stop if (i := text.find(s, start)) != -1]
        return min(hits) if hits else None

    def _partial_stop_len(self, text: str) -> int:
        best = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best
