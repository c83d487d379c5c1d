"""Serving fine-tunes: ft: ids listed, warmed, answered next to the base, deleted; adapters imported."""

import asyncio
import json
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from synthd.engine.prompts import CHAT_TEMPLATE_FILE, DEFAULT_CHAT_TEMPLATE
from synthd.models.shipped import GEMMA3_270M
from synthd.server_process import ServerProcess
from synthd.store.db import open_database
from synthd.store.repository import Repository
from tests.support.adapters import PROMPT, make_adapter, make_mismatched_adapter, make_non_finite_adapter, peft_greedy
from tests.support.cli import synthd
from tests.support.jobs import ExampleJob, wait_for
from tests.support.server import MODEL, server_env


@pytest.fixture(scope="module")
def imported(home: Path, models_dir: Path, tmp_path_factory) -> list[str]:
    """Two adapters made with PEFT elsewhere, imported with the CLI before the server starts."""
    work = tmp_path_factory.mktemp("adapters")
    ids = []
    for seed, name in ((1, "alpha"), (2, "beta")):
        folder = make_adapter(models_dir / MODEL, work / name, seed)
        result = synthd(
            "models", "import", str(folder), "--base", MODEL, "--name", name, env=server_env(home, models_dir)
        )
        assert result.returncode == 0, result.stderr
        ids.append(f"ft:{MODEL}:{name}")
    return ids


@pytest.fixture(scope="module")
def fp32_server(home: Path, models_dir: Path, imported) -> ServerProcess:
    with ServerProcess(
        ["--dtype", "float32"], log_path=home / "server.log", env=server_env(home, models_dir)
    ) as server:
        yield server


@pytest.fixture(scope="module")
def sdk(fp32_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=fp32_server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(models_dir: Path):
    return peft_greedy(models_dir)


def chat(sdk: openai.OpenAI, model: str, max_tokens: int = 16) -> str:
    reply = sdk.chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=max_tokens)
    return reply.choices[0].message.content


def test_imported_adapters_are_listed_with_parent(sdk: openai.OpenAI, imported: list[str]) -> None:
    cards = {m.id: m for m in sdk.models.list().data}
    for model_id in imported:
        assert cards[model_id].model_extra["parent"] == MODEL
    assert sdk.models.retrieve(imported[0]).id == imported[0]


def test_served_greedy_equals_peft_reference(sdk: openai.OpenAI, imported: list[str], home: Path, reference) -> None:
    for model_id in imported:
        adapter_dir = next((home / "adapters").glob(f"imported-*{model_id.split(':')[-1]}"))
        assert chat(sdk, model_id) == reference(adapter_dir)
    assert chat(sdk, MODEL) == reference(None)


def test_concurrent_base_and_two_adapters(
    fp32_server: ServerProcess, imported: list[str], home: Path, reference
) -> None:
    expected = {MODEL: reference(None)}
    for model_id in imported:
        expected[model_id] = reference(next((home / "adapters").glob(f"imported-*{model_id.split(':')[-1]}")))
    assert len(set(expected.values())) == 3

    async def run() -> list[tuple[str, str]]:
        async with openai.AsyncOpenAI(base_url=fp32_server.base_url, api_key="unused", max_retries=0) as client:

            async def ask(model: str) -> tuple[str, str]:
                reply = await client.chat.completions.create(model=model, messages=PROMPT, temperature=0, max_tokens=16)
                return model, reply.choices[0].message.content

            order = [MODEL, *imported, *imported, MODEL, imported[1], imported[0]]
            return list(await asyncio.gather(*(ask(m) for m in order)))

    for model, text in asyncio.run(asyncio.wait_for(run(), 180)):
        assert text == expected[model], model


def test_warmup_of_a_fine_tune(fp32_server: ServerProcess, imported: list[str]) -> None:
    root = fp32_server.root_url
    model_id = imported[1]
    started = httpx.post(f"{root}/warmup/{model_id}", json={"gpu_preference": "cpu"}).json()
    assert started["status"] in ("warming", "already_warmed") and started["gpu"] == "cpu"
    deadline = time.monotonic() + 60
    while (status := httpx.get(f"{root}/warmup/status/{model_id}").json())["status"] == "warming":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status["status"] == "warmed" and status["gpu"] == "cpu"
    assert httpx.post(f"{root}/v1/warmup/{model_id}").json()["status"] == "already_warmed"


def test_unknown_fine_tune_is_404(fp32_server: ServerProcess, sdk: openai.OpenAI) -> None:
    ghost = f"ft:{MODEL}:ghost:ftjob-000"
    with pytest.raises(openai.NotFoundError):
        chat(sdk, ghost)
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(ghost)
    assert httpx.post(f"{fp32_server.root_url}/warmup/{ghost}").status_code == 404
    assert httpx.delete(f"{fp32_server.base_url}/models/{ghost}").status_code == 404


def test_mismatched_adapter_is_400(
    fp32_server: ServerProcess, sdk: openai.OpenAI, home: Path, models_dir: Path, tmp_path: Path
) -> None:
    make_mismatched_adapter(tmp_path / "tiny")
    refused = synthd(
        "models", "import", str(tmp_path / "tiny"), "--base", MODEL, "--name", "tiny", env=server_env(home, models_dir)
    )
    assert refused.returncode == 1 and "shape" in refused.stderr
    gpt2_style = json.loads((tmp_path / "tiny" / "adapter_config.json").read_text())
    gpt2_style["target_modules"] = ["c_attn"]
    (tmp_path / "tiny" / "adapter_config.json").write_text(json.dumps(gpt2_style))
    other = synthd(
        "models",
        "import",
        str(tmp_path / "tiny"),
        "--base",
        MODEL,
        "--name",
        "gpt2ish",
        env=server_env(home, models_dir),
    )
    assert other.returncode == 1 and "c_attn" in other.stderr
    # An adapter replaced on disk after registration must still fail cleanly at request time.
    repo = Repository(open_database(home), home / "files")
    repo.add_model(f"ft:{MODEL}:broken", MODEL, str(tmp_path / "tiny"), None)
    with pytest.raises(openai.BadRequestError) as info:
        chat(sdk, f"ft:{MODEL}:broken")
    assert info.value.code == "adapter_mismatch" and "c_attn" in info.value.message
    assert chat(sdk, MODEL)  # the server keeps serving


def test_non_finite_adapter_is_refused_at_import(home: Path, models_dir: Path, tmp_path: Path) -> None:
    folder = make_non_finite_adapter(models_dir / MODEL, tmp_path / "diverged")
    refused = synthd(
        "models", "import", str(folder), "--base", MODEL, "--name", "nan", env=server_env(home, models_dir)
    )
    assert refused.returncode == 1 and "NaN or infinite" in refused.stderr


@pytest.mark.native_only(
    "the session's SFT job trains on the native leg only (training does not depend on the serving engine)"
)
def test_trained_fine_tune_listed_answers_and_deleted(
    sdk: openai.OpenAI, home: Path, models_dir: Path, reference, ft_client: openai.OpenAI, sft_facts_job: ExampleJob
) -> None:
    """The adapter the session's SFT job trained (tests/integration/conftest.py), imported here: listed
    with its parent, answering with what it learned exactly as PEFT does in float32, then deleted."""
    assert wait_for(ft_client, sft_facts_job.created.id, timeout_s=1500).status == "succeeded"
    imported = synthd(
        "models", "import", str(sft_facts_job.adapter_dir), "--base", MODEL, "--name", "facts",
        env=server_env(home, models_dir),
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    model_id = f"ft:{MODEL}:facts"
    card = sdk.models.retrieve(model_id)
    assert card.model_extra["parent"] == MODEL
    assert model_id in [m.id for m in sdk.models.list().data]
    served = chat(sdk, model_id, max_tokens=20)
    assert "Quillport" in served
    adapter_dir = next((home / "adapters").glob("imported-*facts"))
    assert served == reference(adapter_dir, max_new_tokens=20)
    with pytest.raises(openai.BadRequestError):
        sdk.models.delete(MODEL)
    assert sdk.models.delete(model_id).deleted is True
    assert model_id not in [m.id for m in sdk.models.list().data]
    assert not adapter_dir.exists()
    with pytest.raises(openai.NotFoundError):
        chat(sdk, model_id)


def test_fine_tune_of_a_base_model_chats_in_the_template_it_was_trained_with(
    sdk: openai.OpenAI,
    home: Path,
    models_dir: Path,
    reference,
    ft_client: openai.OpenAI,
    gemma_sft_job: ExampleJob,
) -> None:
    """Gemma 3 270M has no chat template: chat is refused on it, its SFT job trains with synthd's
    default template (saying so in its events) and stores it with the adapter, and the fine-tune,
    found in its own folder and served beside the embedded model, chats in that template exactly as
    PEFT does in float32."""
    gemma = GEMMA3_270M.model_id
    with pytest.raises(openai.BadRequestError, match="has no chat template"):
        chat(sdk, gemma)
    job = wait_for(ft_client, gemma_sft_job.created.id, timeout_s=1500)
    assert job.status == "succeeded", job.error
    assert job.hyperparameters.n_epochs == 2
    messages = [e.message for e in ft_client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any("has no chat template: training with synthd's default" in m for m in messages)
    assert (gemma_sft_job.adapter_dir / CHAT_TEMPLATE_FILE).read_text() == DEFAULT_CHAT_TEMPLATE
    imported = synthd(
        "models", "import", str(gemma_sft_job.adapter_dir), "--base", gemma, "--name", "gemma-facts",
        env=server_env(home, models_dir),
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    model_id = f"ft:{gemma}:gemma-facts"
    served = chat(sdk, model_id, max_tokens=12)
    adapter_dir = next((home / "adapters").glob("imported-*gemma-facts"))
    assert served == peft_greedy(models_dir, gemma)(adapter_dir, max_new_tokens=12)
    assert chat(sdk, MODEL) == reference(None)  # the embedded model answers beside it
    assert sdk.models.delete(model_id).deleted is True


def import_adapter(
    home: Path, models_dir: Path, work: Path, name: str, seed: int, **lora
) -> subprocess.CompletedProcess:
    folder = make_adapter(models_dir / MODEL, work / name, seed, **lora)
    return synthd("models", "import", str(folder), "--base", MODEL, "--name", name, env=server_env(home, models_dir))


def test_delete_racing_with_requests(
    fp32_server: ServerProcess, home: Path, models_dir: Path, tmp_path: Path, reference
) -> None:
    """Chats racing a delete get the adapter's own answer or a 404, never the base's or a mix."""
    assert import_adapter(home, models_dir, tmp_path, "racer", 5).returncode == 0
    expected = reference(tmp_path / "racer", max_new_tokens=12)
    assert expected != reference(None, max_new_tokens=12)
    model_id = f"ft:{MODEL}:racer"

    async def race() -> tuple[list, int]:
        async with httpx.AsyncClient(base_url=fp32_server.base_url, timeout=120) as http:
            body = {"model": model_id, "messages": PROMPT, "max_tokens": 12, "temperature": 0}
            chats = [asyncio.create_task(http.post("/chat/completions", json=body)) for _ in range(5)]
            await asyncio.sleep(0.05)
            deleted = await http.delete(f"/models/{model_id}")
            return await asyncio.gather(*chats), deleted.status_code

    answers, deleted = asyncio.run(race())
    assert deleted == 200
    for answer in answers:
        assert answer.status_code in (200, 404), answer.text
        if answer.status_code == 200:
            assert answer.json()["choices"][0]["message"]["content"] == expected
    assert (
        httpx.post(
            f"{fp32_server.base_url}/chat/completions", json={"model": model_id, "messages": PROMPT, "max_tokens": 2}
        ).status_code
        == 404
    )


def test_delete_while_streaming_lets_the_stream_finish(
    fp32_server: ServerProcess, home: Path, models_dir: Path, tmp_path: Path
) -> None:
    assert import_adapter(home, models_dir, tmp_path, "streamer", 6).returncode == 0
    model_id = f"ft:{MODEL}:streamer"
    sdk = openai.OpenAI(base_url=fp32_server.base_url, api_key="unused", max_retries=0, timeout=120)
    stream = sdk.chat.completions.create(
        model=model_id, messages=PROMPT, max_tokens=40, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    first = next(iter(stream))
    assert httpx.delete(f"{fp32_server.base_url}/models/{model_id}").status_code == 200
    rest = list(stream)
    assert first.choices[0].delta.role == "assistant"
    assert rest[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.NotFoundError):
        chat(sdk, model_id)


@pytest.mark.parametrize(
    "lora,field", [({"modules_to_save": ["lm_head"]}, "modules_to_save"), ({"use_dora": True}, "use_dora")]
)
def test_adapters_that_would_harm_neighbours_are_refused(
    fp32_server: ServerProcess,
    sdk: openai.OpenAI,
    home: Path,
    models_dir: Path,
    tmp_path: Path,
    imported: list[str],
    reference,
    lora: dict,
    field: str,
) -> None:
    refused = import_adapter(home, models_dir, tmp_path, f"bad-{field}", 9, **lora)
    assert refused.returncode == 1 and field in refused.stderr
    folder = tmp_path / f"bad-{field}"
    Repository(open_database(home), home / "files").add_model(f"ft:{MODEL}:sneaky-{field}", MODEL, str(folder), None)
    with pytest.raises(openai.BadRequestError) as info:
        chat(sdk, f"ft:{MODEL}:sneaky-{field}")
    assert info.value.code == "unsupported_adapter" and field in info.value.message
    adapter_dir = next((home / "adapters").glob(f"imported-*{imported[0].split(':')[-1]}"))
    assert chat(sdk, imported[0]) == reference(adapter_dir)  # neighbours unharmed


def test_another_preference_never_tears_down_a_streaming_model(fp32_server: ServerProcess, sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=MODEL, messages=PROMPT, max_tokens=48, temperature=0, stream=True, extra_body={"ignore_eos": True}
    )
    first = next(iter(stream))
    refused = httpx.post(
        f"{fp32_server.base_url}/chat/completions",
        headers={"X-GPU-Preference": "H100"},
        json={"model": MODEL, "messages": PROMPT, "max_tokens": 2},
    )
    assert refused.status_code == 409 and refused.headers["x-should-retry"] == "false"
    again = httpx.post(f"{fp32_server.root_url}/warmup/{MODEL}", json={"gpu_preference": "cpu"}).json()
    assert again["status"] == "already_warmed"
    chunks = [first, *stream]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 40
