"""Requests and completion tokens served per model, for ``/v1/models`` and the console."""

import threading
from collections import defaultdict

from synthd.services.chat import RequestRecord


class UsageTally:
    """Counts finished requests and their completion tokens by model id. Thread-safe."""

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._lock = threading.Lock()

    def record(self, record: RequestRecord) -> None:
        """Count one finished request."""
        with self._lock:
            counts = self._counts[record.model]
            counts[0] += 1
            counts[1] += record.completion_tokens

    def get(self, model: str) -> tuple[int, int]:
        """``(requests, completion tokens)`` served for ``model``."""
        with self._lock:
            requests, tokens = self._counts.get(model, (0, 0))
            return requests, tokens
