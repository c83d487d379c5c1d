"""Health, readiness, Prometheus metrics and client disconnects."""

import time
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from synthd.server_process import ServerProcess
from tests.support.server import MODEL, metric


def test_health_and_ready(server: ServerProcess) -> None:
    assert httpx.get(server.root_url + "/health").json() == {"status": "ok"}
    ready = httpx.get(server.root_url + "/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": [MODEL]}


def test_metrics_count_requests_tokens_and_latencies(server: ServerProcess) -> None:
    before_ok = metric(server, "synthd:requests_total", status="200")
    before_404 = metric(server, "synthd:requests_total", status="404")
    before_tokens = metric(server, "synthd:generation_tokens_total", model_name=MODEL)
    before_ttft = metric(server, "synthd:time_to_first_token_seconds_count", model_name=MODEL)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "ignore_eos": True}
    assert httpx.post(server.base_url + "/chat/completions", json=body, timeout=60).status_code == 200
    assert httpx.post(server.base_url + "/chat/completions", json={**body, "model": "nope"}).status_code == 404
    assert metric(server, "synthd:requests_total", status="200") == before_ok + 1
    assert metric(server, "synthd:requests_total", status="404") == before_404 + 1
    assert metric(server, "synthd:generation_tokens_total", model_name=MODEL) == before_tokens + 5
    assert metric(server, "synthd:time_to_first_token_seconds_count", model_name=MODEL) == before_ttft + 1
    text = httpx.get(server.root_url + "/metrics").text
    for name in (
        "synthd:time_per_output_token_seconds_bucket",
        "synthd:e2e_request_latency_seconds_bucket",
        "synthd:request_queue_time_seconds_bucket",
        "synthd:prompt_tokens_total",
        "synthd:num_requests_running",
        "synthd:num_requests_waiting",
    ):
        assert name in text


def request_series(server: ServerProcess) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of ``synthd:requests_total`` on the server's ``/metrics``."""
    families = text_string_to_metric_families(httpx.get(server.root_url + "/metrics", timeout=30).text)
    return {
        tuple(sorted(sample.labels.items()))
        for family in families
        for sample in family.samples
        if sample.name == "synthd:requests_total"
    }


def test_unknown_model_names_share_one_metrics_label(server: ServerProcess) -> None:
    before = request_series(server)
    names = [f"made-up-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for name in names:
        body = {"model": name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        assert httpx.post(server.base_url + "/chat/completions", json=body).status_code == 404
        assert httpx.post(server.base_url + "/completions", json={"model": name, "prompt": "Hi"}).status_code == 404
    after = request_series(server)
    assert after - before <= {(("model_name", "unknown"), ("status", "404"))}
    assert not any(name in str(series) for name in names for series in after)


def test_client_disconnect_stops_its_generation(server: ServerProcess) -> None:
    aborted = metric(server, "synthd:request_success_total", finished_reason="abort")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell a very long story."}],
        "max_tokens": 4000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=60) as response:
        for index, _ in enumerate(response.iter_lines()):
            if index > 10:
                break
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and metric(server, "synthd:num_requests_running") > 0:
        time.sleep(0.2)
    assert metric(server, "synthd:num_requests_running") == 0
    assert metric(server, "synthd:request_success_total", finished_reason="abort") == aborted + 1
    tokens = metric(server, "synthd:generation_tokens_total")
    time.sleep(1.0)
    assert metric(server, "synthd:generation_tokens_total") == tokens


def test_non_streamed_disconnect_also_stops(server: ServerProcess) -> None:
    aborted = metric(server, "synthd:request_success_total", finished_reason="abort")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell a very long story."}],
        "max_tokens": 4000,
        "ignore_eos": True,
    }
    try:
        httpx.post(server.base_url + "/chat/completions", json=body, timeout=1.5)
    except httpx.ReadTimeout:
        pass
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and metric(server, "synthd:num_requests_running") > 0:
        time.sleep(0.2)
    assert metric(server, "synthd:num_requests_running") == 0
    assert metric(server, "synthd:request_success_total", finished_reason="abort") == aborted + 1
