"""``synthd serve``: the OpenAI-compatible server."""

import importlib.util
import ipaddress
import logging
from pathlib import Path
from typing import Annotated

import typer

from synthd.cli.common import fail

log = logging.getLogger("synthd.serve")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def admin_key(api_key: str | None, api_key_file: Path | None) -> str | None:
    """The server's admin key from ``--api-key`` (or its environment variables) or ``--api-key-file``
    (its first line, surrounding whitespace dropped); None when neither is given.

    Raises:
        CLIError: both given, an empty key, an unreadable file.
    """
    if api_key is not None and api_key_file is not None:
        fail("give --api-key or --api-key-file, not both")
    if api_key_file is not None:
        try:
            lines = api_key_file.read_text().splitlines()
        except OSError as exc:
            fail(f"cannot read --api-key-file {api_key_file}: {exc.strerror}")
        api_key = lines[0].strip() if lines else ""
        if not api_key:
            fail(f"--api-key-file {api_key_file} is empty: put the key on its first line")
    elif api_key is not None and not api_key.strip():
        fail("--api-key is empty: give a key, or leave the option out to serve without one on loopback")
    return api_key.strip() if api_key is not None else None


def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model to serve (a name, or a folder served under its folder's name); repeat for several.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=["SYNTHD_API_KEY", "SYNTH_API_KEY"],
            show_envvar=True,
            help="Admin key: require this bearer token (an empty variable counts as unset).",
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="SYNTHD_API_KEY_FILE",
            show_envvar=True,
            help="Read the admin key from this file's first line.",
            dir_okay=False,
        ),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            envvar="SYNTHD_ALLOWED_HOSTS",
            show_envvar=True,
            help=(
                "Comma-separated Host names to answer ('*.example.com' patterns, '*' for any); default: "
                "localhost, 127.0.0.1, ::1 and the bound host."
            ),
        ),
    ] = None,
    public_metrics: Annotated[bool, typer.Option(help="Serve /metrics without a key.")] = False,
    insecure_no_auth: Annotated[bool, typer.Option(help="Allow a non-loopback --host without any API key.")] = False,
    engine: Annotated[
        str,
        typer.Option(
            envvar="SYNTHD_ENGINE", help="native | vllm | auto (vLLM when installed and a CUDA device is present)."
        ),
    ] = "native",
    max_num_seqs: Annotated[int | None, typer.Option(help="Most sequences per batch.", min=1)] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Context cap in tokens.", min=16)] = None,
    dtype: Annotated[str | None, typer.Option(help="auto | bfloat16 | float32")] = None,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(help="vLLM engine: share of each GPU's memory it may use.", min=0.05, max=1.0)
    ] = None,
    max_num_batched_tokens: Annotated[
        int | None,
        typer.Option(help="Tokens computed per engine step, prompt chunks and decode tokens together.", min=1),
    ] = None,
    enable_prefix_caching: Annotated[
        bool, typer.Option(help="Reuse the keys and values of cached prompt prefixes.")
    ] = True,
    batch_invariant: Annotated[
        bool,
        typer.Option(
            envvar="SYNTHD_BATCH_INVARIANT",
            help="Greedy outputs do not depend on which requests share the batch (costs throughput).",
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            envvar="SYNTHD_RAY_ADDRESS",
            help="Serve and train on this Ray "
            "cluster: auto, HOST:PORT, ray://HOST:PORT, or local (a private "
            "Ray here). Needs synthd[ray].",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve models over the OpenAI API.

    On a non-loopback --host, an API key is required (--api-key, --api-key-file, or a key made with
    'synthd keys create') unless --insecure-no-auth is given.

    Example: synthd serve --port 8000 --model SmolLM2-135M-Instruct --engine auto
    Example: synthd serve --ray-address auto   (on a Ray cluster's head node; see docs/guides/cluster.md)
    """
    from synthd.api.limits import SecurityConfig, default_allowed_hosts
    from synthd.config import get_settings
    from synthd.errors import SynthdError
    from synthd.store.db import open_database
    from synthd.store.keys import KeyStore

    settings = get_settings()
    key = admin_key(api_key, api_key_file)
    if (
        not is_loopback(host)
        and key is None
        and not insecure_no_auth
        and KeyStore(open_database(settings.home, settings.database_url)).count() == 0
    ):
        fail(
            f"refusing to serve on {host} without an API key: pass --api-key or --api-key-file, create one with "
            "'synthd keys create --project NAME', or pass --insecure-no-auth"
        )
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s")
    hosts = [h.strip() for h in allowed_hosts.split(",") if h.strip()] if allowed_hosts else default_allowed_hosts(host)
    if not hosts:
        fail("--allowed-hosts is empty: give host names, or '*' for any")
    try:
        security = SecurityConfig(
            allowed_hosts=tuple(hosts),
            max_body_bytes=settings.max_body_bytes,
            max_file_bytes=settings.max_file_bytes,
            public_metrics=public_metrics,
        )
    except SynthdError as exc:
        fail(exc.message)

    import torch
    import uvicorn

    from synthd.api.app import build_app
    from synthd.engine.factory import choose_engine
    from synthd.models.embedded import EMBEDDED_MODEL_ID
    from synthd.models.resolve import resolve_operator_model

    if dtype not in (None, "auto", "bfloat16", "float32"):
        fail(f"--dtype must be auto, bfloat16 or float32, not '{dtype}'")
    if ray_address and importlib.util.find_spec("ray") is None:
        fail("--ray-address needs Ray: pip install 'synthd[ray]'")
    try:
        kind, reason = choose_engine(engine, torch.cuda.is_available())
        served = [resolve_operator_model(name, settings.models_dir) for name in model or [EMBEDDED_MODEL_ID]]
        overrides = {
            k: v
            for k, v in {
                "max_num_seqs": max_num_seqs,
                "max_model_len": max_model_len,
                "dtype": dtype,
                "gpu_memory_utilization": gpu_memory_utilization,
                "max_num_batched_tokens": max_num_batched_tokens,
            }.items()
            if v is not None
        }
        overrides |= {"enable_prefix_caching": enable_prefix_caching, "batch_invariant": batch_invariant}
        application = build_app(served, key, kind, security=security, ray_address=ray_address, **overrides)
    except SynthdError as exc:
        fail(exc.message)
    log.info("engine: %s (%s)%s", kind, reason, f"; Ray cluster at {ray_address}" if ray_address else "")
    uvicorn.run(application, host=host, port=port, log_level=log_level)
