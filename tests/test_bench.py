"""``synthd bench``'s load modes against a real server: Poisson arrivals, the shared-prefix dataset
(cold and warm requests apart, the server's prefix-cache counters), goodput, and bad options."""

import json
import subprocess
import sys

import httpx
import openai
import pytest
from conftest import MODEL

from synthd.bench.runner import PROMPTS, BenchConfig, Goodput, RequestTiming, build_prompts
from synthd.server_process import ServerProcess


def synthd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "synthd.cli", *args], capture_output=True, check=False, text=True, timeout=600
    )


def counter(server: ServerProcess, name: str) -> float:
    text = httpx.get(f"{server.root_url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_request_rate_with_goodput(server: ServerProcess, tmp_path) -> None:
    out = tmp_path / "rate.json"
    result = synthd(
        "bench",
        "--base-url",
        server.base_url,
        "--model",
        MODEL,
        "--request-rate",
        "inf,50",
        "--requests",
        "4",
        "--max-tokens",
        "6",
        "--goodput",
        "ttft:600000",
        "--goodput",
        "tpot:0.001",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [(r["request_rate"], r["concurrency"]) for r in rows] == [(float("inf"), 0), (50.0, 0)]
    for row in rows:
        assert row["completed"] == 4 and row["output_tokens"] == 4 * 6
        assert row["goodput_share"] == 0.0  # no server streams a token per microsecond
    assert "inf/s" in result.stdout and "goodput %" in result.stdout
    everyone = synthd(
        "bench",
        "--base-url",
        server.base_url,
        "--model",
        MODEL,
        "--request-rate",
        "inf",
        "--requests",
        "2",
        "--max-tokens",
        "4",
        "--goodput",
        "ttft:600000",
        "--json",
        str(out),
    )
    assert everyone.returncode == 0 and json.loads(out.read_text())[0]["goodput_share"] == 1.0


def test_shared_prefix_reports_cold_and_warm_and_hits_the_prefix_cache(
    server: ServerProcess, client: openai.OpenAI, tmp_path
) -> None:
    out = tmp_path / "prefix.json"
    probe = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=1
    ).usage.prompt_tokens  # bench sends it first, to check the server
    hits, queries = (
        counter(server, "synthd:prefix_cache_hits_total"),
        counter(server, "synthd:prefix_cache_queries_total"),
    )
    result = synthd(
        "bench",
        "--base-url",
        server.base_url,
        "--model",
        MODEL,
        "--dataset",
        "shared-prefix",
        "--prefix-len",
        "300",
        "--concurrency",
        "1",
        "--requests",
        "4",
        "--max-tokens",
        "4",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    row = json.loads(out.read_text())[0]
    assert row["dataset"] == "shared-prefix" and row["completed"] == 4 and row["prompt_tokens_mean"] > 300
    assert row["ttft_cold_s"]["p50"] > 0 and row["ttft_warm_s"]["p50"] > 0
    assert counter(server, "synthd:prefix_cache_hits_total") - hits >= 2 * 300  # two warm requests reused it
    assert counter(server, "synthd:prefix_cache_queries_total") - queries == probe + 4 * row["prompt_tokens_mean"]


def test_shared_prefix_prompts_pair_up_and_are_new_each_run() -> None:
    config = BenchConfig("http://x/v1", MODEL, requests=6, dataset="shared-prefix", prefix_len=50, prefix_reuse=3)
    prompts = build_prompts(config)
    prefixes = [p.split("\n\n")[0] for p, _ in prompts]
    assert [warm for _, warm in prompts] == [False, True, True, False, True, True]
    assert prefixes[0] == prefixes[2] != prefixes[3] == prefixes[5]
    assert len(prefixes[0].split()) > 50 and build_prompts(config)[0][0] != prompts[0][0]


def test_goodput_parsing_and_objectives() -> None:
    slo = Goodput.parse(["ttft:200", "tpot:50"])
    assert (slo.ttft_s, slo.tpot_s) == (0.2, 0.05)
    assert slo.met_by(RequestTiming(ttft_s=0.1, e2e_s=0.1 + 9 * 0.04, output_tokens=10))
    assert not slo.met_by(RequestTiming(ttft_s=0.3, e2e_s=0.4, output_tokens=10))
    assert not slo.met_by(RequestTiming(ttft_s=0.1, e2e_s=0.1 + 9 * 0.06, output_tokens=10))
    for bad in (["e2e:10"], ["ttft:abc"], ["tpot:-1"]):
        with pytest.raises(ValueError):
            Goodput.parse(bad)


def test_bad_bench_options_are_one_line() -> None:
    for args, message in [
        (("--request-rate", "fast"), "--request-rate"),
        (("--dataset", "sharegpt"), "--dataset"),
        (("--goodput", "e2e:5"), "--goodput"),
        (("--concurrency", "0"), "--concurrency"),
    ]:
        result = synthd("bench", *args)
        assert result.returncode == 1 and result.stderr.startswith("error:") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
