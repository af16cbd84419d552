"""vastai_async: an asyncio-native SDK for renting Vast.ai GPU machines.

Light names (errors, timings, pacing) are imported eagerly; everything else on first use, so
``import vastai_async`` and the ``vastai-async`` command start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    OutbidError,
    PermissionDeniedError,
    ProvisioningError,
    RateLimitedError,
    ResponseValidationError,
    ServiceClosedError,
    SSHAuthError,
    SSHCommandError,
    SSHConnectError,
    SSHError,
    SSHTimeoutError,
    TeardownError,
    VastAIError,
)
from vastai_async.pacing import (
    DEFAULT_MIN_INTERVALS,
    Pacing,
)
from vastai_async.timings import (
    Timings,
)

if TYPE_CHECKING:
    from vastai_async.account_keys import (
        ensure_account_key,
    )
    from vastai_async.client import (
        VastAIClient,
    )
    from vastai_async.config import (
        VastAIConfig,
        generate_ssh_keypair,
        get_vastai_config,
    )
    from vastai_async.events import (
        CandidateChosen,
        CandidateFailed,
        CreateFailed,
        Event,
        EventCallback,
        InstanceCreated,
        InstanceDestroyed,
        ProbeAttempt,
        RaceFailed,
        RaceStarted,
        SpendUpdate,
        StatusChanged,
        WinnerChosen,
    )
    from vastai_async.hedging import (
        BootTimes,
        Hedged,
        HedgePolicy,
    )
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
    from vastai_async.provider import (
        AsyncComputeProvider,
        ReapReport,
        RentalSummary,
    )
    from vastai_async.provisioning import (
        AttemptRecord,
    )
    from vastai_async.query import (
        OfferQuery,
        parse_cli_query,
    )
    from vastai_async.rental import (
        Rental,
    )
    from vastai_async.reputation import (
        HostHistory,
        HostHistoryError,
        HostOutcome,
        HostRecorder,
        MachineEstimate,
        MarketPrior,
        OfferRanker,
        OffersRanked,
        OutcomeKind,
        RankedOffer,
        Ranking,
        RedisHostHistory,
        SQLiteHostHistory,
    )
    from vastai_async.sandbox_link import (
        sandbox_config,
    )
    from vastai_async.service import (
        VastAIService,
    )
    from vastai_async.session import (
        RetryPolicy,
        VastAISession,
    )
    from vastai_async.ssh import (
        CommandResult,
    )

__version__ = "0.1.0"

#: Public name -> module that defines it, imported on first attribute access.
_LAZY: dict[str, str] = {
    "AsyncComputeProvider": "vastai_async.provider",
    "AttemptRecord": "vastai_async.provisioning",
    "BootTimes": "vastai_async.hedging",
    "CandidateChosen": "vastai_async.events",
    "CandidateFailed": "vastai_async.events",
    "CommandResult": "vastai_async.ssh",
    "CreateFailed": "vastai_async.events",
    "CreateInstanceRequest": "vastai_async.models",
    "CreateInstanceResponse": "vastai_async.models",
    "Event": "vastai_async.events",
    "EventCallback": "vastai_async.events",
    "HedgePolicy": "vastai_async.hedging",
    "Hedged": "vastai_async.hedging",
    "HostHistory": "vastai_async.reputation",
    "HostHistoryError": "vastai_async.reputation",
    "HostOutcome": "vastai_async.reputation",
    "HostRecorder": "vastai_async.reputation",
    "Instance": "vastai_async.models",
    "InstanceCreated": "vastai_async.events",
    "InstanceDestroyed": "vastai_async.events",
    "InstanceStatus": "vastai_async.models",
    "MachineEstimate": "vastai_async.reputation",
    "MarketPrior": "vastai_async.reputation",
    "Offer": "vastai_async.models",
    "OfferQuery": "vastai_async.query",
    "OfferRanker": "vastai_async.reputation",
    "OffersRanked": "vastai_async.reputation",
    "OutcomeKind": "vastai_async.reputation",
    "ProbeAttempt": "vastai_async.events",
    "RaceFailed": "vastai_async.events",
    "RaceStarted": "vastai_async.events",
    "RankedOffer": "vastai_async.reputation",
    "Ranking": "vastai_async.reputation",
    "ReapReport": "vastai_async.provider",
    "RedisHostHistory": "vastai_async.reputation",
    "Rental": "vastai_async.rental",
    "RentalInfo": "vastai_async.models",
    "RentalSummary": "vastai_async.provider",
    "RetryPolicy": "vastai_async.session",
    "SQLiteHostHistory": "vastai_async.reputation",
    "SSHEndpoint": "vastai_async.models",
    "SSHKey": "vastai_async.models",
    "SpendUpdate": "vastai_async.events",
    "StatusChanged": "vastai_async.events",
    "Template": "vastai_async.models",
    "User": "vastai_async.models",
    "VastAIClient": "vastai_async.client",
    "VastAIConfig": "vastai_async.config",
    "VastAIService": "vastai_async.service",
    "VastAISession": "vastai_async.session",
    "ensure_account_key": "vastai_async.account_keys",
    "WinnerChosen": "vastai_async.events",
    "generate_ssh_keypair": "vastai_async.config",
    "get_vastai_config": "vastai_async.config",
    "parse_cli_query": "vastai_async.query",
    "sandbox_config": "vastai_async.sandbox_link",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vastai_async' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


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
    "BootTimes",
    "CandidateChosen",
    "CandidateFailed",
    "CommandResult",
    "ConfigError",
    "CreateFailed",
    "CreateInstanceRequest",
    "CreateInstanceResponse",
    "CreateOutcomeUnknownError",
    "Event",
    "EventCallback",
    "GoneError",
    "HedgePolicy",
    "Hedged",
    "HostHistory",
    "HostHistoryError",
    "HostKeyMismatchError",
    "HostOutcome",
    "HostRecorder",
    "Instance",
    "InstanceCreated",
    "InstanceDestroyed",
    "InstanceStatus",
    "InsufficientCreditError",
    "InternalServerError",
    "InvalidRequestError",
    "MachineEstimate",
    "MarketPrior",
    "NotFoundError",
    "Offer",
    "OfferQuery",
    "OfferRanker",
    "OfferUnavailableError",
    "OffersRanked",
    "OutbidError",
    "OutcomeKind",
    "Pacing",
    "PermissionDeniedError",
    "ProbeAttempt",
    "ProvisioningError",
    "RaceFailed",
    "RaceStarted",
    "RankedOffer",
    "Ranking",
    "RateLimitedError",
    "ReapReport",
    "RedisHostHistory",
    "Rental",
    "RentalInfo",
    "RentalSummary",
    "ResponseValidationError",
    "RetryPolicy",
    "SQLiteHostHistory",
    "SSHAuthError",
    "SSHCommandError",
    "SSHConnectError",
    "SSHEndpoint",
    "SSHError",
    "SSHKey",
    "SSHTimeoutError",
    "ServiceClosedError",
    "SpendUpdate",
    "StatusChanged",
    "TeardownError",
    "Template",
    "Timings",
    "User",
    "VastAIClient",
    "VastAIConfig",
    "VastAIError",
    "VastAIService",
    "VastAISession",
    "WinnerChosen",
    "__version__",
    "ensure_account_key",
    "generate_ssh_keypair",
    "get_vastai_config",
    "parse_cli_query",
    "sandbox_config",
]
