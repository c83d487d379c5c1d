"""``synthd demo --cluster`` (what ``make demo-cluster`` runs): the seed's story on a Ray cluster of
three local nodes that declare GPUs (a CPU head, ``h100-node`` with 8 H100, ``a100-node`` with 2
A100), printing which node did each step: the cluster's inventory, a warmup on ``A100:2``, a chat on
``H100:8``, a fallback list, a refused spec, an SFT job on the A100 node, and its ``ft:`` model
served there.

The nodes are ``ray.cluster_utils.Cluster`` nodes (each the processes ``ray start`` would run),
started and stopped by this command; models run on the CPU, since the GPUs are only declared."""

import json
import os
import shutil
import time

import httpx
from rich.console import Console
from rich.table import Table

from synthd.cli.demo import MODEL, Demo, DemoError, pull_model
from synthd.config import get_settings
from synthd.demo_data import DEMO_DATA
from synthd.server_process import ServerProcess, ServerStartError

NODES = (("h100-node", 8, "H100"), ("a100-node", 2, "A100"))
NODE_LABEL = "synthd.io/node-name"
SFT_HYPERPARAMETERS = {"n_epochs": 6, "batch_size": 5, "learning_rate_multiplier": 10}
IDLE_TIMEOUT_S = 10


class ClusterDemo(Demo):
    """The cluster steps, on top of ``Demo``'s step runner and summary."""

    def nodes(self) -> tuple[bool, str]:
        report = httpx.get(f"{self.server.base_url}/gpus").json()
        table = Table("node", "type", "devices", "free", "in use by", title="GET /v1/gpus")
        for node in report["nodes"]:
            table.add_row(
                node["node"], node["type"], str(node["devices"]), str(node["free"]), ", ".join(node["in_use_by"])
            )
        self.console.print(table)
        names = {n["node"] for n in report["nodes"]}
        return {"head", "h100-node", "a100-node"} <= names, f"{len(names)} nodes: {', '.join(sorted(names))}"

    def warmup_a100(self) -> tuple[bool, str]:
        root = self.server.root_url
        started = httpx.post(f"{root}/warmup/{MODEL}", json={"gpu_preference": "A100:2"}, timeout=60).json()
        self.console.print(f"  POST /warmup/{MODEL} {{gpu_preference: A100:2}} → {started}")
        on_a100 = {"X-GPU-Preference": "A100:2"}
        while (status := httpx.get(f"{root}/warmup/status/{MODEL}", headers=on_a100).json())["status"] == "warming":
            time.sleep(0.3)
        self.console.print(f"  GET /warmup/status (X-GPU-Preference: A100:2) → {status}")
        return status["status"] == "warmed", f"{status['status']} on {status['gpu']} at node {status['node']}"

    def chat_on(self, preference: str) -> tuple[bool, str]:
        raw = self.client.chat.completions.with_raw_response.create(
            model=MODEL,
            temperature=0,
            max_tokens=24,
            extra_body={"gpu_preference": preference},
            messages=[{"role": "user", "content": "What is the capital of France?"}],
        )
        reply, selected = raw.parse(), raw.headers.get("x-gpu-selected")
        self.console.print(
            f"  answer: {reply.choices[0].message.content!r}\n  X-GPU-Selected: {selected}\n"
            f"  system_fingerprint: {reply.system_fingerprint}"
        )
        return "Paris" in (reply.choices[0].message.content or ""), f"gpu_preference={preference} ran on {selected}"

    def refused(self, preference: str) -> tuple[bool, str]:
        answer = httpx.post(
            f"{self.server.base_url}/chat/completions",
            timeout=60,
            json={
                "model": MODEL,
                "max_tokens": 4,
                "gpu_preference": preference,
                "messages": [{"role": "user", "content": "Hi"}],
            },
        )
        error = answer.json().get("error", {})
        self.console.print(
            f"  gpu_preference={preference} → {answer.status_code} {error.get('code')}: {error.get('message')}"
        )
        return answer.status_code == 409, f"refused with {answer.status_code} {error.get('code')}"

    def sft_on_a100(self) -> tuple[bool, str]:
        path = DEMO_DATA / "sft_facts.jsonl"
        uploaded = self.client.files.create(file=(path.name, path.read_bytes()), purpose="fine-tune")
        job = self.client.fine_tuning.jobs.create(
            model=MODEL,
            training_file=uploaded.id,
            suffix="cluster",
            seed=7,
            extra_body={"gpu_preference": "A100:2"},
            method={"type": "supervised", "supervised": {"hyperparameters": SFT_HYPERPARAMETERS}},
        )
        self.console.print(
            f"  job {job.id} placed on {job.gpu}; the A100s are free once the warm replica has "
            f"been idle {IDLE_TIMEOUT_S}s"
        )
        shown: set[str] = set()
        while (job := self.client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            for event in reversed(self.client.fine_tuning.jobs.list_events(job.id, limit=20).data):
                if event.id not in shown:
                    shown.add(event.id)
                    self.console.print(f"  event: {event.message}", highlight=False)
            time.sleep(1)
        events = [e.message for e in self.client.fine_tuning.jobs.list_events(job.id, limit=100).data]
        where = next(
            (
                m.removeprefix("Training worker running on Ray node ")
                for m in events
                if m.startswith("Training worker running on Ray node")
            ),
            "?",
        )
        if job.status != "succeeded":
            return False, f"{job.status}: {job.error.message if job.error else ''}"
        self.fine_tunes["supervised"] = job.fine_tuned_model
        return where.startswith("a100-node"), f"{job.fine_tuned_model} trained on {where}"

    def serve_fine_tune(self) -> tuple[bool, str]:
        model = self.fine_tunes.get("supervised")
        if model is None:
            return False, "no fine-tune to serve"
        heldout = json.loads((DEMO_DATA / "sft_facts_heldout.jsonl").read_text().splitlines()[0])
        raw = self.client.chat.completions.with_raw_response.create(
            model=model,
            temperature=0,
            max_tokens=24,
            extra_body={"gpu_preference": "A100:2"},
            messages=[{"role": "user", "content": heldout["question"]}],
        )
        reply, selected = raw.parse(), raw.headers.get("x-gpu-selected")
        self.console.print(
            f"  question: {heldout['question']}\n  {model}: {reply.choices[0].message.content!r}\n"
            f"  X-GPU-Selected: {selected}"
        )
        return bool(selected and "@a100-node" in selected), f"served on {selected}"


def _start_cluster(console: Console):
    """Three local Ray nodes; returns the ``Cluster`` (the caller shuts it down)."""
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        raise DemoError("the cluster demo needs Ray: pip install 'synthd[ray]' (make demo-cluster does)") from None
    # All three nodes share this machine's memory: Ray's per-node memory monitor would count every
    # node's processes against each node and kill workers, so it is off for the demo's nodes.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    node = {"num_cpus": 2, "object_store_memory": 100 * 1024**2, "memory": 4 * 1024**3}
    cluster = Cluster(
        initialize_head=True, head_node_args={"include_dashboard": False, "labels": {NODE_LABEL: "head"}, **node}
    )
    console.print(f"  head (CPU only) at {cluster.address}")
    for name, count, accelerator in NODES:
        cluster.add_node(
            num_gpus=count, resources={f"accelerator_type:{accelerator}": 1}, labels={NODE_LABEL: name}, **node
        )
        console.print(f"  {name}: num_gpus={count}, resources={{accelerator_type:{accelerator}: 1}}")
    return cluster


def run_cluster_demo(console: Console, port: int = 0) -> None:
    """Pull the embedded model, start the three nodes and a server on them, run every step, stop all.

    Raises:
        DemoError: Ray is missing, the pull or a start failed, or a step failed.
    """
    settings = get_settings()
    started = time.perf_counter()
    pull_model(console, settings.models_dir)
    console.rule("Ray cluster: three local nodes")
    cluster = _start_cluster(console)
    home = settings.home / "demo-cluster"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    env = {
        "SYNTHD_HOME": str(home),
        "SYNTHD_MODELS_DIR": str(settings.models_dir),
        "SYNTHD_MODEL_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
        "SYNTHD_DATABASE_URL": "",
    }
    log_path = home / "server.log"
    try:
        with ServerProcess(
            ["--ray-address", cluster.address], port=port, log_path=log_path, env=env, ready_timeout_s=600
        ) as server:
            console.print(f"  synthd serve --ray-address {cluster.address} on {server.base_url} (log {log_path})")
            demo = ClusterDemo(console, server)
            demo.step("the cluster's nodes (GET /v1/gpus)", demo.nodes)
            demo.step("warmup on A100:2", demo.warmup_a100)
            demo.step("chat, gpu_preference H100:8", lambda: demo.chat_on("H100:8"))
            demo.step("chat, fallback B200:8,A100:2 (no B200 node)", lambda: demo.chat_on("B200:8,A100:2"))
            demo.step("chat, gpu_preference A100:4 (no node has 4)", lambda: demo.refused("A100:4"))
            demo.step("SFT job on A100:2", demo.sft_on_a100)
            demo.step("its ft: model served on the A100 node", demo.serve_fine_tune)
            demo.step("the cluster's nodes after", demo.nodes)
            demo.summary()
    except ServerStartError as exc:
        raise DemoError(f"{exc} (log {log_path})") from None
    finally:
        cluster.shutdown()
    failed = [r.name for r in demo.results if not r.ok]
    console.rule(f"done in {time.perf_counter() - started:.0f}s, server and cluster stopped")
    if failed:
        raise DemoError(f"{len(failed)} step(s) failed: {', '.join(failed)}")
