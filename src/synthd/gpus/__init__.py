"""GPU catalog, preference grammar, memory estimates, inventory and selection."""
