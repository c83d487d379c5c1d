"""Which provider serves a model name: explicit ``provider=``, a ``provider/`` prefix, or an
unambiguous name pattern; anything else is an error saying how to disambiguate."""

import re

from synthd.client.errors import ConfigurationError
from synthd.client.providers import PROVIDERS
from synthd.models.shipped import EMBEDDED_MODEL_ID

_OPENAI_NAME = re.compile(r"^(gpt-|chatgpt-|o[1-9](-|$))")
"""OpenAI's chat model families (platform.openai.com/docs/models): ``gpt-*``, ``chatgpt-*``, ``o1``,
``o3-mini``, ``o4-mini``…"""
_OPENAI_FINE_TUNE = re.compile(r"^ft:(gpt-|chatgpt-|o[1-9](-|:)|davinci-|babbage-)")
"""OpenAI fine-tune ids: ``ft:<openai base>:<org>:<suffix>:<id>``."""
_ANTHROPIC_NAME = re.compile(r"^claude-")
_SYNTHD_NAMES = {EMBEDDED_MODEL_ID, f"HuggingFaceTB/{EMBEDDED_MODEL_ID}"}


def route(model: str, provider: str | None = None, base_url: str | None = None) -> tuple[str, str]:
    """``(provider name, model name as the provider knows it)`` for ``model``.

    Order: ``provider=``; a known provider name before the first ``/`` (``anthropic/claude-3-haiku-
    20240307``, ``together/meta-llama/…``); OpenAI names (``gpt-*``, ``o1``/``o3``/``o4-*``, OpenAI
    ``ft:`` ids) → ``openai``; ``claude-*`` → ``anthropic``; other ``ft:`` ids and the embedded model →
    ``synthd``; else, with a ``base_url``, ``openai_compatible``.

    Raises ConfigurationError: an unknown provider, an empty model, or a name no rule claims.
    """
    if not model or not model.strip():
        raise ConfigurationError("model must be a non-empty name")
    if provider is not None:
        if provider not in PROVIDERS:
            raise ConfigurationError(f"unknown provider {provider!r}; known: {', '.join(PROVIDERS)}")
        prefix = f"{provider}/"
        return provider, model.removeprefix(prefix) if model.startswith(prefix) else model
    head, slash, rest = model.partition("/")
    if slash and head in PROVIDERS:
        if not rest.strip():
            raise ConfigurationError(f"no model name after '{head}/'")
        return head, rest
    if model.strip() == "ft:":
        raise ConfigurationError("'ft:' needs a fine-tuned model id after it")
    if _OPENAI_NAME.match(model) or _OPENAI_FINE_TUNE.match(model):
        return "openai", model
    if _ANTHROPIC_NAME.match(model):
        return "anthropic", model
    if model.startswith("ft:") or model in _SYNTHD_NAMES:
        return "synthd", model
    if base_url:
        return "openai_compatible", model
    raise ConfigurationError(
        f"cannot tell which provider serves {model!r}: pass provider= (one of {', '.join(PROVIDERS)}) "
        f"or prefix the name, e.g. 'together/{model}' or 'synthd/{model}'"
    )
