"""GPU catalog, preference grammar, memory fit, selection and pool files: pure, no server (over HTTP:
tests/integration/test_gpus_http.py)."""

import json
from pathlib import Path

import pytest

from synthd.gpus.catalog import CATALOG, cpu_type, from_device_name, lookup
from synthd.gpus.inventory import Device, load_pool
from synthd.gpus.memory import ModelShape, estimate_memory
from synthd.gpus.selection import GPUBusy, GPUNotSupported, GPUUnavailable, select_placement
from synthd.gpus.spec import GPUOption, GPUSpecError, parse_gpu_preference

LLAMA_70B = {  # meta-llama/Llama-3.1-70B config.json numbers
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
}
SMOL = {
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("H100", ("H100:1",)),
        ("h100", ("H100:1",)),
        ("H100:8", ("H100:8",)),
        ("L40S:2", ("L40S:2",)),
        ("A100", ("A100-40GB:1",)),
        ("a100-80g:4", ("A100-80GB:4",)),
        ("A10G", ("A10G:1",)),
        ("H100:2,A100-80GB:2", ("H100:2", "A100-80GB:2")),
        (" h200 , b200:2 ", ("H200:1", "B200:2")),
        ("cpu", ("cpu:1",)),
        ("CPU", ("cpu:1",)),
    ],
)
def test_grammar_accepts(text: str, expected: tuple[str, ...]) -> None:
    options = parse_gpu_preference(text).options
    assert tuple(f"{o.gpu_name}:{o.count}" for o in options) == expected


@pytest.mark.parametrize(
    "text",
    [
        "H100:3",
        "H100:0",
        "TPU",
        "H100:8:2",
        "",
        "  ",
        "H100:",
        ":2",
        "H100,,A10G",
        "H100:-1",
        "H100:two",
        "cpu:2",
        "A100-81GB",
    ],
)
def test_grammar_rejects_with_valid_list(text: str) -> None:
    with pytest.raises(GPUSpecError) as info:
        parse_gpu_preference(text)
    assert "valid types: T4, L4, A10G" in str(info.value) and "valid counts: 1, 2, 4, 8" in str(info.value)


def test_auto_and_none_mean_synthd_picks() -> None:
    assert parse_gpu_preference(None).is_auto and parse_gpu_preference("AUTO").is_auto


def test_catalog_prices_memory_and_driver_names() -> None:
    assert {g.name for g in CATALOG} == {"T4", "L4", "A10G", "L40S", "A100-40GB", "A100-80GB", "H100", "H200", "B200"}
    assert all(g.memory_gib > 0 and g.price_per_hour > 0 for g in CATALOG)
    assert from_device_name("NVIDIA H100 80GB HBM3").name == "H100"
    assert from_device_name("NVIDIA A100-SXM4-80GB").name == "A100-80GB"
    assert from_device_name("NVIDIA A100-SXM4-40GB").name == "A100-40GB"
    assert from_device_name("NVIDIA L40S").name == "L40S"
    assert from_device_name("Some Other GPU") is None


def test_parameter_count_matches_published_sizes() -> None:
    assert ModelShape.from_config(SMOL).parameters == 134_515_008  # SmolLM2-135M safetensors total
    assert 70.0e9 < ModelShape.from_config(LLAMA_70B).parameters < 71.0e9


def fits(config: dict, spec: str, purpose: str = "inference") -> bool:
    needed = estimate_memory(ModelShape.from_config(config), purpose).total_gib
    option = parse_gpu_preference(spec).options[0]
    return lookup(option.gpu_name).memory_gib * option.count >= needed


@pytest.mark.parametrize("spec", ["T4", "L4", "A10G", "L40S", "A100", "A100-80GB", "H100", "H200", "B200"])
def test_embedded_model_fits_everything(spec: str) -> None:
    for purpose in ("inference", "sft", "dpo"):
        assert fits(SMOL, spec, purpose)


def test_70b_fit_table() -> None:
    assert fits(LLAMA_70B, "H100:2")
    assert not fits(LLAMA_70B, "A10G")
    assert not fits(LLAMA_70B, "H100")
    assert not fits(LLAMA_70B, "L40S:2")
    assert fits(LLAMA_70B, "H100:4", "sft")
    assert not fits(LLAMA_70B, "H100", "sft")


def test_training_needs_more_than_inference() -> None:
    shape = ModelShape.from_config(LLAMA_70B)
    inference = estimate_memory(shape, "inference", context=2048).total_gib
    sft = estimate_memory(shape, "sft", context=2048).total_gib
    dpo = estimate_memory(shape, "dpo", context=2048).total_gib
    full = estimate_memory(shape, "sft", context=2048, full_fine_tune=True).total_gib
    assert inference < sft < dpo < full
    assert full > 16 * shape.parameters / 1024**3  # Adam mixed precision: 16 bytes/param


@pytest.fixture()
def pool_file(tmp_path: Path) -> Path:
    path = tmp_path / "pool.json"
    path.write_text(
        json.dumps({"devices": [{"type": "L40S", "count": 2, "node": "a"}, {"type": "h100", "count": 8, "node": "b"}]})
    )
    return path


def test_selection_on_declared_pool(pool_file: Path) -> None:
    pool = load_pool(pool_file)
    assert [d.key for d in pool][:3] == ["a/L40S#0", "a/L40S#1", "b/H100#0"]
    pick = lambda spec, gib, busy=frozenset(): select_placement(parse_gpu_preference(spec), gib, pool, busy)
    assert pick(None, 10).label == "L40S"  # cheapest that fits
    assert pick(None, 60).label == "L40S:2"  # 2 x 48 GiB at $3.90 beats one H100 at $3.95
    assert pick(None, 100).label == "H100:2"
    assert pick("H100:2,L40S:2", 60).label == "H100:2"  # ordered fallback: first that works
    assert pick("A100:2,L40S:2", 60).label == "L40S:2"  # A100 not in pool → next option
    with pytest.raises(GPUNotSupported) as not_fit:
        pick("L40S", 148)
    assert "GPU type not supported for this model" in not_fit.value.message
    assert "148.0 GiB" in not_fit.value.message and "48 GiB" in not_fit.value.message
    with pytest.raises(GPUUnavailable) as missing:
        pick("A100-80GB:2", 100)
    assert "2x L40S, 8x H100" in missing.value.message
    busy = {d.key for d in pool if d.gpu.name == "L40S"}
    with pytest.raises(GPUBusy) as taken:
        pick("L40S", 10, busy)
    assert taken.value.retry_after_s == 30
    assert pick("L40S,H100", 10, busy).label == "H100"


def test_selection_on_cpu_only_machine() -> None:
    inventory = [Device(cpu_type(23.0), 0)]
    assert select_placement(parse_gpu_preference(None), 1.5, inventory).label == "cpu"
    assert select_placement(parse_gpu_preference("H100,cpu"), 1.5, inventory).option == GPUOption("cpu")
    with pytest.raises(GPUUnavailable) as info:
        select_placement(parse_gpu_preference("H100"), 1.5, inventory)
    assert "it has: cpu" in info.value.message


def test_models_on_the_shared_cpu_count_against_its_memory() -> None:
    inventory = [Device(cpu_type(4.0), 0)]
    auto = parse_gpu_preference(None)
    assert select_placement(auto, 1.5, inventory, cpu_held_gib=2.5).label == "cpu"
    with pytest.raises(GPUBusy) as full:
        select_placement(auto, 1.5, inventory, cpu_held_gib=3.0)
    assert "the cpu has 4.0 GiB, the models loaded on it hold 3.0 GiB and this model needs 1.5 GiB" in (
        full.value.message
    )
    with pytest.raises(GPUNotSupported):
        select_placement(auto, 5.0, inventory)


def test_bad_pool_file_is_clear(tmp_path: Path) -> None:
    bad = tmp_path / "pool.json"
    bad.write_text('{"devices": [{"type": "TPU", "count": 2}]}')
    with pytest.raises(ValueError, match="bad entry"):
        load_pool(bad)
