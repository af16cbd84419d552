"""Typed progress events of a provisioning race, and their in-order delivery.

Every step of a race emits one event to the optional ``on_event`` callback (sync or async,
awaited in order) and to the logger. An exception in a callback is logged and never breaks the
race: a progress display must not cost anyone a machine. A callback that keeps failing is logged
with its traceback once, then as a count (at 2, 4, 8, ... failures), not once per event.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import attrs

from vastai_async._logging import get_logger

__all__ = [
    "CandidateChosen",
    "CandidateFailed",
    "CreateFailed",
    "Event",
    "EventCallback",
    "EventEmitter",
    "InstanceCreated",
    "InstanceDestroyed",
    "Outbid",
    "ProbeAttempt",
    "RaceFailed",
    "RaceStarted",
    "SSHKeyPath",
    "SpendUpdate",
    "StatusChanged",
    "WinnerChosen",
]

_log = get_logger(__name__)


@attrs.frozen(kw_only=True)
class Event:
    """Base of every event.

    Attributes:
        race_id: the race that emitted it.
        job_id: the caller's job id.
        at: epoch seconds when it happened.
    """

    race_id: str
    job_id: str
    at: float = attrs.field(factory=time.time)


@attrs.frozen(kw_only=True)
class RaceStarted(Event):
    """A race began with this many candidates and fan-out."""

    candidates: int
    fan_out: int


@attrs.frozen(kw_only=True)
class SSHKeyPath(Event):
    """Where the SSH public key goes for this service's rentals.

    Attributes:
        path: ``"account"`` (registered on the account before the first create; no
            per-instance attach) or ``"instance"`` (attached to each instance after create).
        key_id: the account key's id when ``path == "account"``.
        added: whether the key was added to the account now (``False``: it was there already).
        reason: why the account path was not taken, when it was not.
    """

    path: str
    key_id: int | None = None
    added: bool = False
    reason: str | None = None


@attrs.frozen(kw_only=True)
class CandidateChosen(Event):
    """An offer was picked to be created now."""

    offer_id: int
    machine_id: int | None
    gpu_name: str | None
    dph_total: float | None


@attrs.frozen(kw_only=True)
class InstanceCreated(Event):
    """Vast accepted the create: an instance exists (and bills storage) from now on."""

    offer_id: int
    instance_id: int
    adopted: bool = False  # found by label after a lost create answer


@attrs.frozen(kw_only=True)
class CreateFailed(Event):
    """A create was refused (e.g. the offer is gone); the next reserve takes its place."""

    offer_id: int
    reason: str


@attrs.frozen(kw_only=True)
class StatusChanged(Event):
    """A candidate's ``actual_status`` changed."""

    instance_id: int
    old: str | None
    new: str | None
    status_msg: str | None = None


@attrs.frozen(kw_only=True)
class ProbeAttempt(Event):
    """One SSH login attempt on one endpoint."""

    instance_id: int
    kind: str
    host: str
    port: int
    attempt: int
    ok: bool
    reason: str | None = None


@attrs.frozen(kw_only=True)
class CandidateFailed(Event):
    """A candidate was dropped (fatal state, deadline, ...) and will be destroyed."""

    offer_id: int
    instance_id: int | None
    reason: str


@attrs.frozen(kw_only=True)
class WinnerChosen(Event):
    """First proven login: this instance is the rental."""

    offer_id: int
    instance_id: int
    host: str
    port: int
    kind: str
    elapsed_s: float


@attrs.frozen(kw_only=True)
class InstanceDestroyed(Event):
    """Vast accepted the destroy of a candidate (loser, failed, or at teardown).

    Teardown then confirms with a listing that it is gone before the race returns.
    """

    instance_id: int
    reason: str
    already_gone: bool = False


@attrs.frozen(kw_only=True)
class Outbid(Event):
    """An interruptible rental was stopped by the market (see ``Instance.is_outbid``).

    Attributes:
        instance_id: the instance.
        bid: the bid it held, USD/hour, when known.
        min_bid: the machine's minimum bid when it was seen stopped, when known.
    """

    instance_id: int
    bid: float | None = None
    min_bid: float | None = None


@attrs.frozen(kw_only=True)
class SpendUpdate(Event):
    """Estimated money accrued by this race's instances so far (USD)."""

    total_usd: float


@attrs.frozen(kw_only=True)
class RaceFailed(Event):
    """The race ended without a winner."""

    reason: str


EventCallback = Callable[[Event], Awaitable[None] | None]
"""What ``on_event`` takes: called with each event; may return an awaitable (then awaited)."""


class EventEmitter:
    """Delivers events in order to callbacks and the logger; never lets a callback break a race."""

    def __init__(
        self, callbacks: Sequence[EventCallback | None], logger: logging.Logger | None = None
    ) -> None:
        self._callbacks = [cb for cb in callbacks if cb is not None]
        self._log = logger or _log
        #: Failures so far, per callback (by position).
        self.failures = [0] * len(self._callbacks)

    async def emit(self, event: Event) -> None:
        """Log and deliver one event."""
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("event %s", event)
        for index, callback in enumerate(self._callbacks):
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self._failed(index, callback, event)

    def _failed(self, index: int, callback: EventCallback, event: Event) -> None:
        self.failures[index] += 1
        count = self.failures[index]
        name = getattr(callback, "__qualname__", type(callback).__name__)
        if count == 1:
            self._log.exception(
                "on_event callback %s failed on %s; ignored (later failures are counted)",
                name,
                type(event).__name__,
            )
        elif count & (count - 1) == 0:  # a power of two: the log grows with log2(failures)
            self._log.warning("on_event callback %s has failed %d times; ignored", name, count)
