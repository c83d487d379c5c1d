"""The unified ``LM`` client: synthd, OpenAI, Anthropic, Together and any OpenAI-compatible server."""

from synthd.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    LMError,
    MissingCredentialsError,
    NotFoundError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    StreamInterruptedError,
    StructuredOutputError,
    UnprocessableEntityError,
)
from synthd.client.lm import LM
from synthd.client.response import FunctionCall, LMResponse, ToolCall, Usage

__all__ = [
    "LM",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ConflictError",
    "FunctionCall",
    "LMError",
    "LMResponse",
    "MissingCredentialsError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProviderError",
    "RateLimitError",
    "StreamInterruptedError",
    "StructuredOutputError",
    "ToolCall",
    "UnprocessableEntityError",
    "Usage",
]
