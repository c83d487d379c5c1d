"""``synthd serve``: the OpenAI-compatible server."""

import importlib.util
import logging
from typing import Annotated

import typer

from synthd.cli.common import fail

log = logging.getLogger("synthd.serve")


def serve(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Model to serve (a name, or a folder "
                                                    "served under its folder's name); repeat for several.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar=["SYNTHD_API_KEY", "SYNTH_API_KEY"],
                                                help="Require this bearer token.")] = None,
    engine: Annotated[str, typer.Option(envvar="SYNTHD_ENGINE", help="native | vllm | auto (vLLM when installed "
                                        "and a CUDA device is present).")] = "native",
    max_num_seqs: Annotated[int | None, typer.Option(help="Most sequences per batch.", min=1)] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context cap in tokens.", min=16)] = None,
    dtype: Annotated[str | None, typer.Option(help="auto | bfloat16 | float32")] = None,
    gpu_memory_utilization: Annotated[float | None, typer.Option(
        help="vLLM engine: share of each GPU's memory it may use.", min=0.05, max=1.0)] = None,
    ray_address: Annotated[str | None, typer.Option(envvar="SYNTHD_RAY_ADDRESS", help="Serve and train on this Ray "
                                                    "cluster: auto, HOST:PORT, ray://HOST:PORT, or local (a private "
                                                    "Ray here). Needs synthd[ray].")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve models over the OpenAI API.

    Example: synthd serve --port 8000 --model SmolLM2-135M-Instruct --engine auto
    Example: synthd serve --ray-address auto   (on a Ray cluster's head node; see README, Cluster)
    """
    import torch
    import uvicorn

    from synthd.api.app import build_app
    from synthd.config import get_settings
    from synthd.engine.factory import choose_engine
    from synthd.errors import SynthdError
    from synthd.models.embedded import EMBEDDED_MODEL_ID
    from synthd.models.resolve import resolve_operator_model

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s")
    settings = get_settings()
    if dtype not in (None, "auto", "bfloat16", "float32"):
        fail(f"--dtype must be auto, bfloat16 or float32, not '{dtype}'")
    if ray_address and importlib.util.find_spec("ray") is None:
        fail("--ray-address needs Ray: pip install 'synthd[ray]'")
    try:
        kind, reason = choose_engine(engine, torch.cuda.is_available())
        served = [resolve_operator_model(name, settings.models_dir) for name in model or [EMBEDDED_MODEL_ID]]
        overrides = {k: v for k, v in {"max_num_seqs": max_num_seqs, "max_model_len": max_model_len, "dtype": dtype,
                                       "gpu_memory_utilization": gpu_memory_utilization}.items() if v is not None}
        application = build_app(served, api_key or settings.api_key, kind, ray_address, **overrides)
    except SynthdError as exc:
        fail(exc.message)
    log.info("engine: %s (%s)%s", kind, reason, f"; Ray cluster at {ray_address}" if ray_address else "")
    uvicorn.run(application, host=host, port=port, log_level=log_level)
