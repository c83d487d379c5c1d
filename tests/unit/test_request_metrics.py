"""``RequestMetricsMiddleware``: every ``/v1`` answer is counted by status, the 500 that an
unexpected error becomes outside it included (it was never counted)."""

import asyncio

import pytest

from synthd.api.app import RequestMetricsMiddleware
from synthd.api.metrics import ServingMetrics


def serve_once(app, metrics: ServingMetrics) -> None:
    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    async def send(message: dict) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "state": {}}
    asyncio.run(RequestMetricsMiddleware(app, metrics)(scope, receive, send))


def count(metrics: ServingMetrics, status: str) -> float:
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == "synthd:requests_total" and sample.labels["status"] == status
    )


def test_answers_and_unexpected_errors_are_counted_by_status() -> None:
    metrics = ServingMetrics()

    async def answers_404(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def fails(scope, receive, send) -> None:
        raise RuntimeError("boom")

    serve_once(answers_404, metrics)
    with pytest.raises(RuntimeError):
        serve_once(fails, metrics)
    assert count(metrics, "404") == 1 and count(metrics, "500") == 1
