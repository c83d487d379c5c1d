"""The batching engine in-process, in float32 where batched and solo results must match exactly."""

import threading
import time

import pytest

from synthd.engine.native.detokenize import TextAssembler
from synthd.models.embedded import EMBEDDED_MODEL_ID
from synthd.engine.native.loaded import LoadedModel, load_model
from synthd.models.resolve import resolve_model
from synthd.engine.native.sampling import SamplerState, SamplingParams
from synthd.engine.native.sequence import Sequence

PROMPTS = [
    "What is the capital of France?",
    "Write a long story about a dragon who learns to fly, with many details.",
    "List three colors.",
    "Explain photosynthesis in one paragraph.",
]


@pytest.fixture(scope="module")
def fp32_model(models_dir) -> LoadedModel:
    loaded = load_model(resolve_model(EMBEDDED_MODEL_ID, models_dir), dtype="float32", max_num_seqs=8)
    yield loaded
    loaded.close()


def submit(loaded: LoadedModel, prompt: str, max_tokens: int, **params) -> tuple[Sequence, dict]:
    done = threading.Event()
    out = {"text": "", "events": 0}

    def emit(event) -> None:
        out["text"] += event.text
        out["events"] += 1
        if event.finish_reason:
            out.update(finish=event.finish_reason, tokens=event.completion_tokens)
            done.set()

    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0, **params)
    ids = loaded.encode_chat([{"role": "user", "content": prompt}])
    sequence = Sequence(ids, SamplerState(sampling), TextAssembler(loaded.tokenizer, sampling.stop), emit)
    out["done"] = done
    loaded.engine.submit(sequence)
    return sequence, out


def wait(out: dict) -> dict:
    assert out["done"].wait(120), "sequence did not finish"
    return out


def test_batched_equals_solo_with_joins_and_leaves(fp32_model: LoadedModel) -> None:
    lengths = [40, 12, 25, 33]
    solo = [wait(submit(fp32_model, p, n)[1])["text"] for p, n in zip(PROMPTS, lengths)]
    # Staggered arrivals: later prompts join a batch that is already decoding; short ones leave early.
    outs = []
    for prompt, n in zip(PROMPTS, lengths):
        outs.append(submit(fp32_model, prompt, n, ignore_eos=False)[1])
        time.sleep(0.15)
    batched = [wait(o)["text"] for o in outs]
    assert batched == solo


def test_cancel_stops_generation(fp32_model: LoadedModel) -> None:
    sequence, out = submit(fp32_model, PROMPTS[1], 4000, ignore_eos=True)
    time.sleep(1.0)
    sequence.cancel()
    wait(out)
    assert out["finish"] == "abort"
    assert out["tokens"] < 400
    assert fp32_model.engine.num_running == 0


def test_max_tokens_and_ignore_eos(fp32_model: LoadedModel) -> None:
    out = wait(submit(fp32_model, PROMPTS[0], 30, ignore_eos=True)[1])
    assert (out["finish"], out["tokens"]) == ("length", 30)


def test_assembler_holds_back_partial_stop(fp32_model: LoadedModel) -> None:
    tokenizer = fp32_model.tokenizer
    ids = tokenizer("The capital is Paris, France.", add_special_tokens=False)["input_ids"]
    assembler = TextAssembler(tokenizer, ("Paris",))
    released = "".join(assembler.add(i) for i in ids)
    assert released == "The capital is "
    assert assembler.stopped
    free = TextAssembler(tokenizer, ("zzz",))
    text = "".join(free.add(i) for i in ids) + free.flush()
    assert text == "The capital is Paris, France."
