"""What a race learned about each machine it touched, and how it is read from the race's events.

A :class:`HostOutcome` is one candidate's story in one race: which machine, how long from create
to ``running`` and to the first SSH login, and how it ended (:class:`OutcomeKind`). A
:class:`HostRecorder` listens to a race's events (it is one more ``on_event`` callback, so the
race itself knows nothing about it) and turns them into outcomes when the race ends, whether it
won, failed, or was cancelled. Stores (:mod:`~vastai_async.reputation.sqlite_store`,
:mod:`~vastai_async.reputation.redis_store`) keep them; the
:class:`~vastai_async.reputation.ranker.OfferRanker` reads them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import attrs

from vastai_async.errors import VastAIError
from vastai_async.events import (
    CandidateChosen,
    CandidateFailed,
    CreateFailed,
    Event,
    InstanceCreated,
    InstanceDestroyed,
    RaceFailed,
    StatusChanged,
    WinnerChosen,
)
from vastai_async.models import Offer

__all__ = [
    "HostHistory",
    "HostHistoryError",
    "HostOutcome",
    "HostRecorder",
    "OutcomeKind",
    "classify_failure",
]


class HostHistoryError(VastAIError):
    """The host history store cannot be used (unreadable file, newer schema, Redis down...)."""


class OutcomeKind:
    """How a candidate ended, as recorded in the host history (plain strings)."""

    #: Its SSH login was proven first: it became the rental.
    WON = "won"
    #: Another candidate won (or the race ended) while it was still loading.
    LOST_LOADING = "lost_loading"
    #: Another candidate won (or the race ended) after it reached ``running``.
    LOST_RUNNING = "lost_running"
    #: Never reached ``running`` within the loading deadline.
    STUCK = "stuck"
    #: The container failed to start (an OCI runtime error).
    OCI_ERROR = "oci_error"
    #: The host went ``offline`` (or ``exited``/``unknown``, or vanished from the listing).
    OFFLINE = "offline"
    #: Reached ``running`` but no SSH login within the SSH deadline.
    SSH_REFUSED = "ssh_refused"
    #: An interruptible rental was stopped by the market.
    OUTBID = "outbid"
    #: The offer was gone when we tried to create it.
    OFFER_GONE = "offer_gone"
    #: Any other failure (a bid mismatch, an API error during its create...).
    FAILED = "failed"
    #: An instance taken over by ``adopt()`` answered an SSH login: the machine works, but no
    #: boot time is known (the instance was created earlier, often by another process).
    ADOPTED = "adopted"

    #: Kinds that say the machine itself is broken: pushed back for a while by the ranker.
    FATAL = frozenset({STUCK, OCI_ERROR, OFFLINE, SSH_REFUSED})
    #: Kinds whose time to login is only known to be longer than ``elapsed_s`` (censored).
    CENSORED = frozenset({LOST_LOADING, LOST_RUNNING, STUCK, SSH_REFUSED})
    #: Every kind.
    ALL = frozenset(
        {WON, LOST_LOADING, LOST_RUNNING, STUCK, OCI_ERROR, OFFLINE, SSH_REFUSED, OUTBID}
        | {OFFER_GONE, FAILED, ADOPTED}
    )


@attrs.frozen(kw_only=True)
class HostOutcome:
    """One candidate of one race, as remembered about its machine.

    Attributes:
        machine_id: the machine (Vast's ``machine_id``).
        host_id: the host (the owner of the machine) when the offer said.
        offer_id: the offer rented (``None`` for an adopted instance: Vast's instance
            listing does not say which offer it came from).
        instance_id: the instance made from it, if any.
        kind: how it ended (:class:`OutcomeKind`).
        reason: the race's words for it.
        image: the image (or ``template:<hash>``) it was created with.
        dph_total: its price, USD/hour.
        reliability: Vast's reliability score of the offer (0..1) at the time.
        gpu_name: the offer's GPU.
        running_s: seconds from create to ``running``, when seen.
        login_s: seconds from create to the first proven SSH login (winners only).
        elapsed_s: seconds from create to the end of its part in the race.
        at: epoch seconds when it ended.
    """

    machine_id: int
    host_id: int | None = None
    offer_id: int | None
    instance_id: int | None = None
    kind: str
    reason: str = ""
    image: str | None = None
    dph_total: float | None = None
    reliability: float | None = None
    gpu_name: str | None = None
    running_s: float | None = None
    login_s: float | None = None
    elapsed_s: float | None = None
    at: float


class HostHistory(Protocol):
    """What the service and the ranker need from a history store (SQLite, Redis, your own)."""

    async def record(self, outcomes: Sequence[HostOutcome]) -> None:
        """Add outcomes (old ones age out as the store's bounds say)."""

    async def history(self, machine_ids: Iterable[int] | None = None) -> list[HostOutcome]:
        """Outcomes of these machines (``None``: every machine), newest first."""

    async def forget(self, machine_ids: Iterable[int] | None = None) -> int:
        """Drop what is known about these machines (``None``: everything); returns rows dropped."""

    async def close(self) -> None:
        """Release connections (idempotent)."""


def classify_failure(reason: str) -> str:
    """The :class:`OutcomeKind` of a candidate that failed for ``reason`` (the race's words).

    >>> classify_failure("OCI runtime create failed (status exited)")
    'oci_error'
    """
    text = reason.lower()
    if "oci runtime" in text:
        return OutcomeKind.OCI_ERROR
    if "outbid" in text:
        return OutcomeKind.OUTBID
    if "loading deadline" in text:
        return OutcomeKind.STUCK
    if "no ssh login" in text:
        return OutcomeKind.SSH_REFUSED
    if "offer unavailable" in text or "no_such_ask" in text:
        return OutcomeKind.OFFER_GONE
    if any(w in text for w in ("status offline", "status exited", "status unknown", "disappeared")):
        return OutcomeKind.OFFLINE
    return OutcomeKind.FAILED


@attrs.define
class _Track:
    offer: Offer
    chosen_at: float
    instance_id: int | None = None
    created_at: float | None = None
    running_at: float | None = None
    last_status: str | None = None
    login_s: float | None = None
    ended_at: float | None = None
    kind: str | None = None
    reason: str = ""


class HostRecorder:
    """Collects one race's events into :class:`HostOutcome` records (an ``on_event`` callback).

    Args:
        offers: the race's candidate offers (for host id, price, reliability).
        image: what the instances are created with.
    """

    def __init__(self, offers: Sequence[Offer], *, image: str | None) -> None:
        self._offers = {offer.id: offer for offer in offers}
        self._image = image
        self._tracks: dict[int, _Track] = {}  # by offer id
        self._by_instance: dict[int, _Track] = {}
        self._race_end: float | None = None

    def __call__(self, event: Event) -> None:
        """Take one event of the race."""
        if isinstance(event, CandidateChosen):
            offer = self._offers.get(event.offer_id)
            if offer is not None and offer.machine_id is not None:
                self._tracks[event.offer_id] = _Track(offer=offer, chosen_at=event.at)
            return
        if isinstance(event, InstanceCreated):
            track = self._tracks.get(event.offer_id)
            if track is not None:
                track.instance_id, track.created_at = event.instance_id, event.at
                self._by_instance[event.instance_id] = track
            return
        if isinstance(event, CreateFailed):
            track = self._tracks.get(event.offer_id)
            if "withdrawn" in event.reason:
                # Never sent (the race ended first): it says nothing about the machine.
                self._tracks.pop(event.offer_id, None)
            elif track is not None and track.kind is None:
                track.kind, track.reason = classify_failure(event.reason), event.reason
                track.ended_at = event.at
            return
        if isinstance(event, WinnerChosen | RaceFailed):
            self._race_end = self._race_end or event.at
            if isinstance(event, WinnerChosen):
                track = self._by_instance.get(event.instance_id)
                if track is not None:
                    track.kind, track.login_s, track.ended_at = "won", event.elapsed_s, event.at
                    track.reason = f"SSH login on the {event.kind} endpoint"
            return
        instance_id = getattr(event, "instance_id", None)
        track = self._by_instance.get(instance_id) if isinstance(instance_id, int) else None
        if track is None:
            return
        if isinstance(event, StatusChanged):
            track.last_status = event.new
            if event.new == "running" and track.running_at is None:
                track.running_at = event.at
        elif isinstance(event, CandidateFailed) and track.kind is None:
            track.kind, track.reason = classify_failure(event.reason), event.reason
            track.ended_at = event.at
        elif isinstance(event, InstanceDestroyed) and track.ended_at is None:
            track.ended_at = event.at

    def outcomes(self, *, now: float | None = None) -> list[HostOutcome]:
        """What the race taught, one outcome per candidate that reached a create attempt.

        Candidates still without an ending (the race was cancelled, or another won) are
        ``lost_loading`` or ``lost_running`` by their last status, censored at the race's end.
        """
        end_default = now if now is not None else time.time()
        result = []
        for track in self._tracks.values():
            offer = track.offer
            assert offer.machine_id is not None
            ended = track.ended_at or self._race_end or end_default
            kind = track.kind
            if kind is None:
                if track.instance_id is None:
                    continue  # never created (withdrawn by cancellation): nothing learned
                running = track.running_at is not None or track.last_status == "running"
                kind = OutcomeKind.LOST_RUNNING if running else OutcomeKind.LOST_LOADING
                track.reason = "another candidate won or the race ended"
            created = track.created_at
            result.append(
                HostOutcome(
                    machine_id=offer.machine_id,
                    host_id=offer.host_id,
                    offer_id=offer.id,
                    instance_id=track.instance_id,
                    kind=kind,
                    reason=track.reason,
                    image=self._image,
                    dph_total=offer.dph_total,
                    reliability=offer.reliability,
                    gpu_name=offer.gpu_name,
                    running_s=_since(created, track.running_at),
                    login_s=track.login_s,
                    elapsed_s=_since(created, ended),
                    at=ended,
                )
            )
        return result


def _since(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, end - start)
