"""Custody: the one owner of every instance a service creates, until it is confirmed gone.

The no-leak promise lives here and nowhere else (design.md, "The race", step 6). Every path that
creates or destroys an instance goes through one :class:`Custody` per service: races create
through it, hand their losers to it, and settle with it; ``terminate_instance`` and ``reap``
destroy through it; ``close()`` drains it before the HTTP session closes.

What custody guarantees, per create decided by a race (a :class:`Lot` groups one race's):

- **Not sent yet** when its race ends (waiting for the create route's pacing slot, or between
  two attempts that surely never arrived): it is withdrawn and never sent.
- **In flight**: it stays in custody; when it answers, the new instance is destroyed at once.
- **Answer lost** (timeout, dropped connection, 5xx): custody lists the race's label every tick
  until an unknown instance carrying it shows up (and is destroyed) or the window in which the
  server could still carry the create out has passed; then a WARNING names the label and the
  ``reap`` command that finds it. Nothing ends custody silently.
- **Created**: destroyed (one bulk destroy per tick for everything doomed, across races) and
  confirmed gone by a listing, retried every tick until confirmed.

Waiting is bounded in real time per call (:meth:`Custody.settle`, :meth:`Custody.destroy`,
:meth:`Custody.drain`): past the bound a :class:`~vastai_async.TeardownError` names every
instance and label still unresolved for that call, and custody keeps working on them in the
background until the service closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import attrs

from vastai_async._logging import get_logger
from vastai_async.errors import (
    APIStatusError,
    AuthenticationError,
    CreateOutcomeUnknownError,
    OfferUnavailableError,
    PermissionDeniedError,
    TeardownError,
    VastAIError,
)
from vastai_async.models import CreateInstanceRequest, CreateInstanceResponse, Instance

__all__ = ["CreateWithdrawnError", "Custody", "CustodyClient", "Lot", "reap_command"]

_log = get_logger(__name__)

#: Called when an instance of a lot is confirmed gone: (instance id, reason, already gone).
GoneCallback = Callable[[int, str, bool], Awaitable[None]]


class CreateWithdrawnError(VastAIError):
    """A create was withdrawn by custody before it was sent (its race had ended)."""


class CustodyClient(Protocol):
    """What custody needs from the REST client (:class:`~vastai_async.client.VastAIClient`)."""

    async def create_instance(
        self,
        offer_id: int,
        request: CreateInstanceRequest,
        *,
        before_send: Callable[[], None] | None = None,
    ) -> CreateInstanceResponse: ...

    async def list_instances(
        self, *, label: str | None = None, ids: Sequence[int] | None = None
    ) -> list[Instance]: ...

    async def destroy_instance(self, instance_id: int) -> bool: ...

    async def destroy_instances(self, instance_ids: Sequence[int]) -> object: ...


def reap_command(label: str) -> str:
    """The CLI line that destroys whatever carries ``label`` (its job's instances)."""
    parts = label.split(":")
    if len(parts) >= 3 and parts[0] == "vastai-async":
        return f"vastai-async reap --owner {parts[1]} --job-id {parts[2]}"
    return "vastai-async reap"


@attrs.define(eq=False)
class _Ticket:
    """One create decided by a race, from the decision until it is answered or withdrawn."""

    lot: Lot
    offer_id: int
    sending: bool = False
    withdrawn: bool = False
    task: asyncio.Task[int] | None = None

    def before_send(self) -> None:
        # Called by the session right before the request leaves (no suspension in between):
        # the last moment a create can still be taken back without ever reaching Vast.
        if self.withdrawn:
            raise CreateWithdrawnError(
                f"create on offer {self.offer_id} withdrawn before it was sent (its race ended)",
            )
        self.sending = True


@attrs.define(eq=False)
class _Doom:
    """An instance custody must destroy and confirm gone."""

    reason: str
    lots: set[Lot] = attrs.field(factory=set)
    sent_at: float | None = None


@attrs.define(eq=False)
class Lot:
    """What one race (or one terminate/reap call) put in custody.

    Attributes:
        label: the label every instance of the lot carries (``None`` for terminate/reap).
        live: instances created for the race and not doomed (candidates, the winner).
        pending: doomed instances not yet confirmed gone.
        results: confirmed gone: ``True`` destroyed by us, ``False`` already gone.
        lost_creates: creates of it whose answer was lost (each may have rented one instance).
        found_by_label: unknown instances its label showed, not (yet) claimed by a create's
            answer: each stands for one lost create. One seen while its create's answer was
            still on the way is taken out again when that answer arrives, so it never stands in
            for a lost create whose instance has not landed yet.
    """

    label: str | None
    on_gone: GoneCallback | None = None
    live: set[int] = attrs.field(factory=set)
    pending: set[int] = attrs.field(factory=set)
    results: dict[int, bool] = attrs.field(factory=dict)
    known: set[int] = attrs.field(factory=set)
    tickets: set[_Ticket] = attrs.field(factory=set)
    settling: bool = False
    kept: int | None = None
    lost_creates: int = 0
    found_by_label: set[int] = attrs.field(factory=set)
    watch_until: float | None = None
    sweep_due: bool = False
    error: VastAIError | None = None

    @property
    def resolved(self) -> bool:
        """No create of it in flight and nothing of it waiting to be confirmed gone."""
        return not self.tickets and not self.pending

    @property
    def lost_unfound(self) -> bool:
        """Its race ended with creates whose answer was lost and not all of them found."""
        return (
            self.settling
            and self.label is not None
            and len(self.found_by_label) < self.lost_creates
        )

    def watching(self, now: float) -> bool:
        """Whether its label is still swept for creates whose answer was lost."""
        # One sweep right after the race ends, however old the lost answer: an instance that
        # landed while the race ran (and that the race did not adopt) carries its label.
        return self.lost_unfound and (
            self.sweep_due or (self.watch_until is not None and now < self.watch_until)
        )

    def window_closed(self, now: float) -> bool:
        """Its lost creates' watch window passed (after the sweep due) with some never found."""
        return (
            self.lost_unfound
            and not self.sweep_due
            and self.watch_until is not None
            and now >= self.watch_until
        )

    def unresolved_labels(self, now: float) -> list[str]:
        """Its label, when a create of it is in flight or its lost answer is still watched."""
        if self.label is not None and (self.tickets or self.watching(now)):
            return [self.label]
        return []


class Custody:
    """Owns every instance of one service from the decision to create until confirmed gone.

    Args:
        client: the REST client.
        interval_s: the engine's tick (the service's poll interval).
        lost_create_window_s: how long after a create's answer was lost its label is swept
            (the server may still carry it out meanwhile).
        logger: where warnings go.
    """

    def __init__(
        self,
        client: CustodyClient,
        *,
        interval_s: float,
        lost_create_window_s: float,
        logger: logging.Logger | None = None,
    ) -> None:
        self._client = client
        self._interval_s = interval_s
        self._window_s = lost_create_window_s
        self._log = logger or _log
        self._lots: set[Lot] = set()
        self._doomed: dict[int, _Doom] = {}
        self._changed: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._engine: asyncio.Task[None] | None = None
        self._closed = False
        #: Ticks run so far (tests and benchmarks read it).
        self.ticks = 0
        #: Instances a label sweep saw before their create's answer came (the chaos run reads
        #: it: each is a moment when a lost create's instance could have gone unwatched).
        self.reclaimed = 0

    # -- lots -----------------------------------------------------------------------------

    def open_lot(self, label: str | None, on_gone: GoneCallback | None = None) -> Lot:
        """Start tracking what one race (``label``) or one destroy call puts in custody."""
        lot = Lot(label=label, on_gone=on_gone)
        self._lots.add(lot)
        return lot

    def live_ids(self) -> set[int]:
        """Instances of races still running (never to be reaped from under them)."""
        return {i for lot in self._lots if not lot.settling for i in lot.live}

    def unresolved(self) -> tuple[list[int], list[str]]:
        """Every instance and label custody has not resolved yet."""
        now = time.monotonic()
        ids = sorted(set(self._doomed) | {i for lot in self._lots for i in lot.pending})
        labels = sorted({lbl for lot in self._lots for lbl in lot.unresolved_labels(now)})
        return ids, labels

    # -- creates --------------------------------------------------------------------------

    async def create(self, lot: Lot, offer_id: int, request: CreateInstanceRequest) -> int:
        """Create an instance for ``lot``'s race; return its id.

        The create runs as custody's own task: cancelling the caller does not cancel it. Its
        outcome is recorded in the lot before anyone can see it, so an answer arriving after
        the race ended dooms the new instance at once.

        Raises:
            CreateWithdrawnError: the lot settled before the create was sent.
            CreateOutcomeUnknownError: the answer was lost (the lot's label is then watched).
            VastAIError: whatever else the create raised (nothing was rented).
        """
        if lot.settling:
            raise CreateWithdrawnError(f"create on offer {offer_id} after its race ended")
        ticket = _Ticket(lot=lot, offer_id=offer_id)
        lot.tickets.add(ticket)
        ticket.task = asyncio.create_task(
            self._create(ticket, request), name=f"vastai-async create offer {offer_id}"
        )
        ticket.task.add_done_callback(_retrieve)
        return await asyncio.shield(ticket.task)

    async def _create(self, ticket: _Ticket, request: CreateInstanceRequest) -> int:
        lot = ticket.lot
        try:
            response = await self._client.create_instance(
                ticket.offer_id, request, before_send=ticket.before_send
            )
            instance_id = int(response.new_contract)
        except BaseException as err:
            if ticket.sending and _may_have_created(err):
                # The request left and no answer proves it did nothing (a lost answer, or any
                # failure after sending that is not the server's refusal): watch its label.
                if not isinstance(err, CreateOutcomeUnknownError):
                    self._log.warning(
                        "create on offer %s failed after it was sent (%s); watching label %s",
                        ticket.offer_id,
                        type(err).__name__,
                        lot.label,
                    )
                lot.lost_creates += 1
                lot.watch_until = time.monotonic() + self._window_s
                lot.sweep_due = lot.settling
                self._forget_ticket(ticket, wake=True)
                raise
            self._forget_ticket(ticket, wake=False)
            raise
        # Record the instance before the ticket goes: a waiter must never see the lot resolved
        # while an instance of it is neither live nor doomed.
        lot.known.add(instance_id)
        # A sweep may have listed it before this answer came: then it was this create's, not a
        # lost one's, and the label is watched again (within the window) for the lost one.
        if instance_id in lot.found_by_label:
            lot.found_by_label.discard(instance_id)
            self.reclaimed += 1
        if lot.settling:
            if instance_id not in lot.results:  # else a sweep found it and it is gone already
                self._doom(lot, instance_id, "create answered after its race ended")
        else:
            lot.live.add(instance_id)
        self._forget_ticket(ticket, wake=True)
        return instance_id

    def _forget_ticket(self, ticket: _Ticket, *, wake: bool) -> None:
        ticket.lot.tickets.discard(ticket)
        self._gc(ticket.lot)  # its last ticket may have been all that kept it
        if wake:
            self._kick()
        else:
            self._notify()

    def adopt(self, lot: Lot, instance_id: int) -> None:
        """Record an instance of ``lot`` found by its label (a create whose answer was lost)."""
        lot.known.add(instance_id)
        lot.found_by_label.add(instance_id)
        if lot.settling:
            self._doom(lot, instance_id, "found by label (a create whose answer was lost)")
            self._kick()
        else:
            lot.live.add(instance_id)

    # -- destroying -----------------------------------------------------------------------

    def doom(self, lot: Lot, instance_ids: Iterable[int], reason: str) -> None:
        """Destroy these instances of ``lot`` (returns at once; the engine does the work)."""
        for instance_id in instance_ids:
            lot.known.add(instance_id)
            self._doom(lot, instance_id, reason)
        self._kick()

    def hand_over(self, lot: Lot, instance_id: int) -> None:
        """The race's winner leaves custody: the caller's :class:`Rental` owns it now."""
        lot.live.discard(instance_id)
        self._gc(lot)

    async def settle(self, lot: Lot, *, keep: int | None, budget_s: float) -> None:
        """End ``lot``'s race: withdraw its unsent creates, destroy all but ``keep``, confirm.

        Bounded by ``budget_s`` of real time. Calling it again with ``keep=None`` dooms the
        winner too (a cancellation after the win).

        Raises:
            TeardownError: not everything confirmed within the budget, or the key was refused;
                names the instances and the labels of creates still unresolved. Custody keeps
                working on them in the background.
        """
        self._begin_settle(lot, keep)
        await self._wait(lot, budget_s, what="teardown")

    def _begin_settle(self, lot: Lot, keep: int | None) -> None:
        lot.settling = True
        lot.kept = keep
        lot.sweep_due = lot.lost_creates > len(lot.found_by_label)
        for ticket in list(lot.tickets):
            ticket.withdrawn = True
            if not ticket.sending and ticket.task is not None:
                # Waiting for a pacing slot or between attempts that never arrived: never sent.
                ticket.task.cancel()
        for instance_id in sorted(lot.live):
            if instance_id != keep:
                self._doom(lot, instance_id, "teardown")
        self._kick()

    async def destroy(
        self, instance_ids: Sequence[int], *, budget_s: float, reason: str
    ) -> dict[int, bool]:
        """Destroy instances and confirm them gone (``terminate_instance``, ``reap``).

        Returns:
            Per instance: ``True`` destroyed by this call, ``False`` Vast said it was gone.

        Raises:
            TeardownError: not all confirmed within ``budget_s``, or the key was refused.
        """
        lot = self.open_lot(None)
        lot.settling = True
        self.doom(lot, instance_ids, reason)
        await self._wait(lot, budget_s, what=reason)
        return dict(lot.results)

    async def drain(self, budget_s: float) -> None:
        """Resolve everything in custody (the service is closing), within ``budget_s``.

        Raises:
            TeardownError: naming every instance and label still unresolved.
        """
        for lot in list(self._lots):
            if not lot.settling:
                # The service cancels its races before draining; a lot still open here has no
                # race left to settle it, so nothing of it may survive.
                self._begin_settle(lot, None)
        self._kick()
        try:
            async with asyncio.timeout(budget_s):
                await self._until(self._drained)
            self._expire_watches()  # a window that just closed is reported before we return
        except TimeoutError:
            ids, labels = self.unresolved()
            for label in labels:
                self._log.warning(
                    "closing with a create under label %s unresolved: run `%s`",
                    label,
                    reap_command(label),
                )
            raise TeardownError(
                f"closing: custody not drained within {budget_s:g} s",
                instance_ids=ids,
                labels=labels,
            ) from None

    async def close(self) -> None:
        """Stop the engine (after :meth:`drain`). Idempotent."""
        self._closed = True
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await engine

    # -- internals ------------------------------------------------------------------------

    def _drained(self) -> bool:
        now = time.monotonic()
        return not self._doomed and all(
            lot.resolved and not lot.watching(now) for lot in self._lots if lot.settling
        )

    def _doom(self, lot: Lot, instance_id: int, reason: str) -> None:
        doom = self._doomed.setdefault(instance_id, _Doom(reason=reason))
        doom.lots.add(lot)
        lot.pending.add(instance_id)
        lot.live.discard(instance_id)

    async def _wait(self, lot: Lot, budget_s: float, *, what: str) -> None:
        lot.error = None  # only a failure seen while this call waits ends it early
        if self._closed and not lot.resolved:
            # The service closed (its HTTP session too): nothing can be destroyed any more.
            raise TeardownError(
                f"{what}: the service is closed, nothing can be destroyed",
                instance_ids=sorted(lot.pending),
                labels=lot.unresolved_labels(time.monotonic()),
            )
        try:
            async with asyncio.timeout(budget_s):
                await self._until(lambda: lot.resolved or lot.error is not None)
        except TimeoutError:
            raise TeardownError(
                f"{what} did not confirm every instance destroyed within {budget_s:g} s",
                instance_ids=sorted(lot.pending),
                labels=lot.unresolved_labels(time.monotonic()),
            ) from lot.error
        if lot.error is not None and not lot.resolved:
            err, lot.error = lot.error, None
            raise TeardownError(
                f"{what} failed: {err}",
                instance_ids=sorted(lot.pending),
                labels=lot.unresolved_labels(time.monotonic()),
            ) from err
        self._gc(lot)

    def _gc(self, lot: Lot) -> None:
        if lot.settling and lot.resolved and not lot.live and not lot.watching(time.monotonic()):
            self._lots.discard(lot)

    def _kick(self) -> None:
        self._wake.set()
        if not self._closed and (self._engine is None or self._engine.done()):
            self._engine = asyncio.create_task(self._run(), name="vastai-async custody")
            self._engine.add_done_callback(self._engine_done)
        self._notify()

    def _notify(self) -> None:
        # Wake every waiter to re-check its condition (a future per change: waiters never
        # cancel it, they wait on it with asyncio.wait).
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    async def _until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            if self._changed is None:
                self._changed = asyncio.get_running_loop().create_future()
            await asyncio.wait({self._changed})

    def _engine_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.error("custody engine stopped", exc_info=task.exception())

    def _has_work(self) -> bool:
        now = time.monotonic()
        return bool(self._doomed) or any(lot.watching(now) for lot in self._lots)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            # A window that closed since the last turn is reported before going idle.
            self._expire_watches()
            if self._has_work():
                try:
                    await self._tick()
                except (AuthenticationError, PermissionDeniedError) as err:
                    # The key is refused: nothing can be destroyed. Tell every waiter now
                    # (their TeardownError names the instances); keep the records.
                    for lot in self._lots:
                        if lot.pending:
                            lot.error = err
                except VastAIError as err:
                    # A 5xx or a lost answer must not end custody: try again next tick.
                    self._log.warning("custody step failed, retrying: %s", err)
                except Exception:
                    self._log.exception("custody tick failed (a bug); retrying next tick")
                self.ticks += 1
                self._expire_watches()
                self._notify()
                if self._has_work():
                    # Sleep one tick, but wake early for new work (a race just ended).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._interval_s):
                            await self._wake.wait()
                    continue
            self._notify()
            await self._wake.wait()

    async def _tick(self) -> None:
        now = time.monotonic()
        # 1. Sweep the labels of creates whose answer was lost: what we never heard of.
        for lot in [lot for lot in self._lots if lot.watching(now)]:
            assert lot.label is not None
            listed = await self._client.list_instances(label=lot.label)
            lot.sweep_due = False
            for inst in listed:
                if inst.id not in lot.known and inst.id != lot.kept:
                    self._log.warning(
                        "instance %s under label %s came from a create whose answer was lost: "
                        "destroying it",
                        inst.id,
                        lot.label,
                    )
                    self.adopt(lot, inst.id)  # the lot is settling: adopting dooms it
        # 2. Destroy everything doomed and not sent within the last tick: one request.
        due = [
            i
            for i, d in self._doomed.items()
            if d.sent_at is None or now - d.sent_at >= self._interval_s
        ]
        if len(due) == 1:
            (instance_id,) = due
            existed = await self._client.destroy_instance(instance_id)
            self._doomed[instance_id].sent_at = time.monotonic()
            if not existed:
                await self._gone(instance_id, already_gone=True)
        elif due:
            await self._client.destroy_instances(due)
            sent = time.monotonic()
            for instance_id in due:
                self._doomed[instance_id].sent_at = sent
        # 3. Confirm with one listing (chunked by the client): absent means gone.
        sent_ids = [i for i, d in self._doomed.items() if d.sent_at is not None]
        if sent_ids:
            still = {inst.id for inst in await self._client.list_instances(ids=sent_ids)}
            for instance_id in sent_ids:
                if instance_id not in still:
                    await self._gone(instance_id, already_gone=False)

    async def _gone(self, instance_id: int, *, already_gone: bool) -> None:
        doom = self._doomed.pop(instance_id, None)
        if doom is None:
            return
        for lot in doom.lots:
            lot.pending.discard(instance_id)
            lot.results[instance_id] = not already_gone
            if lot.on_gone is not None:
                try:
                    await lot.on_gone(instance_id, doom.reason, already_gone)
                except Exception:
                    self._log.exception("custody: a gone callback failed")
            self._gc(lot)

    def _expire_watches(self) -> None:
        now = time.monotonic()
        for lot in list(self._lots):
            if lot.window_closed(now):
                assert lot.label is not None
                self._log.warning(
                    "a create under label %s lost its answer and no instance showed up within "
                    "%g s; if one appears later it bills unseen: run `%s`",
                    lot.label,
                    self._window_s,
                    reap_command(lot.label),
                )
                lot.watch_until = None
                self._gc(lot)


def _may_have_created(err: BaseException) -> bool:
    # Only a refusal by the server (a 4xx, or 200 with ``success: false``) or a withdrawal
    # proves a create did nothing once it was sent.
    if isinstance(err, CreateWithdrawnError | OfferUnavailableError):
        return False
    return not (isinstance(err, APIStatusError) and err.status is not None and err.status < 500)


def _retrieve(task: asyncio.Task[int]) -> None:
    # A create abandoned by its cancelled race may still fail; its outcome is already recorded
    # in its lot. Read it so asyncio does not report "exception was never retrieved".
    if not task.cancelled():
        task.exception()
