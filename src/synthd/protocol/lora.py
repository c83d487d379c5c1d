"""Wire models of vLLM's runtime LoRA routes (vllm/entrypoints/serve/lora/protocol.py)."""

from pydantic import StrictBool, StrictInt, StrictStr

from synthd.protocol.openai import StrictModel


class LoadLoRAAdapterRequest(StrictModel):
    """``POST /v1/load_lora_adapter``: serve the PEFT LoRA folder ``lora_path`` (on the server's disk)
    as the model ``lora_name``. ``load_inplace`` (replace a loaded adapter's weights) is refused."""

    lora_name: StrictStr
    lora_path: StrictStr
    load_inplace: StrictBool = False


class UnloadLoRAAdapterRequest(StrictModel):
    """``POST /v1/unload_lora_adapter``: stop serving ``lora_name``. ``lora_int_id`` (vLLM's internal
    number) is accepted for compatibility and not used: names identify adapters."""

    lora_name: StrictStr
    lora_int_id: StrictInt | None = None
