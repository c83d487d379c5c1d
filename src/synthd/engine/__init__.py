"""Model loading, batched generation and the per-model engines."""
