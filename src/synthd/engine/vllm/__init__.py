"""vLLM's ``AsyncLLM`` behind synthd's engine protocol (``engine.vllm.engine``). Importing this package
does not import vLLM: ``engine.vllm.lora`` sizes LoRA slots for servers that never load it."""
