"""The HTTP surface: OpenAI-compatible routers, wire models and error mapping."""
