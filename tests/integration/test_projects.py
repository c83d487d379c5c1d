"""API keys and projects (issue 13, item 6), through the `synthd keys` CLI and the official openai SDK:
keys stored hashed, created/listed/revoked while the server runs; files, jobs and their `ft:` models
private to the creating project (404 and absent from lists elsewhere), visible to admin keys; per-key
rate limits with OpenAI's headers; no provider key in a training worker's environment."""

import json
import sqlite3
import time
from pathlib import Path

import httpx
import openai
import pytest

from synthd.demo_data import DEMO_DATA
from synthd.server_process import ServerProcess
from tests.support.cli import create_key, synthd
from tests.support.server import MODEL, server_env

SERVER_SECRETS = {
    "OPENAI_API_KEY": "sk-test-openai-0123456789abcdef",
    "ANTHROPIC_API_KEY": "sk-ant-test-0123456789",
    "HF_TOKEN": "hf_test0123456789abcdef",
    "SYNTH_API_KEY": "admin-key-from-the-environment",
}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def keys(home: Path, models_dir: Path) -> dict[str, str]:
    """Keys made with the CLI before the server starts: two projects, an admin, two limited keys."""
    return {
        "alpha": create_key(home, models_dir, "--project", "alpha"),
        "beta": create_key(home, models_dir, "--project", "beta"),
        "admin": create_key(home, models_dir, "--project", "ops", "--admin"),
        "rpm": create_key(home, models_dir, "--project", "limited", "--rpm", "2"),
        "tpm": create_key(home, models_dir, "--project", "limited", "--tpm", "20"),
    }


@pytest.fixture(scope="module")
def server(home: Path, models_dir: Path, keys: dict[str, str]):
    env = server_env(home, models_dir, **SERVER_SECRETS)  # SYNTHD_API_KEY="" counts as unset: SYNTH_API_KEY is used
    with ServerProcess(log_path=home / "server.log", env=env) as process:
        yield process


def sdk(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)


def test_keys_are_stored_hashed_and_listed_without_secrets(home: Path, models_dir: Path, keys: dict[str, str]) -> None:
    database = (home / "synthd.db").read_bytes()
    listing = synthd("keys", "list", env=server_env(home, models_dir)).stdout
    rows = json.loads(synthd("keys", "list", "--json", env=server_env(home, models_dir)).stdout)
    for secret in keys.values():
        assert secret.startswith("sk-synthd-") and len(secret) > 40
        assert secret.encode() not in database and secret not in listing
        assert secret[-4:] in listing
    assert {r["project"] for r in rows} == {"alpha", "beta", "ops", "limited"}
    assert [r["is_admin"] for r in rows if r["project"] == "ops"] == [True]
    assert {(r["rpm"], r["tpm"]) for r in rows if r["project"] == "limited"} == {(2, None), (None, 20)}


def test_keys_created_and_revoked_while_the_server_runs(server: ServerProcess, home: Path, models_dir: Path) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(server, "sk-synthd-not-a-key").models.list()
    key = create_key(home, models_dir, "--project", "gamma")
    assert MODEL in [m.id for m in sdk(server, key).models.list().data]
    key_id = next(
        r["id"]
        for r in json.loads(synthd("keys", "list", "--json", env=server_env(home, models_dir)).stdout)
        if r["project"] == "gamma"
    )
    revoked = synthd("keys", "revoke", key_id, env=server_env(home, models_dir))
    assert revoked.returncode == 0 and key_id in revoked.stdout
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(server, key).models.list()
    assert info.value.code == "invalid_api_key"
    unknown = synthd("keys", "revoke", "key-unknown", env=server_env(home, models_dir))
    assert unknown.returncode == 1 and "No API key with id 'key-unknown'" in unknown.stderr


def test_files_belong_to_the_creating_project(server: ServerProcess, keys: dict[str, str]) -> None:
    alpha, beta, admin = sdk(server, keys["alpha"]), sdk(server, keys["beta"]), sdk(server, keys["admin"])
    data = (DEMO_DATA / "sft_facts.jsonl").read_bytes()
    mine = alpha.files.create(file=("alpha.jsonl", data), purpose="fine-tune")
    theirs = beta.files.create(file=("beta.jsonl", data), purpose="fine-tune")
    assert mine.id in [f.id for f in alpha.files.list().data]
    assert mine.id not in [f.id for f in beta.files.list().data]
    assert theirs.id not in [f.id for f in alpha.files.list().data]
    for call in (beta.files.retrieve, beta.files.content, beta.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(mine.id)
    with pytest.raises(openai.BadRequestError) as info:
        beta.fine_tuning.jobs.create(model=MODEL, training_file=mine.id)
    assert info.value.code == "file_not_found"
    assert {mine.id, theirs.id} <= {f.id for f in admin.files.list().data}
    assert admin.files.retrieve(mine.id).filename == "alpha.jsonl"
    assert alpha.files.content(mine.id).read() == data


def worker_environ(server: ServerProcess) -> dict[str, str] | None:
    """The environment of the server's training worker, if one runs now."""
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
            if int(stat.rsplit(")", 1)[1].split()[1]) == server.process.pid and b"synthd.training.worker" in cmdline:
                entries = (proc / "environ").read_bytes().split(b"\0")
                return dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)
        except (OSError, ValueError, IndexError):
            continue
    return None


@pytest.fixture(scope="module")
def trained(server: ServerProcess, keys: dict[str, str]):
    """A tiny SFT job of project alpha, run to the end; with its worker's environment, seen while it ran."""
    alpha = sdk(server, keys["alpha"])
    data = alpha.files.create(file=("facts.jsonl", (DEMO_DATA / "sft_facts.jsonl").read_bytes()), purpose="fine-tune")
    job = alpha.fine_tuning.jobs.create(
        model=MODEL,
        training_file=data.id,
        suffix="alpha",
        seed=1,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}},
    )
    environ, deadline = None, time.monotonic() + 900
    while (job := alpha.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job.status}"
        environ = environ or worker_environ(server)
        time.sleep(0.1)
    assert job.status == "succeeded", job.error
    return job, environ


def test_training_workers_get_no_secrets(trained) -> None:
    _, environ = trained
    assert environ is not None, "the training worker was never seen running"
    assert environ["SYNTHD_HOME"] and environ.get("PATH")
    assert not set(SERVER_SECRETS) & set(environ)
    assert "SYNTHD_API_KEY" not in environ


def test_jobs_and_their_models_belong_to_the_project(server: ServerProcess, keys: dict[str, str], trained) -> None:
    job, _ = trained
    alpha, beta, admin = sdk(server, keys["alpha"]), sdk(server, keys["beta"]), sdk(server, keys["admin"])
    model = job.fine_tuned_model
    assert job.id in [j.id for j in alpha.fine_tuning.jobs.list().data]
    assert job.id not in [j.id for j in beta.fine_tuning.jobs.list().data]
    for call in (
        beta.fine_tuning.jobs.retrieve,
        beta.fine_tuning.jobs.cancel,
        beta.fine_tuning.jobs.list_events,
        beta.fine_tuning.jobs.checkpoints.list,
    ):
        with pytest.raises(openai.NotFoundError):
            call(job.id)
    assert model in [m.id for m in alpha.models.list().data]
    assert model not in [m.id for m in beta.models.list().data]
    assert MODEL in [m.id for m in beta.models.list().data]  # base models are everyone's
    with pytest.raises(openai.NotFoundError) as info:
        beta.chat.completions.create(model=model, max_tokens=2, messages=HI)
    assert info.value.code == "model_not_found"
    for call in (beta.models.retrieve, beta.models.delete):
        with pytest.raises(openai.NotFoundError):
            call(model)
    for path in (f"/warmup/{model}", f"/warmup/status/{model}"):
        hidden = httpx.request(
            "POST" if "status" not in path else "GET",
            server.root_url + path,
            headers={"Authorization": f"Bearer {keys['beta']}"},
        )
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"
    assert alpha.chat.completions.create(model=model, max_tokens=2, messages=HI).model == model
    assert job.id in [j.id for j in admin.fine_tuning.jobs.list().data]
    assert model in [m.id for m in admin.models.list().data]
    assert admin.fine_tuning.jobs.retrieve(job.id).fine_tuned_model == model
    server_key = sdk(server, SERVER_SECRETS["SYNTH_API_KEY"])  # --api-key / SYNTH_API_KEY: an admin key
    assert model in [m.id for m in server_key.models.list().data]


def test_rows_created_before_keys_are_visible_to_admins_only(
    server: ServerProcess, keys: dict[str, str], home: Path
) -> None:
    admin = sdk(server, keys["admin"])
    legacy = admin.files.create(file=("legacy.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    with sqlite3.connect(home / "synthd.db") as db:
        assert db.execute("SELECT project FROM files WHERE id = ?", (legacy.id,)).fetchone() == ("ops",)
        db.execute("UPDATE files SET project = NULL WHERE id = ?", (legacy.id,))
    assert admin.files.retrieve(legacy.id).id == legacy.id
    with pytest.raises(openai.NotFoundError):
        sdk(server, keys["alpha"]).files.retrieve(legacy.id)


def test_request_rate_limit(server: ServerProcess, keys: dict[str, str]) -> None:
    client = sdk(server, keys["rpm"])
    first = client.models.with_raw_response.list()
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert client.models.with_raw_response.list().headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as info:
        client.models.list()
    assert info.value.code == "rate_limit_exceeded"
    headers = info.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit-requests" not in sdk(server, keys["beta"]).models.with_raw_response.list().headers


def test_token_rate_limit(server: ServerProcess, keys: dict[str, str]) -> None:
    client = sdk(server, keys["tpm"])
    raw = client.chat.completions.with_raw_response.create(model=MODEL, max_tokens=5, messages=HI)
    assert raw.headers["x-ratelimit-limit-tokens"] == "20" and raw.headers["x-ratelimit-remaining-tokens"] == "20"
    assert raw.parse().usage.total_tokens > 20
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=MODEL, max_tokens=5, messages=HI)
    assert info.value.code == "rate_limit_exceeded" and "tokens" in info.value.message
    assert info.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
