"""LoRA adapters made with PEFT, and PEFT's own greedy replies: the reference served adapters must equal."""

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from synthd.engine.prompts import CHAT_TEMPLATE_FILE
from tests.support.server import MODEL

PROMPT = [{"role": "user", "content": "What is the capital of Zorbania?"}]


def make_adapter(base_dir: Path, out: Path, seed: int, **lora) -> Path:
    """A random (not zero) rank-8 LoRA on ``q_proj``/``v_proj`` of the model in ``base_dir``, saved
    to ``out``; ``seed`` fixes its weights, ``lora`` overrides :class:`peft.LoraConfig` fields."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    defaults = {"r": 8, "lora_alpha": 64, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    config = LoraConfig(**{**defaults, **lora})
    get_peft_model(model, config).save_pretrained(out)
    return out


def make_non_finite_adapter(base_dir: Path, out: Path, value: float = float("nan")) -> Path:
    """``make_adapter`` with one ``lora_B`` weight set to ``value`` (NaN: a diverged run)."""
    from safetensors.torch import load_file, save_file

    make_adapter(base_dir, out, seed=0)
    tensors = load_file(out / "adapter_model.safetensors")
    key = next(k for k in sorted(tensors) if ".lora_B." in k)
    tensors[key][0, 0] = value
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    return out


def make_mismatched_adapter(out: Path) -> Path:
    """A LoRA adapter for a tiny random Llama of another shape (hidden 64, two layers), saved to
    ``out``: its tensors cannot load onto the embedded model."""
    tiny = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=49152,
        )
    )
    get_peft_model(tiny, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    return out


def peft_greedy(models_dir: Path, model_id: str = MODEL):
    """``generate(adapter_dir | None, messages=PROMPT, max_new_tokens=16) -> str``: the base model's
    greedy reply in float32 with the PEFT adapter applied, as PEFT computes it (the reference the
    served replies must equal), in the chat template stored with the adapter, else the base's."""
    tokenizer = AutoTokenizer.from_pretrained(models_dir / model_id)
    base = AutoModelForCausalLM.from_pretrained(models_dir / model_id, dtype=torch.float32).eval()

    def generate(adapter_dir: Path | None, messages=PROMPT, max_new_tokens: int = 16) -> str:
        model = PeftModel.from_pretrained(base, adapter_dir).eval() if adapter_dir else base
        try:
            stored = adapter_dir / CHAT_TEMPLATE_FILE if adapter_dir else None
            template = stored.read_text() if stored and stored.is_file() else None
            ids = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True, chat_template=template
            )
            with torch.no_grad():
                out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
            return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        finally:
            if adapter_dir:
                model.unload()

    return generate
