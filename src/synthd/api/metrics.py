"""Prometheus metrics, named after vLLM's (docs.vllm.ai, "Production Metrics") with ``synthd:``.

Counters and histograms count REQUESTS, as vLLM's do: a chat with ``n: 2`` is one request, its
prompt tokens counted once, its completion tokens those of both choices. Gauges come from each
replica's engine at scrape time. Each app owns its registry so several servers (tests) can live in
one process.

Labels take trusted values only: a ``model_name`` is a model id this server resolved (or serves),
never a name a client made up, which becomes ``unknown`` (else each made-up name would add series).
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from synthd.engine.protocol import EngineStats
from synthd.services.chat import RequestRecord

UNKNOWN_MODEL = "unknown"
"""The ``model_name`` of requests for a name that resolved to no model here."""

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
TOKEN_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)


class ServingMetrics:
    """Request, latency, token and engine metrics of one server (HELP texts after vLLM's).

    Histograms are in seconds: TTFT (arrival → first token of any choice), TPOT (after the first
    token, per output token of the longest choice), end-to-end latency (arrival → last token) and
    queue time (arrival → first scheduled).
    """

    def __init__(self, served: list[str] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.model_names: set[str] = set(served or [])
        """Ids that resolved to a model here (the operator's from the start): the only model labels."""
        labels = ["model_name"]
        r = self.registry
        self.requests = Counter(
            "synthd:requests", "HTTP requests by model and status code.", ["model_name", "status"], registry=r
        )
        self.request_success = Counter(
            "synthd:request_success",
            "Count of successfully processed requests.",
            ["model_name", "finished_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter("synthd:prompt_tokens", "Number of prefill tokens processed.", labels, registry=r)
        self.generation_tokens = Counter(
            "synthd:generation_tokens", "Number of generation tokens processed.", labels, registry=r
        )
        self.ttft = Histogram(
            "synthd:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tpot = Histogram(
            "synthd:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            labels,
            buckets=TOKEN_BUCKETS_S,
            registry=r,
        )
        self.e2e = Histogram(
            "synthd:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue = Histogram(
            "synthd:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            labels,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.running = Gauge(
            "synthd:num_requests_running", "Number of requests in model execution batches.", labels, registry=r
        )
        self.waiting = Gauge(
            "synthd:num_requests_waiting", "Number of requests waiting to be processed.", labels, registry=r
        )
        self.kv_usage = Gauge(
            "synthd:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels, registry=r
        )
        self.prefix_queries = Gauge(
            "synthd:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
            labels,
            registry=r,
        )
        self.prefix_hits = Gauge(
            "synthd:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.",
            labels,
            registry=r,
        )

    def model_label(self, resolved: str | None, requested: str | None) -> str:
        """The ``model_name`` of a request: the id it ``resolved`` to (then trusted from now on),
        else the ``requested`` name when that once resolved, else ``UNKNOWN_MODEL``."""
        if resolved is not None:
            self.model_names.add(resolved)
            return resolved
        return requested if requested in self.model_names else UNKNOWN_MODEL

    def refresh(self, replica_stats: list[tuple[str, EngineStats]]) -> None:
        """Set the engine gauges from every loaded replica's (model id, stats) (called at scrape
        time with ``ModelPool.engine_stats()``)."""
        totals: dict[str, list[float]] = {}
        for model_id, stats in replica_stats:
            row = totals.setdefault(model_id, [0, 0, 0.0, 0, 0])
            row[0] += stats.running
            row[1] += stats.waiting
            row[2] = max(row[2], stats.kv_cache_usage)
            row[3] += stats.prefix_cache_queries
            row[4] += stats.prefix_cache_hits
        for model, (running, waiting, kv, queries, hits) in totals.items():
            self.running.labels(model).set(running)
            self.waiting.labels(model).set(waiting)
            self.kv_usage.labels(model).set(kv)
            self.prefix_queries.labels(model).set(queries)
            self.prefix_hits.labels(model).set(hits)

    def observe_request(self, record: RequestRecord) -> None:
        """Record one finished request."""
        model = record.model
        self.request_success.labels(model, record.finish_reason).inc()
        self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        self.generation_tokens.labels(model).inc(record.completion_tokens)
        self.e2e.labels(model).observe(record.finished_s - record.arrival_s)
        if record.scheduled_s is not None:
            self.queue.labels(model).observe(max(0.0, record.scheduled_s - record.arrival_s))
        if record.first_token_s is not None:
            self.ttft.labels(model).observe(record.first_token_s - record.arrival_s)
            if record.max_choice_tokens > 1:
                self.tpot.labels(model).observe(
                    (record.finished_s - record.first_token_s) / (record.max_choice_tokens - 1)
                )
