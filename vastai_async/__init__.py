"""vastai_async: an asyncio-native SDK for renting Vast.ai GPU machines."""

from __future__ import annotations

from vastai_async.config import VastAIConfig, generate_ssh_keypair, get_vastai_config
from vastai_async.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigError,
    CreateOutcomeUnknownError,
    GoneError,
    HostKeyMismatchError,
    InsufficientCreditError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    OfferUnavailableError,
    PermissionDeniedError,
    ProvisioningError,
    RateLimitedError,
    ResponseValidationError,
    SSHAuthError,
    SSHCommandError,
    SSHConnectError,
    SSHError,
    SSHTimeoutError,
    TeardownError,
    VastAIError,
)
from vastai_async.pacing import DEFAULT_MIN_INTERVALS, Pacing
from vastai_async.timings import Timings

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MIN_INTERVALS",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "CreateOutcomeUnknownError",
    "GoneError",
    "HostKeyMismatchError",
    "InsufficientCreditError",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "OfferUnavailableError",
    "Pacing",
    "PermissionDeniedError",
    "ProvisioningError",
    "RateLimitedError",
    "ResponseValidationError",
    "SSHAuthError",
    "SSHCommandError",
    "SSHConnectError",
    "SSHError",
    "SSHTimeoutError",
    "TeardownError",
    "Timings",
    "VastAIConfig",
    "VastAIError",
    "__version__",
    "generate_ssh_keypair",
    "get_vastai_config",
]
