"""Names → things: model ids, the embedded model, resolution, adapters, the model pool."""
