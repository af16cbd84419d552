"""The data a race works with: probe outcomes, attempt records, results, candidates.

Split from ``provisioning.py`` so the race engine reads as control flow only.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import attrs

from vastai_async.models import (
    Instance,
    Offer,
    SSHEndpoint,
)

__all__ = [
    "AttemptRecord",
    "ProbeFn",
    "ProbeOutcome",
    "RaceClient",
    "RaceResult",
    "new_race_id",
]


def new_race_id() -> str:
    """A short random race id (label-safe)."""
    return secrets.token_hex(4)


@attrs.frozen(kw_only=True)
class ProbeOutcome:
    """One SSH login attempt's result.

    Attributes:
        ok: the login worked and ``true`` ran.
        reason: why it failed (refused, timeout, permission denied ...).
        host_key: the server's OpenSSH host key line, captured on success.
    """

    ok: bool
    reason: str | None = None
    host_key: str | None = None


ProbeFn = Callable[[SSHEndpoint], Awaitable[ProbeOutcome]]


@attrs.frozen(kw_only=True)
class AttemptRecord:
    """What happened to one offer tried by a race.

    Attributes:
        offer_id: the offer.
        machine_id: its machine.
        instance_id: the instance made from it, if any.
        last_status: the last ``actual_status`` seen.
        outcome: ``won``, ``failed``, ``lost`` (another candidate won) or ``not_created``.
        reason: why it ended that way.
        started_at: epoch seconds when the race picked it.
        ended_at: epoch seconds when it ended.
        spend_usd: estimated money it cost (USD, price x time alive on our clock).
    """

    offer_id: int
    machine_id: int | None
    instance_id: int | None
    last_status: str | None
    outcome: str
    reason: str
    started_at: float
    ended_at: float
    spend_usd: float

    def __str__(self) -> str:
        inst = f" instance {self.instance_id}" if self.instance_id is not None else ""
        status = f" (last status {self.last_status})" if self.last_status else ""
        return f"offer {self.offer_id}{inst}: {self.outcome}: {self.reason}{status}"


@attrs.frozen(kw_only=True)
class RaceResult:
    """The winner of a race, before it is wrapped into a :class:`~vastai_async.Rental`."""

    race_id: str
    label: str
    offer: Offer
    instance_id: int
    endpoint: SSHEndpoint
    host_key: str
    created_at: float
    ready_at: float
    attempts: tuple[AttemptRecord, ...]


class _CandidateFailure(Exception):
    """A candidate ended without a login; ``reason`` says why."""

    def __init__(self, reason: str, *, last_status: str | None = None) -> None:
        self.reason = reason
        self.last_status = last_status
        super().__init__(reason)


@attrs.define
class _Candidate:
    offer: Offer
    started_at: float
    instance_id: int | None = None
    created_at: float | None = None
    created_monotonic: float | None = None
    last_status: str | None = None


@attrs.frozen
class _Win:
    candidate: _Candidate
    endpoint: SSHEndpoint
    host_key: str


class RaceClient(Protocol):
    """What a race needs from the REST client besides custody (key attach, label lookups)."""

    async def attach_ssh_key(self, instance_id: int, public_key: str) -> object: ...

    async def list_instances(
        self, *, label: str | None = None, ids: Sequence[int] | None = None
    ) -> list[Instance]: ...
