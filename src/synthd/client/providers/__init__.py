"""Providers behind ``LM``, registered by name."""

from synthd.client.providers.anthropic_messages import AnthropicProvider
from synthd.client.providers.base import Provider
from synthd.client.providers.openai_chat import (
    OpenAIChatProvider,
    OpenAICompatibleProvider,
    SynthdProvider,
    TogetherProvider,
)

PROVIDERS: dict[str, type[Provider]] = {
    cls.name: cls
    for cls in (SynthdProvider, OpenAIChatProvider, AnthropicProvider, TogetherProvider, OpenAICompatibleProvider)
}
"""Every provider ``LM`` knows, by the name used in ``provider=`` and in ``name/model`` prefixes."""

__all__ = ["PROVIDERS", "Provider", "SynthdProvider"]
