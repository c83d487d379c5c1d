"""The pure parts of the cluster work, without starting Ray: reading nodes as ``ray.nodes()`` gives
them, placement one node at a time, the autoscaling rule, errors and adapters across the wire."""

from pathlib import Path

import pytest

from synthd.cluster.inventory import NODE_NAME_LABEL, cluster_devices, cluster_nodes
from synthd.cluster.wire import AdapterFiles, RemoteFailure
from synthd.engine.protocol import GenerationError, GuideError, QueueFull
from synthd.errors import InvalidRequest, TooManyRequests
from synthd.gpus.catalog import cpu_type, lookup
from synthd.gpus.inventory import Device
from synthd.gpus.selection import GPUBusy, GPUUnavailable, select_placement
from synthd.gpus.spec import parse_gpu_preference
from synthd.models.autoscaling import AutoscalingConfig

GIB = 1024**3


def ray_node(node_id: str, resources: dict, labels: dict | None = None, alive: bool = True) -> dict:
    """One entry shaped as ``ray.nodes()`` returns it (Ray 2.60)."""
    return {
        "NodeID": node_id,
        "Alive": alive,
        "NodeManagerHostname": "vm",
        "Resources": resources,
        "Labels": {"ray.io/node-id": node_id, **(labels or {})},
    }


def test_nodes_read_from_resources_and_labels() -> None:
    raw = [
        ray_node("aa" * 28, {"CPU": 2.0, "memory": 8 * GIB}, {NODE_NAME_LABEL: "head"}),
        ray_node("bb" * 28, {"CPU": 2.0, "GPU": 8.0, "accelerator_type:H100": 1.0, "memory": 64 * GIB}),
        ray_node("cc" * 28, {"CPU": 2.0, "GPU": 2.0, "memory": 64 * GIB}, {"ray.io/accelerator-type": "A100-80G"}),
        ray_node("dd" * 28, {"CPU": 2.0, "GPU": 4.0, "accelerator_type:V100": 1.0}),
        ray_node("ee" * 28, {"CPU": 2.0, "GPU": 8.0, "accelerator_type:H100": 1.0}, alive=False),
    ]
    nodes = cluster_nodes(raw)
    assert [n.name for n in nodes] == ["head", "vm-bbbbbb", "vm-cccccc", "vm-dddddd"]  # dead node left out
    head, h100, a100, v100 = nodes
    assert (head.gpu, head.gpus, head.memory_gib) == (None, 0, 8.0)
    assert (h100.gpu.name, h100.gpus, h100.ray_accelerator) == ("H100", 8, "H100")
    assert (a100.gpu.name, a100.ray_accelerator) == ("A100-80GB", "A100-80G")  # the label, mapped to the catalog
    assert v100.gpu is None and v100.devices == []  # not in the catalog: synthd cannot size models for it
    devices = cluster_devices(nodes)
    assert [d.key for d in devices][:3] == ["head/cpu#0", "vm-bbbbbb/H100#0", "vm-bbbbbb/H100#1"]
    assert len(devices) == 1 + 8 + 2 and not any(d.remote for d in devices)


def cluster_inventory() -> list[Device]:
    h100, a100 = lookup("H100"), lookup("A100")
    return (
        [Device(h100, i, node="h100-node") for i in range(8)]
        + [Device(a100, i, node="a100-a") for i in range(2)]
        + [Device(a100, i, node="a100-b") for i in range(2)]
        + [Device(cpu_type(8.0), 0, node="head")]
    )


def test_a_spec_takes_devices_of_one_node() -> None:
    inventory = cluster_inventory()
    pick = lambda spec, busy=frozenset(): select_placement(parse_gpu_preference(spec), 1.0, inventory, busy)
    eight = pick("H100:8")
    assert eight.where == "H100:8@h100-node/0,1,2,3,4,5,6,7" and eight.node == "h100-node"
    assert pick("A100:2").where == "A100-40GB:2@a100-a/0,1"
    assert pick("A100:2", {"a100-a/A100-40GB#1"}).where == "A100-40GB:2@a100-b/0,1"  # next node, not a split pair
    assert pick("cpu").where == "cpu@head"
    with pytest.raises(GPUUnavailable) as split:  # 4 A100s exist, but 2 per node
        pick("A100:4")
    assert "the most on one node is 2" in split.value.message
    held = {d.key for d in inventory if d.gpu.name == "H100"}
    assert pick("H100:8,A100:2", held).where == "A100-40GB:2@a100-a/0,1"  # fallback in order
    with pytest.raises(GPUBusy):
        pick("H100", held)


def test_placement_on_this_host_keeps_its_plain_label() -> None:
    local = select_placement(parse_gpu_preference("cpu"), 1.0, [Device(cpu_type(8.0), 0)])
    assert local.where == "cpu" and local.node == "local"


def test_autoscaling_rule() -> None:
    config = AutoscalingConfig(min_replicas=0, max_replicas=3, target_ongoing_requests=2)
    assert [config.desired_replicas(n) for n in (0, 1, 2, 3, 4, 5, 9)] == [0, 1, 1, 2, 2, 3, 3]
    assert AutoscalingConfig(min_replicas=1, max_replicas=2).desired_replicas(0) == 1
    assert AutoscalingConfig().desired_replicas(50) == 1  # the default: one replica per placement
    with pytest.raises(ValueError):
        AutoscalingConfig(min_replicas=3, max_replicas=2)


@pytest.mark.parametrize(
    "error, kind",
    [
        (GuideError("bad schema", param="response_format"), InvalidRequest),
        (QueueFull(4), TooManyRequests),
        (GenerationError("adapter failed"), GenerationError),
        (RuntimeError("boom"), GenerationError),
    ],
)
def test_errors_cross_the_wire_with_their_kind(error: Exception, kind: type) -> None:
    again = RemoteFailure.of(error).error()
    assert isinstance(again, kind)
    if not isinstance(error, RuntimeError):
        assert (again.message, again.param, again.code) == (error.message, error.param, error.code)
    if isinstance(error, TooManyRequests):
        assert again.retry_after_s == error.retry_after_s


def test_adapter_files_written_once_by_content(tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    files = AdapterFiles.read("ft:m::job", folder)
    first = files.write(tmp_path / "cache")
    assert first.name == files.digest and (first / "adapter_config.json").read_text() == '{"r": 8}'
    assert files.write(tmp_path / "cache") == first
    (folder / "adapter_config.json").write_text('{"r": 16}')
    assert AdapterFiles.read("ft:m::job", folder).digest != files.digest
