"""Models from the Hugging Face Hub, for users who have one: ``synthd models pull ORG/NAME[@REVISION]``
and ``synthd serve --model ORG/NAME``.

Downloads go through ``huggingface_hub`` into its cache (``HF_HOME``/``HF_HUB_CACHE``), which
honours ``HF_TOKEN`` (gated and private models), ``HF_ENDPOINT`` (a mirror, or a local server) and
resumes interrupted files; ``resolve_model`` then finds the snapshot offline. ``config.json`` comes
first: a model no engine here can run is refused before its weights are fetched. Only what serving
and fine-tuning read is downloaded (``ALLOW_PATTERNS``: configs, safetensors weights, tokenizer and
chat-template files), never ``.bin``/``.gguf``/ONNX copies of the same weights.
"""

import json
import re
from pathlib import Path

from synthd.engine.factory import vllm_available
from synthd.engine.native.support import UnsupportedModel, check_native_support
from synthd.models.resolve import NAME_PATTERN
from synthd.models.shipped import PullError

ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.tiktoken", "*.txt"]
REACHABLE_TIMEOUT_S = 10.0
MAX_NAME_CHARS = 96
"""The Hub's longest organisation or repository name."""
REVISION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
"""A branch, tag or commit: git-ref characters, never ``..`` (it names a folder in the cache)."""


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` for ``ORG/NAME`` or ``ORG/NAME@REVISION`` (``REVISION_PATTERN``), else None."""
    repo_id, at, revision = name.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(
        NAME_PATTERN.fullmatch(p) and ".." not in p and len(p) <= MAX_NAME_CHARS for p in parts
    ):
        return None
    if at and (not REVISION_PATTERN.fullmatch(revision) or ".." in revision):
        return None
    return repo_id, revision or None


def pull_hub_model(repo_id: str, revision: str | None = None) -> tuple[Path, str | None]:
    """Download ``repo_id`` at ``revision`` (default the main branch) into the Hugging Face cache;
    return its snapshot folder and a note for the user (None, or why only ``--engine vllm`` runs it).
    Progress bars are huggingface_hub's.

    Raises:
        PullError: ``HF_HUB_OFFLINE`` is set, the Hub cannot be reached, the repository or revision does not exist (or needs
            ``HF_TOKEN``), it is not a transformers model, or no engine here runs its architecture.
    """
    from huggingface_hub import constants, hf_hub_download, snapshot_download

    if constants.HF_HUB_OFFLINE:
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            cached = snapshot_download(repo_id, revision=revision, local_files_only=True, allow_patterns=ALLOW_PATTERNS)
            return Path(cached), None
        except LocalEntryNotFoundError:
            raise PullError(
                f"{repo_id} is not in the Hugging Face cache, and HF_HUB_OFFLINE is set: nothing is downloaded"
            ) from None
    _check_reachable(repo_id)
    config_file = _fetch(lambda: hf_hub_download(repo_id, "config.json", revision=revision), repo_id)
    note = _accepted(repo_id, Path(config_file))
    folder = _fetch(lambda: snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS), repo_id)
    return Path(folder), note


def _unreachable(repo_id: str) -> PullError:
    from huggingface_hub import constants

    return PullError(
        f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} to download {repo_id} "
        "(offline? set HF_ENDPOINT for a mirror)"
    )


def _check_reachable(repo_id: str) -> None:
    """Fail at once when the Hub's host does not answer at all (huggingface_hub would retry with
    backoff for about half a minute first); any HTTP answer will do."""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=REACHABLE_TIMEOUT_S)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        raise _unreachable(repo_id) from None
    except httpx.UnsupportedProtocol:
        raise PullError(f"HF_ENDPOINT '{constants.ENDPOINT}' is not an http:// or https:// URL") from None
    except httpx.HTTPError as exc:
        raise PullError(f"the Hugging Face Hub at {constants.ENDPOINT} did not answer: {exc}") from None


def _fetch(download, repo_id: str) -> str:
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return download()
    except GatedRepoError:
        raise PullError(f"{repo_id} is gated on the Hub: accept its terms there and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise PullError(f"{repo_id}: no such model on the Hub (a private one needs HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise PullError(f"{repo_id}: no such revision on the Hub") from None
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: no usable answer, nothing cached
        raise PullError(
            f"the Hugging Face Hub at {constants.ENDPOINT} gave no usable answer for {repo_id} (it answered with "
            "an error, or stopped answering) and nothing of it is cached"
        ) from None
    except EntryNotFoundError:
        raise PullError(f"{repo_id} has no config.json: not a transformers model") from None
    except HfHubHTTPError as exc:  # 401 with a bad HF_TOKEN, 5xx, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PullError(f"the Hugging Face Hub at {constants.ENDPOINT} refused {repo_id}: {first}") from None
    except httpx.HTTPError as exc:
        raise PullError(
            f"downloading {repo_id} from {constants.ENDPOINT} failed: {type(exc).__name__}: {exc}"
        ) from None


def _accepted(repo_id: str, config_file: Path) -> str | None:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(config_file.parent)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as exc:
        raise PullError(f"{repo_id}: its config.json is not one transformers can read ({exc})") from None
    try:
        check_native_support(config)
    except UnsupportedModel as exc:
        if not vllm_available():
            raise PullError(f"{repo_id}: {exc} (vLLM is not installed here: pip install 'synthd[vllm]')") from None
        return str(exc)
    return None
