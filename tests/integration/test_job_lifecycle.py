"""Fine-tuning jobs under faults, with real processes: servers and workers killed with SIGKILL, a
second server on the same home, a failing checkpoint write, a worker flooding stderr, and the API
key checked before an upload's body is read."""

import os
import signal
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import openai

from synthd.demo_data import DEMO_DATA
from synthd.server_process import ServerProcess
from tests.support.jobs import ENDED, wait_for
from tests.support.server import MODEL, server_env

SMALL = b"".join((DEMO_DATA / "sft_facts.jsonl").read_bytes().splitlines(keepends=True)[:3])
"""Three examples: each optimizer step is small (these tests are about processes, not learning)."""


def start(home: Path, models_dir: Path, **env: str) -> ServerProcess:
    server = ServerProcess(log_path=home / "server.log", env=server_env(home, models_dir, **env))
    server.start()
    return server


def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def kill9(server: ServerProcess) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}/stat").is_file() and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    )


def worker_pid(home: Path, job_id: str, timeout_s: float = 300) -> int:
    """The running worker's pid, as the scheduler recorded it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sqlite3.connect(home / "synthd.db") as db:
            row = db.execute("SELECT worker_pid FROM fine_tuning_jobs WHERE id = ?", (job_id,)).fetchone()
        if row and row[0]:
            return int(row[0])
        time.sleep(0.2)
    raise AssertionError(f"no worker for {job_id}")


def wait_event(client: openai.OpenAI, job_id: str, text: str, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(text in e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data):
            return
        assert client.fine_tuning.jobs.retrieve(job_id).status not in ENDED, f"job ended before '{text}'"
        time.sleep(0.3)
    raise AssertionError(f"no event '{text}' for {job_id}")


def create(client: openai.OpenAI, epochs: int, checkpoints: int):
    """One optimizer step per epoch (the whole file in a batch)."""
    file_id = client.files.create(file=("facts.jsonl", SMALL), purpose="fine-tune").id
    return client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=file_id,
        seed=1,
        extra_body={"n_checkpoints": checkpoints},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": 3}}},
    )


def test_server_killed_mid_job_takes_its_worker_and_the_job_resumes(models_dir: Path, tmp_path: Path) -> None:
    server = start(tmp_path, models_dir)
    client = sdk(server)
    job = create(client, epochs=3, checkpoints=3)
    wait_event(client, job.id, "Checkpoint saved at step 1")
    worker = worker_pid(tmp_path, job.id)
    kill9(server)
    deadline = time.monotonic() + 30
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(worker), "the worker outlived its server"

    server = start(tmp_path, models_dir)
    try:
        client = sdk(server)
        done = wait_for(client, job.id)
        assert done.status == "succeeded" and done.error is None
        events = list(reversed(client.fine_tuning.jobs.list_events(job.id, limit=100).data))
        resumed = next(i for i, e in enumerate(events) if "resume from checkpoint-" in e.message)
        step = int(events[resumed].message.rsplit("-", 1)[1])
        later = [e.data["step"] for e in events[resumed:] if e.data and "train_loss" in e.data]
        assert step >= 1 and later[0] == step + 1 and later[-1] == 3, (step, later)
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id, limit=10).data
        assert [c.step_number for c in checkpoints] == [3, 2, 1]
        served = {m.id for m in client.models.list().data}
        assert {c.fine_tuned_model_checkpoint for c in checkpoints} | {done.fine_tuned_model} <= served
        assert not (tmp_path / "training" / job.id / "trainer").exists()
    finally:
        server.stop()


def slow_body(first: bytes, sent: threading.Event):
    yield first
    sent.set()
    while True:
        time.sleep(0.5)
        yield b"x" * 1024


def test_server_killed_during_upload_leaves_no_file(models_dir: Path, tmp_path: Path) -> None:
    server = start(tmp_path, models_dir)
    boundary = "synthdtestboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + b"x" * 200_000
    sent = threading.Event()

    def send() -> None:
        try:
            httpx.post(
                server.base_url + "/files",
                content=slow_body(head, sent),
                timeout=120,
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
        except httpx.HTTPError:
            pass

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    assert sent.wait(60)
    deadline = time.monotonic() + 30
    while not list((tmp_path / "files").glob(".part-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((tmp_path / "files").glob(".part-*")), "the upload never reached the disk"
    kill9(server)
    thread.join(30)
    server = start(tmp_path, models_dir)
    try:
        assert sdk(server).files.list().data == []
        assert list((tmp_path / "files").iterdir()) == []
    finally:
        server.stop()


def test_killed_worker_fails_its_job_with_the_reason(models_dir: Path, tmp_path: Path) -> None:
    server = start(tmp_path, models_dir)
    try:
        client = sdk(server)
        job = create(client, epochs=50, checkpoints=1)
        os.kill(worker_pid(tmp_path, job.id), signal.SIGKILL)
        done = wait_for(client, job.id, timeout_s=60)
        assert done.status == "failed" and done.error.code == "worker_crashed"
        assert "killed by signal SIGKILL" in done.error.message
        assert done.fine_tuned_model is None
        listed = [m.id for m in client.models.list().data]  # the server serves on, without the job's model
        assert MODEL in listed and not [m for m in listed if job.id in m]
    finally:
        server.stop()


def test_failed_checkpoint_write_fails_the_job_and_the_server_serves_on(models_dir: Path, tmp_path: Path) -> None:
    server = start(tmp_path, models_dir, SYNTHD_FAILPOINTS="checkpoint_write=enospc")
    try:
        client = sdk(server)
        job = create(client, epochs=1, checkpoints=1)
        done = wait_for(client, job.id)
        assert done.status == "failed" and done.error.code == "training_error"
        assert "No space left on device" in done.error.message
        assert not [m.id for m in client.models.list().data if job.id in m.id]
        reply = client.chat.completions.create(
            model=MODEL, max_tokens=2, temperature=0, messages=[{"role": "user", "content": "Hi"}]
        )
        assert reply.choices[0].message.content  # greedy: sampled, two tokens could decode to nothing
    finally:
        server.stop()


def test_worker_flooding_stderr_does_not_wedge_the_queue(models_dir: Path, tmp_path: Path) -> None:
    server = start(tmp_path, models_dir, SYNTHD_FAILPOINTS="worker_start=long_stderr_line")
    try:
        client = sdk(server)
        first, second = create(client, epochs=1, checkpoints=1), create(client, epochs=1, checkpoints=1)
        for job in (first, second):
            done = wait_for(client, job.id, timeout_s=120)
            assert done.status == "failed" and done.error.code == "worker_crashed"
            assert "exited with code 3" in done.error.message and "xxxx" in done.error.message
            assert len(done.error.message) < 1000
    finally:
        server.stop()


def test_second_server_on_the_same_home_never_takes_a_running_job(models_dir: Path, tmp_path: Path) -> None:
    first = start(tmp_path, models_dir)
    second = None
    try:
        client = sdk(first)
        running = create(client, epochs=50, checkpoints=1)
        wait_event(client, running.id, "Step 1/50")
        second = start(tmp_path, models_dir)
        other = sdk(second)
        later = create(other, epochs=1, checkpoints=1)
        time.sleep(3)  # several scheduler ticks of the second server
        assert other.fine_tuning.jobs.retrieve(running.id).status == "running"
        events = [e.message for e in other.fine_tuning.jobs.list_events(running.id, limit=100).data]
        assert not any("restarted" in m for m in events), events
        other.fine_tuning.jobs.cancel(running.id)  # through the second server, applied by the first
        done = wait_for(other, running.id)
        assert done.status == "cancelled" and done.error is None, done.error
        assert wait_for(other, later.id).status == "succeeded"
    finally:
        if second is not None:
            second.stop()
        first.stop()


def test_api_key_is_checked_before_an_upload_body_is_read(models_dir: Path, tmp_path: Path) -> None:
    server = start(tmp_path, models_dir, SYNTHD_API_KEY="secret-key")
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
            )
            reply = sock.recv(4096)  # answered without the 100 MB body ever being sent
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
        assert not list((tmp_path / "files").glob("*"))
    finally:
        server.stop()
