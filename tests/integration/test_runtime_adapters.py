"""Runtime LoRA adapters, vLLM's routes: load → listed with its parent → served → unload → 404;
admin keys only (the server's --api-key here), served to every project's key."""

import json
import shutil
from pathlib import Path

import httpx
import openai
import pytest
from safetensors.torch import save_file

from synthd.server_process import ServerProcess
from tests.support.adapters import make_adapter, make_mismatched_adapter, make_non_finite_adapter, peft_greedy
from tests.support.cli import create_key
from tests.support.server import MODEL, server_env

PROMPT = [{"role": "user", "content": "What is the capital of Zorbania?"}]
ADMIN_KEY = "runtime-adapters-admin-key"


@pytest.fixture(scope="module")
def adapters_dir(models_dir: Path, tmp_path_factory) -> Path:
    """Two PEFT LoRA adapters of the embedded model, made here."""
    work = tmp_path_factory.mktemp("runtime-adapters")
    for seed, name in ((11, "alpha"), (12, "beta")):
        make_adapter(models_dir / MODEL, work / name, seed)
    return work


@pytest.fixture(scope="module")
def project_key(home: Path, models_dir: Path) -> str:
    """A key of project "alpha", not an admin key."""
    return create_key(home, models_dir, "--project", "alpha")


@pytest.fixture(scope="module")
def server(home: Path, models_dir: Path, project_key: str) -> ServerProcess:
    with ServerProcess(
        ["--dtype", "float32", "--api-key", ADMIN_KEY],
        log_path=home / "server.log",
        env=server_env(home, models_dir),
        api_key=ADMIN_KEY,
    ) as process:
        yield process


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> openai.OpenAI:
    """The admin's client."""
    return openai.OpenAI(base_url=server.base_url, api_key=ADMIN_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(models_dir: Path):
    """Greedy reply of the base model with a PEFT adapter applied, as PEFT computes it (12 tokens, as ``chat``)."""
    generate = peft_greedy(models_dir)
    return lambda adapter_dir: generate(adapter_dir, max_new_tokens=12)


def load(server: ServerProcess, name: str, path: Path | str, key: str = ADMIN_KEY, **extra) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/load_lora_adapter",
        json={"lora_name": name, "lora_path": str(path), **extra},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def unload(server: ServerProcess, name: str, key: str = ADMIN_KEY) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/unload_lora_adapter",
        json={"lora_name": name},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def chat(sdk: openai.OpenAI, model: str, max_tokens: int = 12) -> str:
    reply = sdk.chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=max_tokens)
    assert reply.model == model
    return reply.choices[0].message.content


def test_load_serve_unload(server: ServerProcess, sdk: openai.OpenAI, adapters_dir: Path, reference) -> None:
    loaded = load(server, "alpha-runtime", adapters_dir / "alpha")
    assert loaded.status_code == 200 and loaded.text == "Success: LoRA adapter 'alpha-runtime' added successfully."
    cards = {m.id: m for m in sdk.models.list().data}
    assert cards["alpha-runtime"].model_extra["parent"] == MODEL
    assert sdk.models.retrieve("alpha-runtime").model_extra["parent"] == MODEL
    served = chat(sdk, "alpha-runtime")
    assert served == reference(adapters_dir / "alpha")
    assert served != chat(sdk, MODEL)

    unloaded = unload(server, "alpha-runtime")
    assert (
        unloaded.status_code == 200 and unloaded.text == "Success: LoRA adapter 'alpha-runtime' removed successfully."
    )
    with pytest.raises(openai.NotFoundError):
        chat(sdk, "alpha-runtime")
    assert "alpha-runtime" not in [m.id for m in sdk.models.list().data]
    again = unload(server, "alpha-runtime")
    assert again.status_code == 404
    assert again.json()["error"]["message"] == "The lora adapter 'alpha-runtime' cannot be found."
    assert load(server, "alpha-runtime", adapters_dir / "alpha").status_code == 200  # the name is free again
    assert chat(sdk, "alpha-runtime") == served
    assert unload(server, "alpha-runtime").status_code == 200


def test_unload_lets_running_requests_finish(server: ServerProcess, sdk: openai.OpenAI, adapters_dir: Path) -> None:
    assert load(server, "beta-stream", adapters_dir / "beta").status_code == 200
    stream = sdk.chat.completions.create(
        model="beta-stream", messages=PROMPT, max_tokens=30, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    first = next(iter(stream))
    assert unload(server, "beta-stream").status_code == 200
    rest = list(stream)
    assert first.choices[0].delta.role == "assistant"
    assert rest[-1].choices[0].finish_reason == "length"
    assert sum(1 for c in [first, *rest] if c.choices and c.choices[0].delta.content) >= 25
    with pytest.raises(openai.NotFoundError):
        chat(sdk, "beta-stream")


def test_base_is_the_served_model_named_in_the_adapter_config(
    server: ServerProcess, sdk: openai.OpenAI, adapters_dir: Path, tmp_path: Path
) -> None:
    for name, base in (("by-hub-id", "HuggingFaceTB/SmolLM2-135M-Instruct"), ("by-unknown", "someone/elses-model")):
        folder = tmp_path / name
        shutil.copytree(adapters_dir / "alpha", folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base
        (folder / "adapter_config.json").write_text(json.dumps(config))
        assert load(server, name, folder).status_code == 200
        assert sdk.models.retrieve(name).model_extra["parent"] == MODEL  # named, or else the first served model
        assert unload(server, name).status_code == 200


def test_bad_adapters_are_400_and_the_server_keeps_serving(
    server: ServerProcess, sdk: openai.OpenAI, adapters_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    missing = load(server, "ghost", tmp_path / "nowhere")
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "adapter_mismatch" and missing.json()["error"]["param"] == "lora_path"
    make_mismatched_adapter(tmp_path / "tiny")
    mismatched = load(server, "tiny", tmp_path / "tiny")
    assert mismatched.status_code == 400
    assert mismatched.json()["error"]["code"] == "adapter_mismatch" and "shape" in mismatched.json()["error"]["message"]

    def with_rank(rank):
        def damage(folder: Path) -> None:
            config = json.loads((folder / "adapter_config.json").read_text())
            (folder / "adapter_config.json").write_text(json.dumps({**config, "r": rank}))

        return damage

    broken = {  # each loaded before this fix: a 500 at load, or a 200 and then a 93 KB 500 on every request
        "torn": lambda folder: (folder / "adapter_model.safetensors").write_bytes(bytes(range(100))),
        "wrong-rank": with_rank(64),
        "rank-text": with_rank("eight"),
        "empty": lambda folder: save_file({}, folder / "adapter_model.safetensors"),  # loaded, served the base
    }
    for name, damage in broken.items():
        shutil.copytree(adapters_dir / "alpha", tmp_path / name)
        damage(tmp_path / name)
        answer = load(server, name, tmp_path / name)
        assert answer.status_code == 400, (name, answer.text)
        assert answer.json()["error"]["code"] == "adapter_mismatch" and len(answer.json()["error"]["message"]) < 400
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):  # before: 200, then 500s and bare NaN
        answer = load(server, name, make_non_finite_adapter(models_dir / MODEL, tmp_path / name, value))
        assert answer.status_code == 400, (name, answer.text)
        assert answer.json()["error"]["code"] == "non_finite_adapter" and "NaN or infinite" in answer.text
    too_long = load(server, "long", "/" + "a" * 300)
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "adapter_mismatch", too_long.text
    for name in ("ghost", "tiny", *broken, "nan", "inf"):
        assert name not in [m.id for m in sdk.models.list().data]
        with pytest.raises(openai.NotFoundError):
            chat(sdk, name)
    assert chat(sdk, MODEL, max_tokens=2)


def test_names_that_collide_or_are_reserved_are_400(
    server: ServerProcess, sdk: openai.OpenAI, adapters_dir: Path
) -> None:
    base = load(server, MODEL, adapters_dir / "alpha")
    assert base.status_code == 400
    assert base.json()["error"]["message"] == f"The lora adapter '{MODEL}' conflicts with a served base model."
    assert load(server, "twice", adapters_dir / "alpha").status_code == 200
    again = load(server, "twice", adapters_dir / "beta")
    assert again.status_code == 400
    assert again.json()["error"]["message"] == "The lora adapter 'twice' has already been loaded."
    assert load(server, f"ft:{MODEL}:mine", adapters_dir / "alpha").status_code == 400
    empty = load(server, "", adapters_dir / "alpha")
    assert empty.status_code == 400
    assert empty.json()["error"]["message"] == "Both 'lora_name' and 'lora_path' must be provided."
    assert load(server, "inplace", adapters_dir / "alpha", load_inplace=True).status_code == 400
    assert (
        httpx.post(
            f"{server.base_url}/unload_lora_adapter", json={}, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ).status_code
        == 400
    )
    with pytest.raises(openai.BadRequestError) as info:
        sdk.models.delete("twice")
    assert "unload_lora_adapter" in info.value.message
    assert unload(server, "twice").status_code == 200


def test_only_admin_keys_load_and_unload(
    server: ServerProcess, sdk: openai.OpenAI, adapters_dir: Path, project_key: str
) -> None:
    refused = load(server, "gamma", adapters_dir / "alpha", key=project_key)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_permissions"
    assert "gamma" not in [m.id for m in sdk.models.list().data]
    assert (
        httpx.post(
            f"{server.base_url}/load_lora_adapter",
            json={"lora_name": "gamma", "lora_path": str(adapters_dir / "alpha")},
        ).status_code
        == 401
    )
    assert load(server, "gamma", adapters_dir / "alpha").status_code == 200
    project = openai.OpenAI(base_url=server.base_url, api_key=project_key, max_retries=0, timeout=120)
    assert "gamma" in [m.id for m in project.models.list().data]  # the operator's adapter, served to every key
    assert chat(project, "gamma", max_tokens=2)
    assert unload(server, "gamma", key=project_key).status_code == 403
    assert chat(project, "gamma", max_tokens=2)
    assert unload(server, "gamma").status_code == 200
