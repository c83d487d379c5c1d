"""vLLM's scheduler statistics collected for synthd's ``/metrics``.

vLLM calls its stat loggers' ``record`` in the frontend's output-handler task once per engine step
while requests run (never while idle); ``SchedulerStats`` carries the gauges and per-step prefix-cache
deltas in tokens (``vllm/v1/metrics/stats.py``). vLLM documents these classes as unstable across
versions; this module is the only place that reads them.
"""

from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import SchedulerStats

from synthd.engine.protocol import EngineStats


class StatsSink:
    """The latest gauges and the prefix-cache counters summed since the engine was built (they keep
    counting across engine restarts)."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_cache_usage = 0.0
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    def record(self, stats: SchedulerStats) -> None:
        """Take one step's ``SchedulerStats``."""
        self.running = stats.num_running_reqs
        self.waiting = stats.num_waiting_reqs
        self.kv_cache_usage = stats.kv_cache_usage
        if stats.prefix_cache_stats is not None:
            self.prefix_cache_queries += stats.prefix_cache_stats.queries
            self.prefix_cache_hits += stats.prefix_cache_stats.hits

    def snapshot(self, idle: bool) -> EngineStats:
        """``EngineStats`` now; ``idle`` (no request in flight) zeroes the gauges, which vLLM stops
        reporting once idle."""
        if idle:
            return EngineStats(prefix_cache_queries=self.prefix_cache_queries, prefix_cache_hits=self.prefix_cache_hits)
        return EngineStats(
            self.running, self.waiting, self.kv_cache_usage, self.prefix_cache_queries, self.prefix_cache_hits
        )


def stat_logger_class(sink: StatsSink) -> type[StatLoggerBase]:
    """A ``StatLoggerBase`` subclass (vLLM instantiates it as ``cls(vllm_config, engine_index)``)
    that feeds ``sink``."""

    class SynthdStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(
            self,
            scheduler_stats: SchedulerStats | None,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None:
                sink.record(scheduler_stats)

        def log_engine_initialized(self) -> None:
            pass

    return SynthdStatLogger
