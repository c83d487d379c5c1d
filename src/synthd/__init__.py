"""synthd: a self-hostable LLM backend speaking the OpenAI API."""

__version__ = "0.1.0"
