"""vastai_async: an asyncio-native SDK for renting Vast.ai GPU machines."""

from __future__ import annotations

from vastai_async._sandbox_link import sandbox_config
from vastai_async.client import VastAIClient
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
from vastai_async.events import Event
from vastai_async.models import (
    CreateInstanceRequest,
    CreateInstanceResponse,
    Instance,
    InstanceStatus,
    Offer,
    RentalInfo,
    SSHEndpoint,
    SSHKey,
    Template,
    User,
)
from vastai_async.pacing import DEFAULT_MIN_INTERVALS, Pacing
from vastai_async.provider import AsyncComputeProvider, ReapReport, RentalSummary
from vastai_async.provisioning import AttemptRecord
from vastai_async.query import OfferQuery, parse_cli_query
from vastai_async.rental import Rental
from vastai_async.service import VastAIService
from vastai_async.session import VastAISession
from vastai_async.ssh import CommandResult
from vastai_async.timings import Timings

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MIN_INTERVALS",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncComputeProvider",
    "AttemptRecord",
    "AuthenticationError",
    "BadRequestError",
    "CommandResult",
    "ConfigError",
    "CreateInstanceRequest",
    "CreateInstanceResponse",
    "CreateOutcomeUnknownError",
    "Event",
    "GoneError",
    "HostKeyMismatchError",
    "Instance",
    "InstanceStatus",
    "InsufficientCreditError",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "Offer",
    "OfferQuery",
    "OfferUnavailableError",
    "Pacing",
    "PermissionDeniedError",
    "ProvisioningError",
    "RateLimitedError",
    "ReapReport",
    "Rental",
    "RentalInfo",
    "RentalSummary",
    "ResponseValidationError",
    "SSHAuthError",
    "SSHCommandError",
    "SSHConnectError",
    "SSHEndpoint",
    "SSHError",
    "SSHKey",
    "SSHTimeoutError",
    "TeardownError",
    "Template",
    "Timings",
    "User",
    "VastAIClient",
    "VastAIConfig",
    "VastAIError",
    "VastAIService",
    "VastAISession",
    "__version__",
    "generate_ssh_keypair",
    "get_vastai_config",
    "parse_cli_query",
    "sandbox_config",
]
