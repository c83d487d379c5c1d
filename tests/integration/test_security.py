"""Request limits before work (issue 13, item 1): the key is checked before a byte of the body is
read, bodies are capped while they are read, the Host header must name the server, and `synthd
serve` refuses to listen beyond loopback without a key. Raw sockets show what the server answered
while the rest of a declared body was never sent."""

import http.client
import select
import socket
import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from synthd.server_process import ServerProcess, free_port
from tests.support.cli import synthd
from tests.support.server import MODEL, server_env

ADMIN_KEY = "admin-key-for-tests"
BODY_CAP = 1024 * 1024
FILE_CAP = 200_000
BODY_CHUNK = b'{"model":"' + b"x" * 65_000 + b'",'


@pytest.fixture(scope="module")
def keyed(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("security")
    env = server_env(home, models_dir, SYNTHD_MAX_BODY_BYTES=str(BODY_CAP), SYNTHD_MAX_FILE_BYTES=str(FILE_CAP))
    with ServerProcess(["--api-key", ADMIN_KEY], log_path=home / "server.log", env=env, api_key=ADMIN_KEY) as server:
        yield server


def request_head(server: ServerProcess, path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def send_part_then_read(server: ServerProcess, head: bytes, part: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send the head and only ``part`` of the body, then wait for the answer: a server that reads
    the whole body before answering never answers (the socket times out)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head + part)
        return read_response(sock)


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def stream_until_answered(server: ServerProcess, head: bytes, chunks: int) -> tuple[int, dict[str, str], bytes, int]:
    """Send a chunked body chunk by chunk, stopping as soon as the server answers; returns the answer
    and how many chunks were sent (``chunks`` means all of them, and the body's end)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head)
        while sent < chunks and not select.select([sock], [], [], 0.02)[0]:
            try:
                sock.sendall(chunked(BODY_CHUNK))
            except OSError:  # the server closed after answering
                break
            sent += 1
        if sent == chunks:
            sock.sendall(b"0\r\n\r\n")
        return *read_response(sock), sent


def assert_envelope(body: bytes, code: str) -> None:
    error = httpx.Response(200, content=body).json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error


def test_missing_or_wrong_key_refused_before_the_body_is_read(keyed: ServerProcess) -> None:
    declared = 64 * len(BODY_CHUNK)  # under the cap: only the key is wrong
    for auth in ([], [f"Authorization: Bearer {ADMIN_KEY}-wrong"]):
        head = request_head(keyed, "/v1/chat/completions", f"Content-Length: {declared}", *auth)
        status, headers, body = send_part_then_read(keyed, head, BODY_CHUNK)
        assert status == 401 and headers["connection"] == "close" and headers["www-authenticate"] == "Bearer"
        assert_envelope(body, "invalid_api_key")
    head = request_head(keyed, "/v1/files", "Transfer-Encoding: chunked")
    status, _, body, sent = stream_until_answered(keyed, head, chunks=400)
    assert status == 401 and sent < 400
    assert_envelope(body, "invalid_api_key")


def test_declared_body_over_the_cap_refused_at_once(keyed: ServerProcess) -> None:
    auth = f"Authorization: Bearer {ADMIN_KEY}"
    status, headers, body = send_part_then_read(
        keyed, request_head(keyed, "/v1/chat/completions", auth, f"Content-Length: {BODY_CAP + 1}"), b""
    )
    assert status == 413 and headers["connection"] == "close"
    assert_envelope(body, "request_too_large")
    upload_cap = FILE_CAP + 1024 * 1024  # the file limit plus room for the multipart envelope
    status, _, body = send_part_then_read(
        keyed, request_head(keyed, "/v1/files", auth, f"Content-Length: {upload_cap + 1}"), b""
    )
    assert status == 413
    assert_envelope(body, "request_too_large")


def test_streamed_body_over_the_cap_refused_while_reading(keyed: ServerProcess) -> None:
    head = request_head(
        keyed, "/v1/chat/completions", f"Authorization: Bearer {ADMIN_KEY}", "Transfer-Encoding: chunked"
    )
    status, headers, body, sent = stream_until_answered(keyed, head, chunks=400)
    assert status == 413 and headers["connection"] == "close"
    assert_envelope(body, "request_too_large")
    assert BODY_CAP // len(BODY_CHUNK) <= sent < 400
    sdk = openai.OpenAI(base_url=keyed.base_url, api_key=ADMIN_KEY, max_retries=0)
    assert sdk.chat.completions.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}])


def test_host_header_must_name_the_server(keyed: ServerProcess) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for host in ("evil.example", f"attacker.test:{keyed.port}"):
        refused = httpx.get(keyed.base_url + "/models", headers={**auth, "Host": host})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_host"
        assert httpx.get(keyed.root_url + "/health", headers={"Host": host}).status_code == 400
    for host in (f"localhost:{keyed.port}", f"127.0.0.1:{keyed.port}"):
        assert httpx.get(keyed.base_url + "/models", headers={**auth, "Host": host}).status_code == 200


def test_every_route_but_health_and_console_pages_needs_a_key(keyed: ServerProcess) -> None:
    for path in ("/ready", "/metrics", "/docs", "/openapi.json", "/v1/gpus", "/warmup/status/" + MODEL, "/nowhere"):
        response = httpx.get(keyed.root_url + path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(keyed.root_url + "/health").status_code == 200
    for page in ("/models", "/fine-tuning/ftjob-x", "/static/console.css"):  # the console's shells carry no data
        assert httpx.get(keyed.root_url + page).status_code == 200, page
    assert httpx.post(keyed.root_url + "/console/validate-file").status_code == 401
    schema = httpx.get(keyed.root_url + "/openapi.json", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert schema["security"] == [{"bearerAuth": []}] and schema["paths"]["/health"]["get"]["security"] == []


def serve_cli(home: Path, models_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return synthd("serve", "--port", str(free_port()), *args, env=server_env(home, models_dir), timeout_s=120)


def test_non_loopback_bind_refused_without_a_key(models_dir: Path, tmp_path: Path) -> None:
    for host in ("0.0.0.0", "192.0.2.10", "::"):
        result = serve_cli(tmp_path, models_dir, "--host", host)
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert f"refusing to serve on {host} without an API key" in line and "--insecure-no-auth" in line


def test_empty_api_key_is_an_error(models_dir: Path, tmp_path: Path) -> None:
    result = serve_cli(tmp_path, models_dir, "--api-key", "")
    assert result.returncode == 1 and "--api-key is empty" in result.stderr
    (tmp_path / "empty.key").write_text("\n")
    result = serve_cli(tmp_path, models_dir, "--api-key-file", str(tmp_path / "empty.key"))
    assert result.returncode == 1 and "is empty" in result.stderr
    result = serve_cli(tmp_path, models_dir, "--api-key", "a", "--api-key-file", str(tmp_path / "empty.key"))
    assert result.returncode == 1 and "not both" in result.stderr
    result = serve_cli(tmp_path, models_dir, "--allowed-hosts", "a*b")
    assert result.returncode == 1 and "Invalid allowed host 'a*b'" in result.stderr


def test_api_key_file_and_public_metrics(models_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "admin.key"
    key_file.write_text("key-from-a-file\n")
    with ServerProcess(
        ["--api-key-file", str(key_file), "--public-metrics"],
        log_path=tmp_path / "server.log",
        env=server_env(tmp_path, models_dir),
        api_key="key-from-a-file",
    ) as server:
        assert httpx.get(server.base_url + "/models").status_code == 401
        assert (
            httpx.get(server.base_url + "/models", headers={"Authorization": "Bearer key-from-a-file"}).status_code
            == 200
        )
        assert httpx.get(server.root_url + "/metrics").status_code == 200
        assert httpx.get(server.root_url + "/ready").status_code == 401
