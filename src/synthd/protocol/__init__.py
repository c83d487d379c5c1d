"""Wire models of the HTTP API: OpenAI shapes (and synthd extras), shared by ``api`` and ``services``."""
