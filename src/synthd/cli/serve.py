"""``synthd serve``: the OpenAI-compatible server."""

from typing import Annotated

import typer

from synthd.cli.common import fail


def serve(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Model to serve; repeat for several.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(help="Require this bearer token (else SYNTH_API_KEY).")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="Most sequences per batch.", min=1)] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context cap in tokens.", min=16)] = None,
    dtype: Annotated[str | None, typer.Option(help="auto | bfloat16 | float32")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve models over the OpenAI API.

    Example: synthd serve --port 8000 --model SmolLM2-135M-Instruct
    """
    import uvicorn

    from synthd.api.app import build_app
    from synthd.config import get_settings
    from synthd.models.embedded import EMBEDDED_MODEL_ID
    from synthd.models.resolve import ModelNotFound, resolve_model

    settings = get_settings()
    models = model or [EMBEDDED_MODEL_ID]
    if dtype not in (None, "auto", "bfloat16", "float32"):
        fail(f"--dtype must be auto, bfloat16 or float32, not '{dtype}'")
    for name in models:
        try:
            resolve_model(name, settings.models_dir)
        except ModelNotFound as exc:
            fail(str(exc))
    overrides = {k: v for k, v in {"max_num_seqs": max_num_seqs, "max_model_len": max_model_len, "dtype": dtype}.items() if v is not None}
    application = build_app(models, api_key or settings.api_key, **overrides)
    uvicorn.run(application, host=host, port=port, log_level=log_level)
