"""The synthd command line, run as a user would (subprocesses)."""

import json

from synthd.server_process import ServerProcess, free_port
from tests.support.cli import synthd
from tests.support.server import MODEL


def test_chat_one_shot_streams_answer(server: ServerProcess) -> None:
    result = synthd(
        "chat", MODEL, "What is the capital of France?", "--temperature", "0", env={"SYNTH_API_URL": server.root_url}
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_chat_interactive_keeps_history(server: ServerProcess) -> None:
    result = synthd(
        "chat",
        MODEL,
        "--base-url",
        server.base_url,
        "--temperature",
        "0",
        "--max-tokens",
        "20",
        input="What is the capital of France?\nAnd of Germany?\n\n",
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout and "Berlin" in result.stdout


def test_chat_errors_are_one_line(server: ServerProcess) -> None:
    unreachable = synthd("chat", MODEL, "hi", "--base-url", f"http://127.0.0.1:{free_port()}/v1")
    assert unreachable.returncode == 1
    assert unreachable.stderr.strip().startswith("error: cannot reach")
    assert len(unreachable.stderr.strip().splitlines()) == 1
    unknown = synthd("chat", "no-such-model", "hi", "--base-url", server.base_url)
    assert unknown.returncode == 1
    assert "404" in unknown.stderr and "no-such-model" in unknown.stderr


def test_models_list_shows_the_shipped_models_cached() -> None:
    result = synthd("models", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["model_id"], r["source"], r["cached"]) for r in rows[:2]] == [
        (MODEL, "embedded", True),
        ("gemma-3-270m", "shipped", True),
    ]


def test_models_pull_of_a_cached_model_is_a_no_op_and_of_an_unknown_one_an_error() -> None:
    cached = synthd("models", "pull", "google/gemma-3-270m")
    assert cached.returncode == 0 and "gemma-3-270m is already cached" in cached.stdout
    unknown = synthd("models", "pull", "llama-9000")
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "'llama-9000' is neither a shipped model (SmolLM2-135M-Instruct, gemma-3-270m) nor a Hub id" in (
        unknown.stderr
    )


def test_serve_unknown_model_fails_fast() -> None:
    """Offline (``HF_HUB_OFFLINE``), a hub id not in the cache is one line, and nothing is requested."""
    result = synthd(
        "serve", "--model", "org/not-cached-anywhere", "--port", str(free_port()), env={"HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "org/not-cached-anywhere is not in the Hugging Face cache, and HF_HUB_OFFLINE is set" in result.stderr
    unknown = synthd("serve", "--model", "not-a-model-anywhere", "--port", str(free_port()))
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr and "Traceback" not in unknown.stderr


def test_bench_reports_throughput_and_latency(server: ServerProcess, tmp_path) -> None:
    out = tmp_path / "bench.json"
    result = synthd(
        "bench",
        "--base-url",
        server.base_url,
        "--model",
        MODEL,
        "--concurrency",
        "1,4",
        "--requests",
        "4",
        "--max-tokens",
        "8",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [r["concurrency"] for r in rows] == [1, 4]
    for row in rows:
        assert row["completed"] == 4 and row["failed"] == 0
        assert row["output_tokens"] == 4 * 8
        assert row["output_tokens_per_s"] > 0
        assert 0 < row["ttft_s"]["p50"] <= row["e2e_s"]["p50"]
        assert row["tpot_s"]["mean"] > 0
    assert "out tok/s" in result.stdout


def test_bench_bad_input_is_one_line() -> None:
    result = synthd("bench", "--concurrency", "a,b")
    assert result.returncode == 1 and result.stderr.startswith("error:")
    down = synthd("bench", "--base-url", f"http://127.0.0.1:{free_port()}/v1", "--concurrency", "1", "--requests", "1")
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_gpus_table_and_json() -> None:
    table = synthd("gpus")
    assert table.returncode == 0, table.stderr
    assert "H100" in table.stdout and "3.95" in table.stdout and "cpu" in table.stdout
    data = json.loads(synthd("gpus", "--json").stdout)
    assert data["inventory"][0]["type"] == "cpu" and len(data["catalog"]) == 9


def test_serve_port_out_of_range_is_refused() -> None:
    for port in ("99999", "-1"):  # 99999 used to listen on 99999 - 65536 while logging 99999
        result = synthd("serve", "--port", port)
        assert result.returncode == 2 and "--port" in result.stderr and "Traceback" not in result.stderr


def test_gpus_validate_outcomes(tmp_path) -> None:
    ok = synthd("gpus", "validate", "cpu", "--model", MODEL)
    assert ok.returncode == 0 and "would run on cpu" in ok.stdout
    big = tmp_path / "llama-70b"
    big.mkdir()
    (big / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "vocab_size": 128256,
                "hidden_size": 8192,
                "intermediate_size": 28672,
                "num_hidden_layers": 80,
                "num_attention_heads": 64,
                "num_key_value_heads": 8,
                "max_position_embeddings": 8192,
            }
        )
    )
    too_small = synthd("gpus", "validate", "A10G", "--model", str(big), "--purpose", "sft")
    assert too_small.returncode == 1 and "GPU type not supported for this model" in too_small.stderr
    malformed = synthd("gpus", "validate", "H100:3")
    assert malformed.returncode == 1 and "valid counts: 1, 2, 4, 8" in malformed.stderr
    huge = synthd("gpus", "validate", "H100:" + "9" * 5000)  # past int()'s digit limit: a traceback before
    assert huge.returncode == 1 and "invalid GPU count" in huge.stderr and "Traceback" not in huge.stderr
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps({"devices": [{"type": "H100", "count": 8}]}))
    on_pool = synthd("gpus", "validate", "H100:2", "--model", str(big), env={"SYNTHD_GPU_POOL_FILE": str(pool)})
    assert on_pool.returncode == 0 and "would run on H100:2" in on_pool.stdout
    purpose = synthd("gpus", "validate", "cpu", "--purpose", "pretrain")
    assert purpose.returncode == 1 and "--purpose" in purpose.stderr


def test_warmup_command(server: ServerProcess) -> None:
    warmed = synthd("warmup", MODEL, "--gpu", "cpu", "--wait", "--base-url", server.base_url)
    assert warmed.returncode == 0, warmed.stderr
    assert "warmed on cpu" in warmed.stdout or "already_warmed on cpu" in warmed.stdout
    refused = synthd("warmup", MODEL, "--gpu", "H100", "--base-url", server.base_url)
    assert refused.returncode == 1 and "409" in refused.stderr and "it has: cpu" in refused.stderr
    unknown = synthd("warmup", "no-such-model", "--base-url", server.base_url)
    assert unknown.returncode == 1 and "404" in unknown.stderr
