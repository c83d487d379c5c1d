"""GPUs over HTTP: the ``X-GPU-Preference`` header and ``gpu_preference`` field, ``/gpus`` and
``/gpus/validate``, and the warmup state machine on a real server."""

import threading
import time
from pathlib import Path

import httpx
import pytest

from synthd.server_process import ServerProcess
from tests.support.server import MODEL, server_env


def chat(server: ServerProcess, headers: dict | None = None, **body) -> httpx.Response:
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, **body}
    return httpx.post(server.base_url + "/chat/completions", json=payload, headers=headers or {}, timeout=60)


def test_preference_on_requests_header_and_body(server: ServerProcess) -> None:
    ok = chat(server, {"X-GPU-Preference": "cpu"})
    assert ok.status_code == 200 and ok.headers["X-GPU-Selected"] == "cpu"
    assert "-cpu-" in ok.json()["system_fingerprint"]
    refused = chat(server, {"X-GPU-Preference": "H100"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "gpu_unavailable"
    assert "it has: cpu" in refused.json()["error"]["message"]
    assert chat(server, {"X-GPU-Preference": "H100"}, gpu_preference="cpu").status_code == 200  # body wins
    assert chat(server, {"X-GPU-Preference": "cpu"}, gpu_preference="H100").status_code == 409
    bad = chat(server, gpu_preference="H100:3")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "gpu_preference"
    assert "valid counts" in bad.json()["error"]["message"]
    completion = httpx.post(
        server.base_url + "/completions",
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 2, "gpu_preference": "auto"},
        timeout=60,
    )
    assert completion.status_code == 200 and completion.headers["X-GPU-Selected"] == "cpu"


def test_gpus_endpoint_and_validate(server: ServerProcess, models_dir: Path, tmp_path: Path) -> None:
    report = httpx.get(server.base_url + "/gpus").json()
    assert len(report["catalog"]) == 9
    assert report["inventory"][0]["type"] == "cpu"
    assert MODEL in report["inventory"][0]["in_use_by"] and report["in_use"][MODEL] == "cpu"
    validate = lambda **b: httpx.post(server.base_url + "/gpus/validate", json=b).json()
    ok = validate(model=MODEL, gpu_preference="cpu")
    assert (ok["valid"], ok["fits"], ok["available"], ok["selected"]) == (True, True, True, "cpu")
    assert ok["required_gib"] < ok["offered_gib"]
    elsewhere = validate(model=MODEL, gpu_preference="H100:2")
    assert (elsewhere["valid"], elsewhere["fits"], elsewhere["available"]) == (True, True, False)
    assert validate(model=MODEL, gpu_preference="TPU")["valid"] is False
    on_disk = tmp_path / "smol-on-disk"
    on_disk.mkdir()
    (on_disk / "config.json").write_bytes((models_dir / MODEL / "config.json").read_bytes())
    for unknown in ("nope", str(on_disk)):  # over HTTP a model is a name, never a server path
        answer = httpx.post(server.base_url + "/gpus/validate", json={"model": unknown, "gpu_preference": "cpu"})
        assert answer.status_code == 404
    bad_purpose = httpx.post(server.base_url + "/gpus/validate", json={"model": MODEL, "purpose": "pretrain"})
    assert bad_purpose.status_code == 400


@pytest.fixture()
def copy_models_dir(models_dir: Path, tmp_path: Path) -> Path:
    """A models dir with the embedded model and ``org/smol-copy``, a second id for the same weights
    (a folder of symlinks), so that one starts cold."""
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / MODEL).symlink_to(models_dir / MODEL)
    copy = directory / "smol-copy"
    copy.mkdir()
    for item in (models_dir / MODEL).iterdir():
        (copy / item.name).symlink_to(item)
    return directory


def test_warmup_state_machine(copy_models_dir: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path, copy_models_dir, SYNTHD_MODEL_IDLE_TIMEOUT_S="3")
    model_copy = "/smol-copy"
    with ServerProcess(log_path=tmp_path / "server.log", env=env) as server:
        root = server.root_url
        status = lambda: httpx.get(f"{root}/warmup/status{model_copy}").json()
        assert status()["status"] == "cold"
        answers: list[dict] = []

        def post() -> None:
            answers.append(httpx.post(f"{root}/warmup{model_copy}", json={"gpu_preference": "cpu"}, timeout=60).json())

        threads = [threading.Thread(target=post) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Concurrent warmups coalesce: one starts the load, the others join it, all on the CPU.
        assert sorted(a["status"] for a in answers) == ["already_warming", "already_warming", "warming"]
        assert [a["gpu"] for a in answers] == ["cpu"] * 3
        seen = {status()["status"]}
        deadline = time.monotonic() + 60
        while status()["status"] != "warmed" and time.monotonic() < deadline:
            seen.add(status()["status"])
            time.sleep(0.05)
        final = status()
        assert final["status"] == "warmed" and final["gpu"] == "cpu" and final["load_seconds"] > 0
        assert seen <= {"warming", "warmed"}
        again = httpx.post(f"{root}/v1/warmup{model_copy}").json()
        assert again["status"] == "already_warmed"
        assert httpx.post(f"{root}/warmup{model_copy}", json={"gpu_preference": "H100"}).status_code == 409
        assert status()["status"] == "warmed"  # a refused preference does not break a warmed model
        failed = httpx.post(f"{root}/warmup/no/such-model")
        assert failed.status_code == 404
        missing = httpx.get(f"{root}/warmup/status/no/such-model")
        assert missing.status_code == 404 and "does not exist" in missing.json()["error"]["message"]
        deadline = time.monotonic() + 20
        while status()["status"] == "warmed" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status()["status"] == "cold"  # idle for > 3 s: unloaded
        reply = httpx.post(
            server.base_url + "/chat/completions",
            timeout=120,
            json={
                "model": model_copy.lstrip("/"),
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 20,
                "temperature": 0,
            },
        )
        assert reply.status_code == 200 and "Paris" in reply.json()["choices"][0]["message"]["content"]
        assert status()["status"] == "warmed"  # a request on a cold model loads it first
