"""The LoRA targets a fine-tuning job gets when it names none: found from the architecture."""

import pytest
from transformers import LlamaConfig, Phi3Config

from synthd.models.adapters import default_lora_targets, linear_modules


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4),
            ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        ),
        (  # fused projections
            Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4),
            ("o_proj", "down_proj", "gate_up_proj", "qkv_proj"),
        ),
    ],
)
def test_every_linear_module_but_the_output_head(tmp_path, config, expected: tuple[str, ...]) -> None:
    config.save_pretrained(tmp_path)
    assert default_lora_targets(linear_modules(tmp_path)) == expected
