"""``synthd serve``: the OpenAI-compatible server."""

import importlib.util
import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from synthd.cli.common import fail

if TYPE_CHECKING:
    from synthd.models.resolve import ModelSource

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


def operator_model(name: str, models_dir: Path) -> "ModelSource":
    """What ``--model name`` serves (``resolve_operator_model``); a Hub id ``ORG/NAME`` not in the
    cache is downloaded first (``synthd.models.hub``).

    Raises:
        SynthdError: nothing by that name, here or on the Hub (the reason in its message).
    """
    from synthd.errors import InvalidRequest
    from synthd.models.hub import parse_hub_id, pull_hub_model
    from synthd.models.resolve import ModelNotFound, resolve_operator_model
    from synthd.models.shipped import PullError

    try:
        return resolve_operator_model(name, models_dir)
    except ModelNotFound:
        if parse_hub_id(name) is None:
            raise
        if "@" in name:
            raise InvalidRequest(
                f"--model {name}: serve takes ORG/NAME; pull a revision first ('synthd models pull {name}'), "
                "then serve ORG/NAME"
            ) from None
    log.info("%s is not in the Hugging Face cache: downloading it", name)
    try:
        _folder, note = pull_hub_model(name)
    except PullError as exc:
        raise InvalidRequest(str(exc)) from None
    if note:
        log.info("note: %s", note)
    return resolve_operator_model(name, models_dir)


def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model to serve (a name, or a folder served under its folder's name); repeat for several.",
        ),
    ] = None,
    chat_template: Annotated[
        list[str] | None,
        typer.Option(
            "--chat-template",
            help="A served model's chat template, as vLLM's flag: a file, or the template inline; "
            "MODEL=TEMPLATE beside several --model (repeat for several).",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Admin key: require this bearer token (setting SYNTHD_API_KEY, else SYNTH_API_KEY; an empty "
            "variable counts as unset)."
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            help="Read the admin key from this file's first line (setting SYNTHD_API_KEY_FILE).", dir_okay=False
        ),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(
            help=(
                "Comma-separated Host names to answer ('*.example.com' patterns, '*' for any); default: "
                "localhost, 127.0.0.1, ::1 and the bound host (setting SYNTHD_ALLOWED_HOSTS)."
            ),
        ),
    ] = None,
    public_metrics: Annotated[
        bool | None, typer.Option(help="Serve /metrics without a key (setting SYNTHD_PUBLIC_METRICS).")
    ] = None,
    insecure_no_auth: Annotated[bool, typer.Option(help="Allow a non-loopback --host without any API key.")] = False,
    engine: Annotated[
        str | None,
        typer.Option(
            help="native | vllm | auto (vLLM when installed and a CUDA device is present) (setting SYNTHD_ENGINE, "
            "default native)."
        ),
    ] = None,
    max_num_seqs: Annotated[
        int | None, typer.Option(help="Most sequences per batch (setting SYNTHD_MAX_NUM_SEQS).", min=1)
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(help="Context cap in tokens (setting SYNTHD_MAX_MODEL_LEN).", min=16)
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="auto | bfloat16 | float32 (setting SYNTHD_DTYPE).")] = None,
    gpu_memory_utilization: Annotated[
        float | None,
        typer.Option(
            help="vLLM engine: share of each GPU's memory it may use (setting SYNTHD_GPU_MEMORY_UTILIZATION).",
            min=0.05,
            max=1.0,
        ),
    ] = None,
    max_num_batched_tokens: Annotated[
        int | None,
        typer.Option(
            help="Tokens computed per engine step, prompt chunks and decode tokens together "
            "(setting SYNTHD_MAX_NUM_BATCHED_TOKENS).",
            min=1,
        ),
    ] = None,
    enable_prefix_caching: Annotated[
        bool | None,
        typer.Option(
            help="Reuse the keys and values of cached prompt prefixes (setting SYNTHD_ENABLE_PREFIX_CACHING, "
            "default on)."
        ),
    ] = None,
    batch_invariant: Annotated[
        bool | None,
        typer.Option(
            help="Greedy outputs do not depend on which requests share the batch (costs throughput) "
            "(setting SYNTHD_BATCH_INVARIANT).",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Serve and train on this Ray cluster: auto, HOST:PORT, ray://HOST:PORT, or local (a private "
            "Ray here). Needs synthd[ray] (setting SYNTHD_RAY_ADDRESS).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve models over the OpenAI API. Each option left out falls back to its setting
    (SYNTHD_<OPTION> in the environment; see the configuration reference).

    On a non-loopback --host, an API key is required (--api-key, --api-key-file, or a key made with
    'synthd keys create') unless --insecure-no-auth is given.

    Example: synthd serve --port 8000 --model SmolLM2-135M-Instruct --engine auto
    Example: synthd serve --model SmolLM2-135M-Instruct --model gemma-3-270m --chat-template gemma-3-270m=./turns.jinja
    Example: synthd serve --ray-address auto   (on a Ray cluster's head node; see docs/guides/cluster.md)
    """
    from synthd.api.limits import SecurityConfig
    from synthd.config import get_settings
    from synthd.errors import SynthdError
    from synthd.store.db import open_database
    from synthd.store.keys import KeyStore

    options = {
        "api_key": api_key,
        "api_key_file": api_key_file,
        "allowed_hosts": allowed_hosts,
        "public_metrics": public_metrics,
        "engine": engine,
        "max_num_seqs": max_num_seqs,
        "max_model_len": max_model_len,
        "dtype": dtype,
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_num_batched_tokens": max_num_batched_tokens,
        "enable_prefix_caching": enable_prefix_caching,
        "batch_invariant": batch_invariant,
        "ray_address": ray_address,
    }
    settings = get_settings().model_copy(update={k: v for k, v in options.items() if v is not None})
    key = admin_key(settings.api_key, settings.api_key_file)
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
    try:
        security = SecurityConfig.from_settings(settings, host)
    except SynthdError as exc:
        fail(exc.message)

    import torch
    import uvicorn

    from synthd.bootstrap import build_app
    from synthd.engine.factory import choose_engine
    from synthd.models.chat_templates import assign_chat_templates
    from synthd.models.shipped import EMBEDDED_MODEL_ID

    if settings.dtype not in ("auto", "bfloat16", "float32"):
        fail(f"--dtype must be auto, bfloat16 or float32, not '{settings.dtype}'")
    if settings.ray_address and importlib.util.find_spec("ray") is None:
        fail("--ray-address needs Ray: pip install 'synthd[ray]'")
    try:
        kind, reason = choose_engine(settings.engine, torch.cuda.is_available())
        served = [operator_model(name, settings.models_dir) for name in model or [EMBEDDED_MODEL_ID]]
        served = assign_chat_templates(served, chat_template or [])
        application = build_app(settings, served, kind, api_key=key, security=security)
    except SynthdError as exc:
        fail(exc.message)
    ray = f"; Ray cluster at {settings.ray_address}" if settings.ray_address else ""
    log.info("engine: %s (%s)%s", kind, reason, ray)
    uvicorn.run(application, host=host, port=port, log_level=log_level)
