"""Prometheus metrics, named after vLLM's (docs.vllm.ai, "Production Metrics") with ``synthd:``.

Each app owns its registry so several servers (tests) can live in one process.
"""

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from synthd.engine.native.sequence import Sequence
from synthd.models.pool import ModelManager

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TOKEN_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)


class ServingMetrics:
    """Request, latency and token metrics of one server.

    Histograms are in seconds: TTFT (arrival → first token), TPOT (mean time per output token after
    the first), end-to-end latency (arrival → finish) and queue time (arrival → scheduled).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.requests = Counter("synthd:requests", "HTTP requests by model and status code.",
                                ["model_name", "status"], registry=self.registry)
        self.request_success = Counter("synthd:request_success", "Finished sequences by finish reason.",
                                       ["model_name", "finished_reason"], registry=self.registry)
        self.prompt_tokens = Counter("synthd:prompt_tokens", "Prefilled prompt tokens.", labels, registry=self.registry)
        self.generation_tokens = Counter("synthd:generation_tokens", "Generated tokens.", labels, registry=self.registry)
        self.ttft = Histogram("synthd:time_to_first_token_seconds", "Time to first token.", labels,
                              buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.tpot = Histogram("synthd:time_per_output_token_seconds", "Time per output token after the first.",
                              labels, buckets=TOKEN_BUCKETS_S, registry=self.registry)
        self.e2e = Histogram("synthd:e2e_request_latency_seconds", "End-to-end sequence latency.", labels,
                             buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.queue = Histogram("synthd:request_queue_time_seconds", "Time waiting before the first prefill.",
                               labels, buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.running = Gauge("synthd:num_requests_running", "Sequences in the running batch.", labels,
                             registry=self.registry)
        self.waiting = Gauge("synthd:num_requests_waiting", "Sequences waiting for a batch slot.", labels,
                             registry=self.registry)

    def refresh(self, manager: ModelManager) -> None:
        """Set the running/waiting gauges from the resident models (called at scrape time)."""
        for loaded in manager.resident():
            self.running.labels(loaded.model_id).set(loaded.engine.num_running)
            self.waiting.labels(loaded.model_id).set(loaded.engine.num_waiting)

    def observe_sequence(self, model: str, sequence: Sequence) -> None:
        """Record one finished sequence (engine thread)."""
        finished = sequence.finished_s or time.perf_counter()
        self.request_success.labels(model, sequence.finish_reason or "unknown").inc()
        self.prompt_tokens.labels(model).inc(len(sequence.prompt_ids))
        self.generation_tokens.labels(model).inc(sequence.completion_tokens)
        self.e2e.labels(model).observe(finished - sequence.arrival_s)
        if sequence.scheduled_s is not None:
            self.queue.labels(model).observe(sequence.scheduled_s - sequence.arrival_s)
        if sequence.first_token_s is not None:
            self.ttft.labels(model).observe(sequence.first_token_s - sequence.arrival_s)
            if sequence.completion_tokens > 1:
                self.tpot.labels(model).observe((finished - sequence.first_token_s) / (sequence.completion_tokens - 1))
