"""synthd on a real Ray cluster of three local nodes that declare GPUs they do not have (a head with
CPU only, ``h100-node`` with 8 ``H100``, ``a100-node`` with 2 ``A100``): placement decisions,
streaming from replica actors, autoscaling, lost replicas, fine-tuning jobs where the GPUs are.

Models run on the CPU there; what is checked is where synthd and Ray put them. One cluster and one
server for the module (Ray nodes cost memory); Ray's memory monitor is off for these nodes because
the machine is shared with other test runs and it would kill their workers.
"""

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import psutil
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: 'make setup' installs it (pip install -e '.[test,ray]')")

from ray._private.state import available_resources_per_node
from ray.cluster_utils import Cluster

from synthd.cluster.inventory import NODE_NAME_LABEL
from synthd.cluster.replica import ADAPTER_CACHE
from synthd.demo_data import DEMO_DATA
from synthd.server_process import ServerProcess
from tests.support.cli import synthd
from tests.support.server import MODEL, metric, server_env

COPY = "smol-copy"
MB = 1024**2
NODE = {"object_store_memory": 80 * MB, "memory": 4 * 1024**3, "num_cpus": 2}
IDLE_TIMEOUT_S = 5
NODE_SECRET = ("SYNTHD_TEST_NODE_TOKEN", "node-secret")
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class LocalCluster:
    """A ``ray.cluster_utils.Cluster`` and its worker nodes by name."""

    cluster: Cluster
    nodes: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self, name: str, **resources) -> None:
        """Start a node labelled ``name`` declaring ``resources``."""
        self.nodes[name] = self.cluster.add_node(labels={NODE_NAME_LABEL: name}, **NODE, **resources)

    def remove(self, name: str) -> None:
        """Stop a node's processes, as if the machine went away."""
        self.cluster.remove_node(self.nodes.pop(name))


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalCluster]:
    """Head (CPU), ``h100-node`` (8 x H100), ``a100-node`` (2 x A100), each with a secret in its
    environment (``NODE_SECRET``); this process joins as a driver to inspect and kill actors and nodes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_memory_monitor_refresh_ms", "0")
        patch.setenv(*NODE_SECRET)
        local = LocalCluster(
            Cluster(
                initialize_head=True,
                head_node_args={"include_dashboard": False, "labels": {NODE_NAME_LABEL: "head"}, **NODE},
            )
        )
        try:
            local.add("h100-node", num_gpus=8, resources={"accelerator_type:H100": 1})
            local.add("a100-node", num_gpus=2, resources={"accelerator_type:A100": 1})
            ray.init(address=local.address, logging_level="WARNING")
            yield local
        finally:
            ray.shutdown()
            local.cluster.shutdown()


@pytest.fixture(scope="module")
def models(models_dir: Path, tmp_path_factory) -> Path:
    """The embedded model and ``smol-copy``, a second id for the same weights (symlinks)."""
    directory = tmp_path_factory.mktemp("cluster-models")
    (directory / MODEL).symlink_to(models_dir / MODEL)
    (directory / COPY).mkdir()
    for item in (models_dir / MODEL).iterdir():
        (directory / COPY / item.name).symlink_to(item)
    return directory


@pytest.fixture(scope="module")
def server(ray_cluster: LocalCluster, models: Path, home: Path) -> Iterator[ServerProcess]:
    """``synthd serve --ray-address`` with up to 2 replicas per model and GPU type (one request in
    flight each), replicas unloaded after 5 idle seconds and one adapter resident per replica."""
    env = server_env(
        home,
        models,
        SYNTHD_MAX_REPLICAS="2",
        SYNTHD_TARGET_ONGOING_REQUESTS="1",
        SYNTHD_MODEL_IDLE_TIMEOUT_S=str(IDLE_TIMEOUT_S),
        SYNTHD_MAX_LOADED_MODELS="6",
        SYNTHD_MAX_LOADED_ADAPTERS="1",
    )
    with ServerProcess(
        ["--ray-address", ray_cluster.address, "--log-level", "info"],
        log_path=home / "server.log",
        env=env,
        ready_timeout_s=300,
    ) as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)


def chat(server: ServerProcess, preference: str | None, model: str = MODEL, **extra) -> httpx.Response:
    body = {
        "model": model,
        "max_tokens": 8,
        "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        **extra,
    }
    if preference is not None:
        body["gpu_preference"] = preference
    return httpx.post(server.base_url + "/chat/completions", json=body, timeout=300)


def wait_until(check: Callable[[], object], timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.3)
    raise AssertionError(f"not {what} after {timeout_s:.0f}s")


def replicas(server: ServerProcess, model: str = MODEL) -> list[str]:
    return httpx.get(server.base_url + "/gpus").json()["replicas"].get(model, [])


def actors(prefix: str) -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))


def free_gpus(node: str) -> int:
    ids = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get(NODE_NAME_LABEL) == node}
    return int(sum(v.get("GPU", 0) for k, v in available_resources_per_node().items() if k in ids))


def test_inventory_is_the_clusters_nodes(server: ServerProcess, ray_cluster: LocalCluster) -> None:
    report = httpx.get(server.base_url + "/gpus").json()
    nodes = {(n["node"], n["type"]): n for n in report["nodes"]}
    assert nodes["h100-node", "H100"]["devices"] == 8 and nodes["a100-node", "A100-40GB"]["devices"] == 2
    assert nodes["head", "cpu"]["devices"] == 1
    keys = [d["key"] for d in report["inventory"] if d["node"] == "h100-node"]
    assert keys == [f"h100-node/H100#{i}" for i in range(8)]
    assert not any(d["remote"] for d in report["inventory"])
    cli = synthd("gpus", "--json", "--ray-address", ray_cluster.address, timeout_s=120)
    assert cli.returncode == 0, cli.stderr
    listed = {(n["node"], n["type"]): n for n in json.loads(cli.stdout)["nodes"]}
    assert listed["a100-node", "A100-40GB"]["devices"] == 2 and listed["h100-node", "H100"]["devices"] == 8
    assert listed["head", "cpu"]["free"] is None  # the CPU is shared, not counted out


def test_auto_takes_the_cheapest_option_the_cpu_head(server: ServerProcess) -> None:
    """With no replica yet (an existing one of any placement would serve ``auto``)."""
    reply = chat(server, None)
    assert reply.status_code == 200 and reply.headers["X-GPU-Selected"] == "cpu@head"
    assert "cpu@head" in reply.json()["system_fingerprint"]


def test_h100_8_runs_on_the_h100_node_with_all_eight(server: ServerProcess, client: openai.OpenAI) -> None:
    reply = chat(server, "H100:8")
    assert reply.status_code == 200, reply.text
    where = "H100:8@h100-node/0,1,2,3,4,5,6,7"
    assert reply.headers["X-GPU-Selected"] == where
    assert where in reply.json()["system_fingerprint"] and reply.json()["choices"][0]["message"]["content"]
    assert free_gpus("h100-node") == 0  # Ray itself holds all eight for the replica's placement group
    node = {n["node"]: n for n in httpx.get(server.base_url + "/gpus").json()["nodes"]}["h100-node"]
    assert node["free"] == 0 and node["in_use_by"] == [MODEL]
    stream = client.chat.completions.create(
        model=MODEL,
        max_tokens=8,
        stream=True,
        extra_headers={"X-GPU-Preference": "H100:8"},
        messages=[{"role": "user", "content": "Say hi"}],
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert where in chunks[0].system_fingerprint


def test_specs_the_cluster_cannot_hold_are_refused(server: ServerProcess) -> None:
    split = chat(server, "A100:4")
    assert split.status_code == 409 and split.json()["error"]["code"] == "gpu_unavailable"
    assert "the most on one node is 2" in split.json()["error"]["message"]
    absent = chat(server, "B200")
    assert absent.status_code == 409 and "h100-node: 8x H100" not in absent.json()["error"]["message"]
    assert chat(server, "A100:3").status_code == 400  # not a valid count


def test_warmup_creates_a_replica_on_the_named_node(server: ServerProcess) -> None:
    root = server.root_url
    started = httpx.post(f"{root}/warmup/{COPY}", json={"gpu_preference": "A100:2"}, timeout=60).json()
    assert started["status"] == "warming" and started["gpu"] == "A100-40GB:2" and started["node"] == "a100-node"
    seen = set()

    def warmed() -> dict | None:
        status = httpx.get(f"{root}/warmup/status/{COPY}").json()
        seen.add(status["status"])
        return status if status["status"] == "warmed" else None

    status = wait_until(warmed, 180, "warmed")
    assert seen <= {"warming", "warmed"} and (status["gpu"], status["node"]) == ("A100-40GB:2", "a100-node")
    elsewhere = httpx.get(f"{root}/warmup/status/{COPY}", headers={"X-GPU-Preference": "H100:8"}).json()
    assert elsewhere["status"] == "cold"  # the status of the placements the header names
    assert replicas(server, COPY) == ["A100-40GB:2@a100-node/0,1 (warmed)"]
    # the base model's H100:8 replica of an earlier test holds the H100s until its idle timeout
    wait_until(lambda: free_gpus("h100-node") == 8, 90, "the H100s free")
    other = httpx.post(f"{root}/warmup/{COPY}", json={"gpu_preference": "H100:8"}, timeout=60).json()
    assert (other["status"], other["gpu"], other["node"]) == ("warming", "H100:8", "h100-node")  # not the A100 one
    wait_until(lambda: not replicas(server, COPY), 90, "unloaded after the idle timeout")
    assert wait_until(lambda: free_gpus("a100-node") == 2 and free_gpus("h100-node") == 8, 30, "freed on Ray")


def test_fallback_when_the_h100s_are_busy(server: ServerProcess) -> None:
    assert chat(server, "H100:8").headers["X-GPU-Selected"].startswith("H100:8@h100-node")
    fallback = chat(server, "H100:8,A100:2", model=COPY)  # the H100s hold the other model now
    assert fallback.status_code == 200 and fallback.headers["X-GPU-Selected"] == "A100-40GB:2@a100-node/0,1"
    busy = chat(server, "A100:2")  # serving never shares a GPU: both A100s hold smol-copy
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "gpu_busy" and "Retry-After" in busy.headers


def test_scale_out_under_load_then_back_to_zero(server: ServerProcess) -> None:
    """Three long streams on ``H100`` (one GPU): the group grows to its maximum of 2 replicas, a new
    request goes to the idle one, closing the streams aborts them on the replica, and once idle for
    the timeout both replicas go (and Ray gets every H100 back)."""
    wait_until(lambda: free_gpus("h100-node") == 8, 60, "H100s free from the previous test")
    opened, release = threading.Semaphore(0), threading.Event()
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 4000,
        "ignore_eos": True,
        "gpu_preference": "H100",
        "messages": [{"role": "user", "content": "Count to ten thousand."}],
    }

    def stream() -> str:
        with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=300) as response:
            lines = response.iter_lines()  # held: dropping the iterator would close the connection
            while '"content":"' not in (line := next(lines)) or '"content":""' in line:
                pass
            opened.release()
            release.wait(240)
            return response.headers["X-GPU-Selected"]  # leaving closes the stream: the client is gone

    with ThreadPoolExecutor(3) as pool:
        streams = [pool.submit(stream) for _ in range(3)]
        for _ in streams:
            assert opened.acquire(timeout=240), "a stream produced no token"
        group = wait_until(
            lambda: len(found := replicas(server)) == 2 and all("(warmed)" in r for r in found) and found,
            240,
            "scaled out to 2 warmed replicas",
        )
        assert all(r.startswith("H100@h100-node/") for r in group) and len(set(group)) == 2
        wait_until(
            lambda: metric(server, "synthd:num_requests_running", model_name=MODEL) == 3,
            30,
            "3 running on the replicas",
        )
        idle = chat(server, "H100")  # the least loaded replica takes it
        assert idle.status_code == 200
        release.set()
        served = {s.result() for s in streams}
    assert {*served, idle.headers["X-GPU-Selected"]} == {r.removesuffix(" (warmed)") for r in group}
    wait_until(
        lambda: metric(server, "synthd:num_requests_running", model_name=MODEL) == 0, 30, "aborted on the replicas"
    )
    wait_until(lambda: not replicas(server), 90, "scaled to zero")
    assert wait_until(lambda: free_gpus("h100-node") == 8, 30, "every H100 back with Ray")
    assert wait_until(lambda: not actors("synthd-replica-"), 30, "no replica actor left")


def test_killed_replica_fails_its_stream_and_the_next_request_gets_a_new_one(server: ServerProcess) -> None:
    prefix = "synthd-replica-SmolLM2-135M-Instruct-H100-2-h100-node"
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 2000,
        "ignore_eos": True,
        "gpu_preference": "H100:2",
        "messages": [{"role": "user", "content": "Tell a long story."}],
    }
    events = []
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=120) as response:
        for line in filter(None, response.iter_lines()):
            events.append(line)
            if len(events) == 3:  # the role chunk and two tokens: the replica is mid-stream
                [killed] = actors(prefix)
                ray.kill(ray.get_actor(killed, namespace="synthd"))
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "replica_lost" and "H100:2@h100-node" in error["message"]
    again = chat(server, "H100:2")
    assert again.status_code == 200 and again.headers["X-GPU-Selected"].startswith("H100:2@h100-node/")
    assert actors(prefix) and actors(prefix) != [killed]


def upload(client: openai.OpenAI, name: str) -> str:
    path = DEMO_DATA / name
    return client.files.create(file=(path.name, path.read_bytes()), purpose="fine-tune").id


def events_of(client: openai.OpenAI, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data]


def wait_for_job(client: openai.OpenAI, job_id: str, timeout_s: float = 420):
    return wait_until(
        lambda: (job := client.fine_tuning.jobs.retrieve(job_id)).status in TERMINAL and job,
        timeout_s,
        f"job {job_id} finished",
    )


def test_sft_job_runs_on_the_a100_node_and_its_model_is_served(
    server: ServerProcess, client: openai.OpenAI, home: Path
) -> None:
    wait_until(lambda: free_gpus("a100-node") == 2, 60, "A100s free from the previous tests")
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=upload(client, "sft_facts.jsonl"),
        suffix="cluster",
        seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}},
        extra_body={"gpu_preference": "A100:2"},
    )
    assert job.gpu == "A100-40GB:2"
    running = "Training worker running on Ray node a100-node (GPUs 0, 1)"
    wait_until(lambda: running in events_of(client, job.id), 240, "running on the A100 node")
    if client.fine_tuning.jobs.retrieve(job.id).status == "running":
        busy = chat(server, "A100:2")  # training holds both A100s: serving may not share them
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "gpu_busy"
    done = wait_for_job(client, job.id)
    assert done.status == "succeeded", done.error
    assert wait_until(lambda: free_gpus("a100-node") == 2, 30, "the job's A100s back with Ray")
    reply = chat(server, "A100:2", model=done.fine_tuned_model)
    assert reply.status_code == 200 and reply.headers["X-GPU-Selected"] == "A100-40GB:2@a100-node/0,1"
    assert reply.json()["model"] == done.fine_tuned_model
    status = wait_until(
        lambda: (
            (found := httpx.get(f"{server.root_url}/warmup/status/{done.fine_tuned_model}").json())["status"]
            == "warmed"
            and found
        ),
        30,
        "the adapter resident on the replica",
    )
    assert status["node"] == "a100-node"
    shipped = (home / "adapters" / job.id / "adapter_config.json").read_bytes()
    assert any(
        (d / "adapter_config.json").read_bytes() == shipped
        for d in ADAPTER_CACHE.iterdir()
        if (d / "adapter_config.json").is_file()
    )  # reached the replica through Ray's object store


def test_cancel_ends_the_ray_work(server: ServerProcess, client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=upload(client, "sft_facts.jsonl"),
        extra_body={"gpu_preference": "H100"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}},
    )
    wait_until(
        lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id, limit=5).data),
        300,
        "training steps",
    )
    [name] = actors(f"synthd-job-{job.id}")
    assert wait_until(lambda: free_gpus("h100-node") == 7, 30, "one H100 held by the job")
    _, gpu_ids, actor_pid = ray.get(ray.get_actor(name, namespace="synthd").where.remote(), timeout=30)
    [worker] = psutil.Process(actor_pid).children()
    environ = worker.environ()
    assert environ["CUDA_VISIBLE_DEVICES"] == str(gpu_ids[0]) and environ["SYNTHD_HOME"]
    assert NODE_SECRET[0] not in environ  # the node's secrets stay out of the worker, as on one machine
    client.fine_tuning.jobs.cancel(job.id)
    assert wait_for_job(client, job.id, timeout_s=60).status == "cancelled"
    wait_until(lambda: not actors(f"synthd-job-{job.id}"), 30, "the job's actor gone")
    assert wait_until(lambda: free_gpus("h100-node") == 8, 30, "its H100 back with Ray")


def test_node_lost_mid_job_resumes_on_another_node(ray_cluster: LocalCluster, client: openai.OpenAI) -> None:
    ray_cluster.add("a100-spare", num_gpus=2, resources={"accelerator_type:A100": 1})
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=upload(client, "sft_facts.jsonl"),
        extra_body={"gpu_preference": "A100:2"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 1}}},
    )
    first = wait_until(
        lambda: next((m for m in events_of(client, job.id) if "running on Ray node" in m), None), 240, "running"
    )
    lost = "a100-node" if "a100-node" in first else "a100-spare"
    other = "a100-spare" if lost == "a100-node" else "a100-node"
    wait_until(
        lambda: any(m.startswith("Checkpoint saved at step") for m in events_of(client, job.id)), 300, "a checkpoint"
    )
    ray_cluster.remove(lost)
    done = wait_for_job(client, job.id)
    messages = events_of(client, job.id)
    assert done.status == "succeeded", (done.error, messages)
    assert any(m.startswith(f"Node {lost} left the Ray cluster; resuming from checkpoint-") for m in messages)
    assert any(m.startswith(f"Training worker running on Ray node {other}") for m in messages)


def test_a_replica_keeps_its_adapters_least_recently_used_up_to_the_cap(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    """Two fine-tunes (from the jobs above) on one H100 replica holding one adapter at a time."""
    tuned = sorted(j.fine_tuned_model for j in client.fine_tuning.jobs.list(limit=50).data if j.status == "succeeded")
    assert len(tuned) == 2

    def status(model: str) -> dict:
        return httpx.get(f"{server.root_url}/warmup/status/{model}").json()

    for model in (*tuned, tuned[0]):
        reply = chat(server, "H100", model=model)
        assert reply.status_code == 200 and reply.json()["model"] == model
        assert reply.headers["X-GPU-Selected"].startswith("H100@h100-node/")
        other = tuned[1] if model == tuned[0] else tuned[0]
        wait_until(
            lambda model=model, other=other: (
                (status(model)["status"], status(model)["node"]) == ("warmed", "h100-node")
                and status(other)["status"] == "cold"
            ),
            30,
            f"only {model} resident",
        )
    assert len(replicas(server)) == 1


def test_node_lost_before_a_checkpoint_fails_the_job_with_the_reason(
    ray_cluster: LocalCluster, client: openai.OpenAI
) -> None:
    [node] = [name for name in ray_cluster.nodes if name.startswith("a100-")]  # the one the last test left
    wait_until(lambda: free_gpus(node) == 2, 60, "its A100s free from the last job")
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=upload(client, "sft_facts.jsonl"),
        extra_body={"gpu_preference": "A100:2"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 5}}},
    )
    wait_until(
        lambda: any(m.startswith(f"Training worker running on Ray node {node}") for m in events_of(client, job.id)),
        240,
        "running",
    )
    ray_cluster.remove(node)  # the worker is still loading: no checkpoint yet
    done = wait_for_job(client, job.id, timeout_s=120)
    assert done.status == "failed" and not client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert (
        f"node {node} running the job left the Ray cluster before the job saved its first checkpoint"
        in done.error.message
    )
