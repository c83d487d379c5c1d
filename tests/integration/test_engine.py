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
from synthd.engine.native.kv_manager import KVCacheManager
from synthd.engine.native.loader import load_native_engine
from synthd.engine.native.output_processor import OutputProcessor
from synthd.engine.native.sampler import SamplerState
from synthd.engine.native.scheduler import Scheduler, Sequence, StepPlan
from synthd.engine.protocol import (
    BATCH_PRIORITY,
    GenerationError,
    Guide,
    LoRARef,
    QueueFull,
    SamplingParams,
    TokenLogprob,
)
from synthd.models.shipped import EMBEDDED_MODEL_ID

PROMPTS = [
    "What is the capital of France?",
    "Write a long story about a dragon who learns to fly, with many details.",
    "List three colors.",
    "Explain photosynthesis in one paragraph.",
]


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> NativeEngine:
    loaded = load_native_engine(
        EMBEDDED_MODEL_ID, models_dir / EMBEDDED_MODEL_ID, EngineConfig(dtype="float32", max_num_seqs=8)
    )
    yield loaded
    asyncio.run(loaded.shutdown())


@pytest.fixture(scope="module")
def chunked(models_dir: Path) -> NativeEngine:
    """Prompts computed 16 tokens per step (chunked prefill), no prefix cache."""
    loaded = load_native_engine(
        EMBEDDED_MODEL_ID,
        models_dir / EMBEDDED_MODEL_ID,
        EngineConfig(dtype="float32", max_num_seqs=8, max_num_batched_tokens=16, enable_prefix_caching=False),
    )
    yield loaded
    asyncio.run(loaded.shutdown())


def make_lora(models_dir: Path, folder: Path, seed: int) -> LoRARef:
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(models_dir / EMBEDDED_MODEL_ID, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(folder)
    return LoRARef(f"ft:SmolLM2-135M-Instruct:{folder.name}", folder)


def run(coro):
    return asyncio.run(coro)


async def generate(
    engine: NativeEngine,
    prompt: str,
    max_tokens: int,
    request_id: str,
    delay: float = 0.0,
    lora: LoRARef | None = None,
    guide: Guide | None = None,
    **params,
) -> dict:
    await asyncio.sleep(delay)
    ids = engine.render_chat([{"role": "user", "content": prompt}])
    out = {"text": "", "outputs": 0}
    async for output in engine.generate(
        request_id, ids, SamplingParams(max_tokens=max_tokens, temperature=0.0, **params), lora=lora, guide=guide
    ):
        out["text"] += output.text
        out["outputs"] += 1
        out["finish"], out["tokens"] = output.finish_reason, output.completion_tokens
    return out


def test_batched_equals_solo_with_joins_and_leaves(engine: NativeEngine) -> None:
    lengths = [40, 12, 25, 33]
    solo = [run(generate(engine, p, n, f"solo-{i}"))["text"] for i, (p, n) in enumerate(zip(PROMPTS, lengths))]

    async def staggered():  # later prompts join a batch that is already decoding; short ones leave early
        return await asyncio.gather(
            *(generate(engine, p, n, f"batch-{i}", delay=0.15 * i) for i, (p, n) in enumerate(zip(PROMPTS, lengths)))
        )

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
    lora = make_lora(models_dir, tmp_path / "lora", seed=3)

    async def scenario():
        plain, tuned = await asyncio.gather(
            generate(engine, PROMPTS[0], 12, "base"), generate(engine, PROMPTS[0], 12, "tuned", lora=lora)
        )
        resident = engine.list_loras()
        removed = await engine.remove_lora(lora.name)
        return plain, tuned, resident, removed

    plain, tuned, resident, removed = run(scenario())
    assert plain["text"] != tuned["text"] and resident == [lora.name] and removed
    assert engine.list_loras() == []


def test_a_new_adapter_under_a_reused_name_never_hits_the_old_ones_prefix_cache(
    engine: NativeEngine, models_dir: Path, tmp_path: Path
) -> None:
    old, new = make_lora(models_dir, tmp_path / "old", seed=5), make_lora(models_dir, tmp_path / "new", seed=6)
    reused = LoRARef("reused", new.path)

    async def scenario():
        before = await generate(engine, PROMPTS[3], 8, "old", lora=LoRARef("reused", old.path))
        await engine.remove_lora("reused")  # unloaded, then another adapter loaded under its name
        after = await generate(engine, PROMPTS[3], 8, "reused", lora=reused)
        await engine.remove_lora("reused")
        alone = await generate(engine, PROMPTS[3], 8, "new", lora=new)
        await engine.remove_lora(new.name)
        return before, after, alone

    before, after, alone = run(scenario())
    assert after["text"] == alone["text"] != before["text"]


def test_adapters_in_rotation_beyond_max_loras_keep_every_request_served(models_dir: Path, tmp_path: Path) -> None:
    """Three adapters on two resident slots, preloaded as the runtime route does and requested in
    turn: evicting PEFT's active adapter from a command once broke every later request. A PEFT
    failure while unloading fails only the requests on adapters, and the engine repairs itself."""
    loras = [make_lora(models_dir, tmp_path / f"r{seed}", seed=seed) for seed in (21, 22, 23)]
    small = load_native_engine(
        EMBEDDED_MODEL_ID, models_dir / EMBEDDED_MODEL_ID, EngineConfig(dtype="float32", max_num_seqs=4, max_loras=2)
    )

    async def rotation():
        for lora in loras:
            await small.add_lora(lora)
        texts = []
        for turn in range(6):
            if turn == 3:
                await small.add_lora(loras[0])
            texts.append((await generate(small, PROMPTS[0], 4, f"turn-{turn}", lora=loras[turn % 3]))["text"])
        return texts, (await generate(small, PROMPTS[0], 4, "base"))["text"]

    async def failing_unload():
        def fail(name):
            raise RuntimeError("half deleted")

        small._runner.model.delete_adapter = fail
        await generate(small, PROMPTS[0], 4, "evicts", lora=loras[0])  # not resident: evicts one

    try:
        texts, base = run(rotation())
        assert texts[:3] == texts[3:] and len({*texts, base}) == 4 and len(small.list_loras()) <= 2
        with pytest.raises(GenerationError, match="failed to unload"):
            run(failing_unload())
        assert small.list_loras() == []
        again = [run(generate(small, PROMPTS[0], 4, f"again-{i}", lora=lora))["text"] for i, lora in enumerate(loras)]
        assert again == texts[:3] and run(generate(small, PROMPTS[0], 4, "base-again"))["text"] == base
    finally:
        run(small.shutdown())


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


LONG_CONTEXT = " ".join(f"Fact {i}: the {i}th stone of the old wall is grey." for i in range(30))


def test_a_repeated_long_prefix_is_not_recomputed(engine: NativeEngine) -> None:
    cold = run(generate(engine, LONG_CONTEXT + " Which stone is the 7th?", 12, "cold"))
    before = engine.stats()
    warm = run(generate(engine, LONG_CONTEXT + " Which stone is the 7th?", 12, "warm"))
    other = run(generate(engine, LONG_CONTEXT + " What colour are the stones?", 12, "other"))
    after = engine.stats()
    prompts = [
        len(engine.render_chat([{"role": "user", "content": LONG_CONTEXT + q}]))
        for q in (" Which stone is the 7th?", " What colour are the stones?")
    ]
    assert min(prompts) > 300 and warm["text"] == cold["text"]
    assert after.prefix_cache_hits - before.prefix_cache_hits >= 2 * 300
    assert after.prefix_cache_queries - before.prefix_cache_queries == sum(prompts)
    assert other["text"] != warm["text"]


def test_chunked_prefill_beside_a_running_stream_equals_solo(engine: NativeEngine, chunked: NativeEngine) -> None:
    question = LONG_CONTEXT + " Which stone is the 7th?"
    story_params = {"max_tokens": 60, "ignore_eos": True}
    solo = (
        run(generate(engine, question, 16, "solo-long"))["text"],
        run(generate(engine, PROMPTS[1], request_id="solo-story", **story_params))["text"],
    )
    streamed = {"story": 0}

    async def story() -> str:
        text = ""
        async for output in chunked.generate(
            "story",
            chunked.render_chat([{"role": "user", "content": PROMPTS[1]}]),
            SamplingParams(temperature=0.0, **story_params),
        ):
            text += output.text
            streamed["story"] = output.completion_tokens
        return text

    async def long() -> tuple[str, int]:
        """The long prompt (20+ chunks of 16 tokens) arrives while the story streams; returns its text
        and how many story tokens streamed between its arrival and its own first token."""
        while streamed["story"] == 0:
            await asyncio.sleep(0.01)
        arrived, during = streamed["story"], None
        text = ""
        async for output in chunked.generate(
            "long",
            chunked.render_chat([{"role": "user", "content": question}]),
            SamplingParams(max_tokens=16, temperature=0.0),
        ):
            during = streamed["story"] - arrived if during is None else during
            text += output.text
        return text, during

    async def mixed():
        return await asyncio.gather(long(), story())

    (long_text, during), story_text = run(mixed())
    assert (long_text, story_text) == solo
    assert during >= 15  # one story token per step of the prompt's prefill, not one stall for all of it


def test_batch_invariant_greedy_output_is_the_same_alone_and_in_mixed_batches(models_dir: Path, tmp_path: Path) -> None:
    engine = load_native_engine(
        EMBEDDED_MODEL_ID,
        models_dir / EMBEDDED_MODEL_ID,
        EngineConfig(dtype="bfloat16", max_num_seqs=8, batch_invariant=True),
    )
    loras = [None, make_lora(models_dir, tmp_path / "one", seed=1), make_lora(models_dir, tmp_path / "two", seed=2)]
    prompt = "Write a long story about a dragon who learns to fly."

    async def ids(request_id: str, text: str, lora: LoRARef | None, delay: float = 0.0) -> list[int]:
        await asyncio.sleep(delay)
        tokens = []
        async for output in engine.generate(
            request_id,
            engine.render_chat([{"role": "user", "content": text}]),
            SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True),
            lora=lora,
        ):
            tokens.extend(output.token_ids)
        return tokens

    async def mixed(round_: int) -> list[list[int]]:
        neighbours = [
            ids(f"n{round_}-{i}", PROMPTS[i % 4] * (i + 1), loras[(i + round_) % 3], delay=0.05 * i) for i in range(5)
        ]
        results = await asyncio.gather(
            *(ids(f"p{round_}-{j}", prompt, lora, delay=0.1 * (j + round_)) for j, lora in enumerate(loras)),
            *neighbours,
        )
        return results[:3]

    try:
        alone = [run(ids(f"alone-{j}", prompt, lora)) for j, lora in enumerate(loras)]
        assert alone[0] != alone[1] != alone[2]
        assert run(mixed(0)) == alone and run(mixed(1)) == alone
    finally:
        asyncio.run(engine.shutdown())


def sequence(request_id: str, prompt: int | list[int], max_tokens: int, lora: str | None = None) -> Sequence:
    ids = [1] * prompt if isinstance(prompt, int) else prompt
    return Sequence(request_id, ids, SamplerState(SamplingParams(max_tokens=max_tokens)), lora=lora)


def run_step(scheduler: Scheduler, token: int = 7) -> StepPlan:
    """Plan a step and play the engine's part without a model: sample ``token`` where due, commit."""
    plan = scheduler.schedule()
    for chunk in plan.chunks:
        if chunk.sample:
            chunk.sequence.sampler.generated.append(token)
        scheduler.commit(chunk.sequence)
    return plan


def shape(plan: StepPlan) -> list[tuple[str, int, int, bool]]:
    return [(c.sequence.request_id, c.start, c.num_tokens, c.sample) for c in plan.chunks]


def test_logprobs_are_always_finite() -> None:
    """JSON has no NaN or infinity: a stream once sent bare ``NaN`` (vLLM floors at -9999.0)."""
    entry = TokenLogprob("a", float("nan"), (97,), (("a", float("-inf"), (97,)), ("b", -0.5, (98,))))
    assert entry.logprob == -9999.0 and [lp for _, lp, _ in entry.top] == [-9999.0, -0.5]
    assert TokenLogprob("a", float("-inf"), (97,)).logprob == -9999.0 and TokenLogprob("a", -1e6, ()).logprob == -9999.0


def test_scheduler_admits_in_order_under_seq_and_kv_limits() -> None:
    scheduler = Scheduler(max_num_seqs=2, max_kv_tokens=100, max_waiting=3)
    a, b, c = sequence("a", 30, 20), sequence("b", 30, 21), sequence("c", 10, 10)
    for s in (a, b, c):
        scheduler.add(s)
    with pytest.raises(QueueFull):
        scheduler.add(sequence("d", 1, 1))
    plan = scheduler.schedule()
    assert plan.joined == (a,) and scheduler.kv_tokens_reserved == 50  # b would exceed the 100-token budget
    assert scheduler.schedule().joined == ()  # b still waits, c waits behind it (FIFO)
    scheduler.finish(a)
    assert scheduler.schedule().joined == (b, c)
    assert scheduler.kv_cache_usage == pytest.approx(0.71)
    b.aborted = True
    plan = scheduler.schedule()
    assert plan.aborted == (b,) and scheduler.running == [c]


def test_scheduler_admits_interactive_sequences_before_waiting_batch_lines() -> None:
    scheduler = Scheduler(max_num_seqs=1, max_kv_tokens=1000, max_waiting=8)
    first, line1, line2 = (
        Sequence(n, [1], SamplerState(SamplingParams(max_tokens=1, priority=p)))
        for n, p in (("first", 0), ("line1", BATCH_PRIORITY), ("line2", BATCH_PRIORITY))
    )
    for s in (first, line1, line2):
        scheduler.add(s)
    assert scheduler.schedule().joined == (first,)
    chat = sequence("chat", 1, 1)
    scheduler.add(chat)
    assert list(scheduler.waiting) == [chat, line1, line2]  # ahead of the batch lines, which keep their order
    scheduler.finish(first)
    assert scheduler.schedule().joined == (chat,)


def test_scheduler_admits_an_oversized_sequence_alone() -> None:
    scheduler = Scheduler(max_num_seqs=4, max_kv_tokens=10, max_waiting=4)
    big, small = sequence("big", 50, 50), sequence("small", 1, 1)
    scheduler.add(big)
    scheduler.add(small)
    assert scheduler.schedule().joined == (big,)
    assert scheduler.schedule().joined == ()
    scheduler.finish(big)
    assert scheduler.schedule().joined == (small,)


def test_scheduler_chunks_prompts_under_the_token_budget_decodes_first() -> None:
    scheduler = Scheduler(max_num_seqs=4, max_kv_tokens=1000, max_waiting=4, max_num_batched_tokens=8)
    a, b = sequence("a", 3, 5), sequence("b", 20, 5)
    scheduler.add(a)
    scheduler.add(b)
    assert shape(run_step(scheduler)) == [("a", 0, 3, True), ("b", 0, 5, False)]  # b gets what a leaves
    assert shape(run_step(scheduler)) == [("a", 3, 1, True), ("b", 5, 7, False)]  # a decodes first
    assert shape(run_step(scheduler)) == [("a", 4, 1, True), ("b", 12, 7, False)]
    plan = run_step(scheduler)
    assert shape(plan) == [("a", 5, 1, True), ("b", 19, 1, True)]  # the last prompt token samples b's first
    assert plan.chunks[1].token_ids == (1,) and b.completion_tokens == 1
    assert shape(run_step(scheduler)) == [("a", 6, 1, True), ("b", 20, 1, True)]
    assert all(run_step(scheduler).num_tokens <= 8 for _ in range(3))


def test_scheduler_batch_invariant_never_splits_a_prompt() -> None:
    scheduler = Scheduler(
        max_num_seqs=4, max_kv_tokens=1000, max_waiting=4, max_num_batched_tokens=8, batch_invariant=True
    )
    a, b, c = sequence("a", 6, 5), sequence("b", 20, 5), sequence("c", 2, 5)
    for s in (a, b, c):
        scheduler.add(s)
    assert shape(run_step(scheduler)) == [("a", 0, 6, True)]  # b (20 tokens) waits rather than be cut
    assert shape(run_step(scheduler)) == [("a", 6, 1, True), ("b", 0, 20, True)]  # alone among prompts: whole
    assert shape(run_step(scheduler)) == [("a", 7, 1, True), ("b", 20, 1, True), ("c", 0, 2, True)]


def test_scheduler_reuses_a_cached_prefix() -> None:
    scheduler = Scheduler(max_num_seqs=4, max_kv_tokens=1000, max_waiting=4, block_size=4)
    shared = list(range(100, 110))
    first = sequence("first", shared + [1, 2], 3)
    scheduler.add(first)
    run_step(scheduler)
    second = sequence("second", shared + [3], 3)  # joins while first runs: copied from first's slot
    scheduler.add(second)
    plan = run_step(scheduler)
    assert plan.copies == ((first.slot, second.slot, 8),) and second.num_cached_tokens == 8
    assert shape(plan) == [("first", 12, 1, True), ("second", 8, 3, True)]
    scheduler.finish(first)
    scheduler.finish(second)
    again = sequence("again", shared + [1, 2, 9], 3)  # takes over first's free slot: no copy at all
    other = sequence("lora", shared + [1, 2, 9], 3, lora="ft:x")  # another adapter: other keys and values
    scheduler.add(again)
    scheduler.add(other)
    plan = run_step(scheduler)
    assert plan.copies == () and again.slot == first.slot and again.num_cached_tokens == 12
    assert other.num_cached_tokens == 0 and shape(plan)[0] == ("again", 12, 1, True)
    assert (scheduler.prefix_cache_queries, scheduler.prefix_cache_hits) == (12 + 11 + 13 + 13, 8 + 12)


def test_prefix_lookup_keeps_the_last_token_and_evicts_least_recently_released() -> None:
    kv = KVCacheManager(max_slots=2, block_size=4)
    prompt = list(range(8))
    a = kv.allocate(prompt)
    kv.commit(a.slot, prompt)
    kv.free(a.slot)
    assert kv.lookup(prompt) == (4, [a.slot])  # 8 tokens cached, but the last one must run
    assert kv.lookup(prompt + [99]) == (8, [a.slot])
    b = kv.allocate([50] * 9)
    kv.commit(b.slot, [50] * 9)
    kv.free(b.slot)
    c = kv.allocate([60] * 9)  # both slots free and full: the older one (a) goes
    assert c.slot == a.slot and c.cached_tokens == 0
    assert kv.lookup(prompt + [99]) == (0, []) and kv.lookup([50] * 9) == (8, [b.slot])


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
