"""The native engine: continuous batching on a Hugging Face causal LM, in one engine thread."""
