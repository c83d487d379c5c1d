"""``synthd eval``: an eval battery of LLM tasks, its answer checkers and the code sandbox."""
