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
    StructuredOutputError,
    UnprocessableEntityError,
)
from synthd.client.lm import LM
from synthd.client.response import FunctionCall, LMResponse, ToolCall, Usage

__all__ = [
    "LM", "LMResponse", "ToolCall", "FunctionCall", "Usage", "LMError", "ConfigurationError",
    "MissingCredentialsError", "APIConnectionError", "APITimeoutError", "APIStatusError", "BadRequestError",
    "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError", "UnprocessableEntityError",
    "RateLimitError", "ProviderError", "StructuredOutputError",
]
