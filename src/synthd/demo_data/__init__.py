"""The demo's training data: facts to teach by SFT and a style to teach by DPO, each with held-out
questions (``synthd demo``, and the tests and benchmarks that train the same way). Package data,
read through ``importlib.resources`` so that an installed wheel has it too."""

from importlib.resources import files
from importlib.resources.abc import Traversable

DEMO_DATA: Traversable = files(__name__)
"""The folder of ``sft_facts.jsonl``, ``sft_facts_heldout.jsonl``, ``dpo_style.jsonl`` and
``dpo_style_heldout.jsonl``."""
