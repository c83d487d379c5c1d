"""The native engine in-process (float32, where batched and solo results must match exactly), its
pure scheduler, and the output processor."""

import asyncio
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from synthd.engine.config import EngineConfig
from synthd.engine.native.engine import NativeEngine
from synthd.engine.native.loader import load_native_engine
from synthd.engine.native.output_processor import OutputProcessor
from synthd.engine.native.sampler import SamplerState
from synthd.engine.native.scheduler import QueueFull, Scheduler, Sequence
from synthd.engine.protocol import BATCH_PRIORITY, GenerationError, Guide, LoRARef, SamplingParams
from synthd.models.embedded import EMBEDDED_MODEL_ID

PROMPTS = [
    "What is the capital of France?",
    "Write a long story about a dragon who learns to fly, with many details.",
    "List three colors.",
    "Explain photosynthesis in one paragraph.",
]


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> NativeEngine:
    loaded = load_native_engine(EMBEDDED_MODEL_ID, models_dir / EMBEDDED_MODEL_ID,
                                EngineConfig(dtype="float32", max_num_seqs=8))
    yield loaded
    asyncio.run(loaded.shutdown())


def run(coro):
    return asyncio.run(coro)


async def generate(engine: NativeEngine, prompt: str, max_tokens: int, request_id: str, delay: float = 0.0,
                   lora: LoRARef | None = None, guide: Guide | None = None, **params) -> dict:
    await asyncio.sleep(delay)
    ids = engine.render_chat([{"role": "user", "content": prompt}])
    out = {"text": "", "outputs": 0}
    async for output in engine.generate(request_id, ids, SamplingParams(max_tokens=max_tokens, temperature=0.0, **params),
                                        lora=lora, guide=guide):
        out["text"] += output.text
        out["outputs"] += 1
        out["finish"], out["tokens"] = output.finish_reason, output.completion_tokens
    return out


def test_batched_equals_solo_with_joins_and_leaves(engine: NativeEngine) -> None:
    lengths = [40, 12, 25, 33]
    solo = [run(generate(engine, p, n, f"solo-{i}"))["text"] for i, (p, n) in enumerate(zip(PROMPTS, lengths))]

    async def staggered():  # later prompts join a batch that is already decoding; short ones leave early
        return await asyncio.gather(*(generate(engine, p, n, f"batch-{i}", delay=0.15 * i)
                                      for i, (p, n) in enumerate(zip(PROMPTS, lengths))))

    assert [o["text"] for o in run(staggered())] == solo
    assert engine.stats().running == 0 and engine.stats().kv_cache_usage == 0.0


def test_abort_and_closing_the_iterator_stop_generation(engine: NativeEngine) -> None:
    async def scenario():
        ids = engine.render_chat([{"role": "user", "content": PROMPTS[1]}])
        params = SamplingParams(max_tokens=4000, temperature=0.0, ignore_eos=True)
        seen = []
        async for output in engine.generate("long", ids, params):
            seen.append(output)
            if len(seen) == 5:
                await engine.abort("long")
        closing = engine.generate("closed", ids, params)
        await closing.__anext__()
        await closing.aclose()
        for _ in range(600):  # the engine thread notices at its next step
            if engine.stats().running == 0:
                break
            await asyncio.sleep(0.05)
        return seen

    seen = run(scenario())
    assert seen[-1].finish_reason == "abort" and seen[-1].completion_tokens < 400
    assert engine.stats().running == 0 and engine.stats().waiting == 0


def test_max_tokens_ignore_eos_and_stop_strings(engine: NativeEngine) -> None:
    out = run(generate(engine, PROMPTS[0], 30, "len", ignore_eos=True))
    assert (out["finish"], out["tokens"]) == ("length", 30)
    free = run(generate(engine, PROMPTS[0], 30, "free"))
    assert "Paris" in free["text"]
    cut = run(generate(engine, PROMPTS[0], 30, "stop", stop=("Paris",)))
    assert cut["finish"] == "stop" and cut["text"] == free["text"][: free["text"].index("Paris")]


def test_a_bad_adapter_fails_alone(engine: NativeEngine, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")

    async def scenario():
        good = asyncio.create_task(generate(engine, PROMPTS[2], 20, "neighbour"))
        await asyncio.sleep(0.05)
        with pytest.raises(GenerationError, match="adapter"):
            await generate(engine, PROMPTS[0], 10, "bad", lora=LoRARef("ft:x:broken", broken))
        return await good

    assert run(scenario())["finish"] in ("stop", "length")
    assert engine.list_loras() == []


def test_adapter_loaded_on_demand_and_retired(engine: NativeEngine, models_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(models_dir / EMBEDDED_MODEL_ID, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "lora")
    lora = LoRARef("ft:SmolLM2-135M-Instruct:t", tmp_path / "lora")

    async def scenario():
        plain, tuned = await asyncio.gather(generate(engine, PROMPTS[0], 12, "base"),
                                            generate(engine, PROMPTS[0], 12, "tuned", lora=lora))
        resident = engine.list_loras()
        removed = await engine.remove_lora(lora.name)
        return plain, tuned, resident, removed

    plain, tuned, resident, removed = run(scenario())
    assert plain["text"] != tuned["text"] and resident == [lora.name] and removed
    assert engine.list_loras() == []


def test_guided_json_and_logprobs(engine: NativeEngine) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    out = run(generate(engine, "Capital of France as JSON.", 40, "json", guide=Guide(schema)))
    assert out["text"].startswith('{"city":') and out["finish"] == "stop"

    async def with_logprobs():
        ids = engine.render_chat([{"role": "user", "content": "Hi"}])
        return [o async for o in engine.generate("lp", ids, SamplingParams(max_tokens=3, temperature=0.0, logprobs=2))]

    outputs = run(with_logprobs())
    entries = [lp for o in outputs for lp in o.logprobs]
    assert len(entries) == 3 and all(len(e.top) == 2 and e.top[0][1] >= e.top[1][1] for e in entries)
    assert all(e.logprob == pytest.approx(e.top[0][1]) for e in entries)  # greedy: the chosen token is the top one


def sequence(request_id: str, prompt: int, max_tokens: int) -> Sequence:
    return Sequence(request_id, [1] * prompt, SamplerState(SamplingParams(max_tokens=max_tokens)))


def test_scheduler_admits_in_order_under_seq_and_kv_limits() -> None:
    scheduler = Scheduler(max_num_seqs=2, max_kv_tokens=100, max_waiting=3)
    a, b, c = sequence("a", 30, 20), sequence("b", 30, 21), sequence("c", 10, 10)
    for s in (a, b, c):
        scheduler.add(s)
    with pytest.raises(QueueFull):
        scheduler.add(sequence("d", 1, 1))
    plan = scheduler.schedule()
    assert plan.prefill == (a,) and scheduler.kv_tokens_reserved == 50  # b would exceed the 100-token budget
    assert scheduler.schedule().prefill == ()                            # b still waits, c waits behind it (FIFO)
    scheduler.finish(a)
    assert scheduler.schedule().prefill == (b, c)
    assert scheduler.kv_cache_usage == pytest.approx(0.71)
    b.aborted = True
    plan = scheduler.schedule()
    assert plan.aborted == (b,) and scheduler.running == [c]


def test_scheduler_admits_interactive_sequences_before_waiting_batch_lines() -> None:
    scheduler = Scheduler(max_num_seqs=1, max_kv_tokens=1000, max_waiting=8)
    first, line1, line2 = (Sequence(n, [1], SamplerState(SamplingParams(max_tokens=1, priority=p)))
                           for n, p in (("first", 0), ("line1", BATCH_PRIORITY), ("line2", BATCH_PRIORITY)))
    for s in (first, line1, line2):
        scheduler.add(s)
    assert scheduler.schedule().prefill == (first,)
    chat = sequence("chat", 1, 1)
    scheduler.add(chat)
    assert list(scheduler.waiting) == [chat, line1, line2]  # ahead of the batch lines, which keep their order
    scheduler.finish(first)
    assert scheduler.schedule().prefill == (chat,)


def test_scheduler_admits_an_oversized_sequence_alone() -> None:
    scheduler = Scheduler(max_num_seqs=4, max_kv_tokens=10, max_waiting=4)
    big, small = sequence("big", 50, 50), sequence("small", 1, 1)
    scheduler.add(big)
    scheduler.add(small)
    assert scheduler.schedule().prefill == (big,)
    assert scheduler.schedule().prefill == ()
    scheduler.finish(big)
    assert scheduler.schedule().prefill == (small,)


def test_output_processor_holds_back_partial_stops(engine: NativeEngine) -> None:
    ids = engine.tokenizer("The capital is Paris, France.", add_special_tokens=False)["input_ids"]
    stopped = OutputProcessor(engine.tokenizer, ("Paris",))
    released = "".join(stopped.add([i]) for i in ids)
    assert released == "The capital is " and stopped.stopped
    free = OutputProcessor(engine.tokenizer, ("zzz",))
    assert "".join(free.add([i]) for i in ids) + free.flush() == "The capital is Paris, France."
    accents = engine.tokenizer("café ☕", add_special_tokens=False)["input_ids"]
    processor = OutputProcessor(engine.tokenizer)
    pieces = [processor.add([i]) for i in accents]
    assert "".join(pieces) == "café ☕" and all("\ufffd" not in p for p in pieces)
