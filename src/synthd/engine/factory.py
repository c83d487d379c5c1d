"""Which engine serves a model, and building it."""

import importlib.util
import logging
from pathlib import Path

from synthd.engine.config import EngineConfig
from synthd.engine.protocol import Engine
from synthd.errors import InvalidRequest

log = logging.getLogger(__name__)


def vllm_available() -> bool:
    """True when the ``vllm`` package can be imported here."""
    return importlib.util.find_spec("vllm") is not None


def choose_engine(kind: str, cuda_available: bool) -> tuple[str, str]:
    """``(engine, reason)`` for ``--engine kind``: ``native`` and ``vllm`` as asked; ``auto`` picks
    vLLM when it is importable and a CUDA device is present, else the native engine.

    Raises:
        InvalidRequest: ``vllm`` asked for but not installed, or an unknown kind.
    """
    if kind == "native":
        return "native", "--engine native, the default"
    if kind == "vllm":
        if not vllm_available():
            raise InvalidRequest(
                "--engine vllm needs the vllm package: pip install 'synthd[vllm]' (docs/guides/serving.md)"
            )
        return "vllm", "--engine vllm"
    if kind != "auto":
        raise InvalidRequest(f"--engine must be native, vllm or auto, not '{kind}'")
    if not vllm_available():
        return "native", "auto: vllm is not installed"
    if not cuda_available:
        return "native", "auto: vllm is installed but no CUDA device is present"
    return "vllm", "auto: vllm is installed and a CUDA device is present"


def create_engine(
    kind: str,
    model_id: str,
    path: Path,
    config: EngineConfig,
    gpu_indices: list[int],
    memory_bytes: float | None = None,
) -> Engine:
    """Load ``path`` into a ``kind`` engine (``native`` or ``vllm``) on the given CUDA ordinals (none:
    CPU); ``memory_bytes`` (the placement's memory) sizes the KV cache where nothing else does.
    Blocking: call it from a worker thread.

    Raises:
        OSError, ValueError, RuntimeError: the model cannot be loaded.
    """
    if kind == "vllm":
        from synthd.engine.vllm.engine import load_vllm_engine

        return load_vllm_engine(model_id, path, config, gpu_indices, memory_bytes)
    from synthd.engine.native.loader import load_native_engine

    return load_native_engine(model_id, path, config, gpu_indices, memory_bytes)
