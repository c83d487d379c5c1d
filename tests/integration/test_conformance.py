"""Each engine answers as transformers does, on every architecture it accepts; the native engine
refuses the rest at load.

Tiny random-weight models (seeded, float32, the embedded model's tokenizer with a BOS-adding
post-processor) are built once for the module. Each one's greedy continuation of a short completion
prompt and of a chat prompt longer than its sliding window, run together in one engine (batched
decode, prompts in chunks), must equal transformers' ``generate`` on the same ids (eager attention,
the reference implementation), and the first token's logprob must be within 1e-3 of transformers'.
The same holds for the real Gemma 3 270M (a base model: completions only) with a prompt longer than
its 512-token window. The engine under test is ``SYNTHD_TEST_ENGINE``'s (``make test`` runs both).
"""

import asyncio
from pathlib import Path

import pytest
import torch
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from synthd.engine.config import EngineConfig
from synthd.engine.factory import create_engine
from synthd.engine.native.loader import load_native_engine
from synthd.engine.native.support import UnsupportedModel
from synthd.engine.protocol import SamplingParams
from synthd.models.shipped import EMBEDDED_MODEL_ID, GEMMA3_270M
from tests.support.server import ENGINE

WINDOW = 16
NEW_TOKENS = 8
SHORT = "The capital of France is"
LONG = (
    "Write a long story about a dragon who learns to fly over the mountains and the sea, "
    "with many details about the wind, the clouds, the birds and the people in the villages below."
)
SHAPE = {
    "vocab_size": 49152,
    "hidden_size": 128,  # four heads of 32: a head size vLLM-CPU has kernels for
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "initializer_range": 0.1,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
CONFIGS = {
    # attention biases, head_dim != hidden / heads, tied embeddings
    "llama": LlamaConfig(**SHAPE, num_hidden_layers=2, head_dim=64, attention_bias=True, tie_word_embeddings=True),
    # one KV head, q/k/v biases, untied
    "qwen2": Qwen2Config(**{**SHAPE, "num_key_value_heads": 1}, num_hidden_layers=2, tie_word_embeddings=False),
    # every layer sliding
    "mistral": MistralConfig(**SHAPE, num_hidden_layers=2, sliding_window=WINDOW),
    # q/k norms, one sliding layer of three
    "qwen3": Qwen3Config(
        **SHAPE, num_hidden_layers=3, head_dim=32, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2
    ),
    # sliding and full layers, query_pre_attn_scalar, final-logit soft-capping, scaled embeddings
    "gemma3": Gemma3TextConfig(
        **{**SHAPE, "num_key_value_heads": 1},
        num_hidden_layers=3,
        head_dim=32,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        sliding_window=WINDOW,
        query_pre_attn_scalar=24,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
    ),
    # attention and final-logit soft-capping, alternating sliding layers
    "gemma2": Gemma2Config(
        **SHAPE,
        num_hidden_layers=2,
        head_dim=32,
        sliding_window=WINDOW,
        query_pre_attn_scalar=16,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=30.0,
    ),
    # fused qkv, partial rotary
    "phi3": Phi3Config(**SHAPE, num_hidden_layers=2, partial_rotary_factor=0.5, pad_token_id=0),
    # q/k norms over every head
    "olmo2": Olmo2Config(**SHAPE, num_hidden_layers=2, pad_token_id=0),
}
REFUSED = {
    "gpt2": (GPT2Config(n_embd=64, n_layer=2, n_head=4, architectures=["GPT2LMHeadModel"]), "GPT2LMHeadModel"),
    "phi3-longrope": (
        Phi3Config(
            **SHAPE,
            num_hidden_layers=2,
            architectures=["Phi3ForCausalLM"],
            original_max_position_embeddings=256,
            rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 16, "long_factor": [2.0] * 16},
        ),
        "rope_type 'longrope'",
    ),
}


@pytest.fixture(scope="module")
def bos_tokenizer_dir(models_dir: Path, tmp_path_factory) -> Path:
    """The embedded tokenizer with a post-processor that adds ``<|im_start|>`` (its BOS) to a prompt."""
    tokenizer = AutoTokenizer.from_pretrained(models_dir / EMBEDDED_MODEL_ID)
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", pair="<|im_start|> $A $B", special_tokens=[("<|im_start|>", 1)]
    )
    folder = tmp_path_factory.mktemp("bos-tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_models(bos_tokenizer_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """Each of ``CONFIGS`` as a saved model folder with the BOS-adding tokenizer."""
    root = tmp_path_factory.mktemp("conformance")
    tokenizer = AutoTokenizer.from_pretrained(bos_tokenizer_dir)
    folders = {}
    for name, config in CONFIGS.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        folders[name] = root / name
        model.save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return folders


async def _greedy(engine, prompts: list[list[int]], new_tokens: int = NEW_TOKENS) -> list[tuple[list[int], float]]:
    async def one(index: int, ids: list[int]) -> tuple[list[int], float]:
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True, logprobs=0)
        tokens, logprobs = [], []
        async for output in engine.generate(f"r{index}", ids, params):
            tokens.extend(output.token_ids)
            logprobs.extend(lp.logprob for lp in output.logprobs)
        return tokens, logprobs[0]

    return await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))


def _reference(folder: Path, ids: list[int], new_tokens: int = NEW_TOKENS) -> tuple[list[int], float]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    model.generation_config.eos_token_id = None
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_scores=True,
        )
    first = out.sequences[0, len(ids)].item()
    return out.sequences[0, len(ids) :].tolist(), torch.log_softmax(out.scores[0][0].float(), -1)[first].item()


ENGINE_MODES = {
    "chunked": EngineConfig(dtype="float32", max_num_seqs=4, max_num_batched_tokens=24),
    "batch-invariant": EngineConfig(dtype="float32", max_num_seqs=4, batch_invariant=True),
    # vLLM-CPU allocates its whole KV cache at start: a small one, and a context to match
    "vllm": EngineConfig(dtype="float32", max_num_seqs=4, max_model_len=2048, kv_cache_tokens=4096),
}
VLLM_REFUSED = {"qwen3"}  # vLLM: "Sliding window for some but all layers is not supported" (at start-up)
if ENGINE == "vllm":
    CASES = [(name, "vllm") for name in CONFIGS if name not in VLLM_REFUSED]
else:
    CASES = [(name, "chunked") for name in CONFIGS] + [
        (name, "batch-invariant")
        for name in ("mistral", "gemma2")  # windows and soft-capping, per sequence
    ]


def _load(name: str, folder: Path, config: EngineConfig):
    return create_engine(ENGINE, name, folder, config, [])


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_greedy_equals_transformers(name: str, mode: str, tiny_models: dict[str, Path]) -> None:
    engine = _load(name, tiny_models[name], ENGINE_MODES[mode])
    try:
        short = engine.encode(SHORT)
        long = engine.render_chat([{"role": "user", "content": LONG}])
        assert short[0] == 1 and len(long) > 3 * WINDOW
        results = asyncio.run(_greedy(engine, [short, long]))
    finally:
        asyncio.run(engine.shutdown())
    for ids, (tokens, logprob) in zip([short, long], results):
        expected_tokens, expected_logprob = _reference(tiny_models[name], ids)
        assert tokens == expected_tokens
        assert logprob == pytest.approx(expected_logprob, abs=1e-3)


def test_gemma_3_270m_equals_transformers(gemma_dir: Path) -> None:
    engine = _load(GEMMA3_270M.model_id, gemma_dir, ENGINE_MODES["vllm" if ENGINE == "vllm" else "chunked"])
    try:
        short = engine.encode(SHORT)
        colours = ("red", "blue", "green")
        long = engine.encode(" ".join(f"Item {i} is a {colours[i % 3]} ball." for i in range(70)) + " Item 7 is a")
        assert short[0] == engine.tokenizer.bos_token_id and len(long) > 512  # beyond its sliding window
        results = asyncio.run(_greedy(engine, [short, long]))
    finally:
        asyncio.run(engine.shutdown())
    for ids, (tokens, logprob) in zip([short, long], results):
        expected_tokens, expected_logprob = _reference(gemma_dir, ids)
        assert tokens == expected_tokens
        assert logprob == pytest.approx(expected_logprob, abs=1e-3)
    assert engine.tokenizer.decode(results[0][0]) == " the capital of the country of France."


@pytest.mark.vllm_only("vLLM-CPU's attention kernels")
def test_vllm_refuses_a_head_size_it_has_no_kernel_for(tmp_path: Path) -> None:
    LlamaConfig(**SHAPE, num_hidden_layers=1, head_dim=16).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="head_dim 16"):
        _load("head-16", tmp_path, ENGINE_MODES["vllm"])


@pytest.mark.vllm_only("what vLLM refuses")
@pytest.mark.parametrize("name", sorted(VLLM_REFUSED))
def test_vllm_refuses_at_start_what_it_cannot_run(name: str, tiny_models: dict[str, Path]) -> None:
    with pytest.raises(RuntimeError, match="Engine core initialization failed"):
        _load(name, tiny_models[name], ENGINE_MODES["vllm"])


@pytest.mark.native_only("what synthd's own engine refuses")
@pytest.mark.parametrize("name", list(REFUSED))
def test_native_refuses_what_it_cannot_run_exactly(name: str, tmp_path: Path) -> None:
    config, feature = REFUSED[name]
    config.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModel) as refused:
        load_native_engine(name, tmp_path, EngineConfig(dtype="float32"))
    assert feature in str(refused.value) and "--engine vllm" in str(refused.value)


def test_completion_prompts_get_the_tokenizers_bos_and_chat_is_not_doubled(tiny_models: dict[str, Path]) -> None:
    engine = _load("llama", tiny_models["llama"], ENGINE_MODES["vllm" if ENGINE == "vllm" else "chunked"])
    try:
        tokenizer = engine.tokenizer
        assert (
            engine.encode(SHORT)
            == tokenizer(SHORT).input_ids
            == [1, *tokenizer(SHORT, add_special_tokens=False).input_ids]
        )
        assert engine.encode(SHORT, add_special_tokens=False) == tokenizer(SHORT, add_special_tokens=False).input_ids
        messages = [{"role": "user", "content": "hi"}]
        chat = engine.render_chat(messages)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert chat == tokenizer(text, add_special_tokens=False).input_ids and chat[:2] != [1, 1]
        assert engine.render_chat(messages, add_special_tokens=True) == [1, *chat]  # vLLM: on top of the template's
        params = SamplingParams(max_tokens=1, temperature=0.0)

        async def prompt_tokens() -> int:
            async for output in engine.generate("usage", engine.encode(SHORT), params):
                return output.prompt_tokens

        assert asyncio.run(prompt_tokens()) == len(tokenizer(SHORT).input_ids)
    finally:
        asyncio.run(engine.shutdown())
