"""The race: rent several offers at once, keep the first proven SSH login, destroy the rest.

Design.md "The race", steps 1-7: candidates, probes, winner, hand-over to custody. One
:class:`Race` per ``provision_instance`` call; one :class:`InstancePoller` and one
:class:`~vastai_async.custody.Custody` per service, shared by all its races. Every create goes
through custody, which owns the instance until it is confirmed gone; whatever happens (a winner,
a deadline, an exception, the caller's cancellation) the race settles with custody before
:meth:`Race.run` returns or raises, in a step the caller's cancellation cannot interrupt
(:func:`~vastai_async._teardown.run_uncancellable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from vastai_async._logging import get_logger
from vastai_async._poller import InstancePoller
from vastai_async._race_types import (
    AttemptRecord,
    ProbeFn,
    ProbeOutcome,
    RaceClient,
    RaceResult,
    _Candidate,
    _CandidateFailure,
    _Win,
    new_race_id,
)
from vastai_async._teardown import run_uncancellable
from vastai_async.custody import CreateWithdrawnError, Custody
from vastai_async.errors import (
    CreateOutcomeUnknownError,
    OfferUnavailableError,
    ProvisioningError,
    VastAIError,
)
from vastai_async.events import (
    CandidateChosen,
    CandidateFailed,
    CreateFailed,
    EventEmitter,
    InstanceCreated,
    InstanceDestroyed,
    Outbid,
    ProbeAttempt,
    RaceFailed,
    RaceStarted,
    SpendUpdate,
    StatusChanged,
    WinnerChosen,
)
from vastai_async.hedging import BootTimes, Hedged, HedgePolicy
from vastai_async.models import (
    CreateInstanceRequest,
    Instance,
    Offer,
    SSHEndpoint,
)
from vastai_async.timings import Timings

__all__ = [
    "AttemptRecord",
    "ProbeOutcome",
    "Race",
    "RaceResult",
    "new_race_id",
]

_log = get_logger(__name__)

#: Creates of one offer whose answer was lost and that the label shows never took effect.
_CREATE_ATTEMPTS = 3


class Race:
    """One provisioning race. Build it, then ``await race.run()`` once.

    Args:
        client: a :class:`~vastai_async.client.VastAIClient` (key attach, label lookups).
        custody: the service's custody: every create and destroy goes through it.
        poller: the service's shared poller.
        probe: logs into one endpoint once and says how it went.
        emitter: delivers events.
        job_id: the caller's job id.
        label: the label for every instance this race creates (names owner, job, race).
        race_id: this race's id.
        offers: candidates in the caller's order.
        request: what to create each candidate with (``label`` is set by the race).
        public_key: the OpenSSH public key attached to each instance (``None``: the key is
            on the account, nothing to attach).
        fan_out: how many candidates in flight at once.
        timings: deadlines and intervals.
        max_spend_usd: stop when accrued spend would pass this.
        claim: called with an offer; ``False`` when another race of this service holds it.
        release: called with every offer the race claimed, when it ends.
        hedge: start ``hedge.start`` candidates and add one (up to ``fan_out``) whenever one in
            flight is late (:mod:`vastai_async.hedging`); ``None`` starts ``fan_out`` at once.
        boot_times: where observed boot times are recorded (the service's, shared by races).
    """

    def __init__(
        self,
        *,
        client: RaceClient,
        custody: Custody,
        poller: InstancePoller,
        probe: ProbeFn,
        emitter: EventEmitter,
        job_id: str,
        label: str,
        race_id: str,
        offers: Sequence[Offer],
        request: CreateInstanceRequest,
        public_key: str | None,
        fan_out: int,
        timings: Timings,
        max_spend_usd: float | None = None,
        claim: Callable[[Offer], bool] = lambda offer: True,
        release: Callable[[Offer], None] = lambda offer: None,
        logger: logging.Logger | None = None,
        hedge: HedgePolicy | None = None,
        boot_times: BootTimes | None = None,
    ) -> None:
        self._client = client
        self._custody = custody
        self._lot = custody.open_lot(label, on_gone=self._on_gone)
        self._poller = poller
        self._probe = probe
        self._emitter = emitter
        self._job_id = job_id
        self._label = label
        self._race_id = race_id
        self._offers = list(offers)
        self._request = attrs.evolve(request, label=label)
        self._public_key = public_key
        self._fan_out = fan_out
        self._timings = timings
        self._max_spend = max_spend_usd
        self._claim = claim
        self._release = release
        self._log = logger or _log
        self._claimed: list[Offer] = []
        # Every instance this race made, until custody confirms it gone (for spend and records).
        self._created: dict[int, _Candidate] = {}
        self._attempts: list[AttemptRecord] = []
        self._winner: _Win | None = None
        self._hedge = hedge
        self._boot_times = boot_times if boot_times is not None else BootTimes()
        self._target = fan_out if hedge is None else min(hedge.start, fan_out)
        self._hedged_for: set[int] = set()
        self._booted: set[int] = set()  # candidates whose boot time was recorded

    # -- public ---------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """The label of every instance this race creates."""
        return self._label

    async def run(self) -> RaceResult:
        """Race the candidates; return the winner or raise.

        Raises:
            ProvisioningError: no candidate produced a login (one record per offer tried).
            TeardownError: custody could not confirm every loser destroyed within the teardown
                budget; it names them (and labels of creates unresolved) and keeps working.
            asyncio.CancelledError: the caller cancelled; everything created was destroyed first.
        """
        await self._emit(RaceStarted, candidates=len(self._offers), fan_out=self._fan_out)
        try:
            try:
                async with asyncio.timeout(self._timings.overall_s):
                    win = await self._race()
            except TimeoutError:
                raise self._failure(
                    f"no SSH login within the overall deadline ({self._timings.overall_s:g} s)"
                ) from None
        except BaseException as exc:
            if isinstance(exc, ProvisioningError):
                await self._emit(RaceFailed, reason=str(exc.args[0]))
            await run_uncancellable(self._settle(keep=None))
            raise
        finally:
            for offer in self._claimed:
                self._release(offer)
        winner = win.candidate.instance_id
        assert winner is not None
        try:
            await run_uncancellable(self._settle(keep=winner))
        except BaseException:
            # Cancelled (or the losers' teardown failed) after the winner was chosen: the
            # caller will never receive the rental, so the winner must go too.
            await run_uncancellable(self._settle(keep=None))
            raise
        self._custody.hand_over(self._lot, winner)
        return self._result(win)

    # -- the race -------------------------------------------------------------------------

    async def _race(self) -> _Win:
        reserves = deque(self._distinct_offers())
        running: dict[asyncio.Task[_Win], _Candidate] = {}
        try:
            while True:
                while len(running) < self._target and reserves:
                    offer = reserves.popleft()
                    if not self._claim(offer):
                        self._record_offer(offer, "not_created", "claimed by another race")
                        continue
                    self._claimed.append(offer)
                    cand = _Candidate(offer=offer, started_at=time.time())
                    await self._emit(
                        CandidateChosen,
                        offer_id=offer.id,
                        machine_id=offer.machine_id,
                        gpu_name=offer.gpu_name,
                        dph_total=offer.dph_total,
                    )
                    task = asyncio.create_task(self._run_candidate(cand))
                    running[task] = cand
                if not running:
                    raise self._failure("every candidate failed")
                done, _ = await asyncio.wait(
                    running,
                    timeout=self._timings.poll_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    cand = running.pop(task)
                    exc = task.exception()
                    if exc is None:
                        self._winner = win = task.result()
                        self._observe_boot(cand)  # a login proves it booted (an upper bound)
                        assert cand.instance_id is not None
                        assert cand.created_monotonic is not None
                        await self._emit(
                            WinnerChosen,
                            offer_id=cand.offer.id,
                            instance_id=cand.instance_id,
                            host=win.endpoint.host,
                            port=win.endpoint.port,
                            kind=win.endpoint.kind,
                            elapsed_s=time.monotonic() - cand.created_monotonic,
                        )
                        return win
                    await self._candidate_ended(cand, exc)
                self._check_spend()
                if reserves:
                    await self._maybe_hedge(running.values())
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            for cand in running.values():
                self._record(cand, "lost", "another candidate won or the race ended")

    def _observe_boot(self, cand: _Candidate) -> None:
        iid, created = cand.instance_id, cand.created_monotonic
        if iid is not None and created is not None and iid not in self._booted:
            self._booted.add(iid)
            self._boot_times.observe(time.monotonic() - created)

    async def _maybe_hedge(self, running: Iterable[_Candidate]) -> None:
        # Hedging: one more candidate for each one in flight that is late (not running yet
        # past the delay derived from observed boot times), up to fan_out.
        if self._hedge is None or self._target >= self._fan_out:
            return
        delay, basis = self._hedge.delay(self._boot_times)
        now = time.monotonic()
        for cand in list(running):
            iid, created = cand.instance_id, cand.created_monotonic
            if iid is None or created is None or iid in self._hedged_for:
                continue
            if cand.last_status == "running" or now - created < delay:
                continue
            self._hedged_for.add(iid)
            self._target += 1
            await self._emit(
                Hedged,
                late_instance_id=iid,
                late_offer_id=cand.offer.id,
                age_s=now - created,
                delay_s=delay,
                basis=basis,
                in_flight=self._target,
            )
            if self._target >= self._fan_out:
                return

    def _distinct_offers(self) -> Iterable[Offer]:
        seen_machines: set[int] = set()
        seen_offers: set[int] = set()
        for offer in self._offers:
            if offer.id in seen_offers:
                continue
            seen_offers.add(offer.id)
            if offer.machine_id is not None:
                if offer.machine_id in seen_machines:
                    self._record_offer(offer, "not_created", "another offer of the same machine")
                    continue
                seen_machines.add(offer.machine_id)
            yield offer

    async def _candidate_ended(self, cand: _Candidate, exc: BaseException) -> None:
        if isinstance(exc, _CandidateFailure):
            reason, status = exc.reason, exc.last_status
        elif isinstance(exc, VastAIError):
            reason, status = f"{type(exc).__name__}: {exc}", cand.last_status
        else:
            raise exc  # a bug: let teardown run and surface it
        if status is not None:
            cand.last_status = status
        if cand.instance_id is None:
            self._record(cand, "not_created", reason)
            await self._emit(CreateFailed, offer_id=cand.offer.id, reason=reason)
            return
        await self._emit(
            CandidateFailed, offer_id=cand.offer.id, instance_id=cand.instance_id, reason=reason
        )
        self._record(cand, "failed", reason)
        # Custody destroys it (batched with every other race's) while the race goes on.
        self._custody.doom(self._lot, [cand.instance_id], f"failed: {reason}")

    async def _run_candidate(self, cand: _Candidate) -> _Win:
        instance_id = await self._create(cand)
        await self._attach_key(instance_id)
        self._poller.watch(instance_id)
        try:
            return await self._watch_and_probe(cand)
        finally:
            self._poller.unwatch(instance_id)

    async def _create(self, cand: _Candidate) -> int:
        offer = cand.offer
        for attempt in range(1, _CREATE_ATTEMPTS + 1):
            try:
                instance_id = await self._custody.create(self._lot, offer.id, self._request)
            except OfferUnavailableError as err:
                reason = f"offer unavailable ({err.code or 'no_such_ask'})"
                raise _CandidateFailure(reason) from err
            except CreateWithdrawnError as err:
                raise _CandidateFailure("create withdrawn before it was sent") from err
            except CreateOutcomeUnknownError as err:
                # The request may have rented a machine: look for it by our label.
                adopted = await self._find_by_label_for(cand)
                if adopted is not None:
                    return adopted
                # Not listed: it did not take effect yet. Trying again is safe because any
                # late instance still carries our label, and custody sweeps the label.
                if attempt == _CREATE_ATTEMPTS:
                    raise _CandidateFailure(
                        f"create failed {attempt} times with no answer ({err.message})"
                    ) from err
                continue
            self._note_created(cand, instance_id)
            await self._emit(InstanceCreated, offer_id=offer.id, instance_id=instance_id)
            return instance_id
        raise AssertionError("unreachable")  # pragma: no cover

    async def _find_by_label_for(self, cand: _Candidate) -> int | None:
        found = await self._list(label=self._label)
        for inst in found:
            # The same machine only: an instance of another candidate, whose answer is still on
            # its way, must not become this one's too (custody sweeps the rest at settle).
            if (
                inst.id not in self._lot.known
                and inst.machine_id is not None
                and inst.machine_id == cand.offer.machine_id
            ):
                self._custody.adopt(self._lot, inst.id)
                self._note_created(cand, inst.id)
                await self._emit(
                    InstanceCreated, offer_id=cand.offer.id, instance_id=inst.id, adopted=True
                )
                return inst.id
        return None

    def _note_created(self, cand: _Candidate, instance_id: int) -> None:
        cand.instance_id = instance_id
        cand.created_at = time.time()
        cand.created_monotonic = time.monotonic()
        self._created[instance_id] = cand

    async def _attach_key(self, instance_id: int) -> None:
        if self._public_key is not None:
            await self._client.attach_ssh_key(instance_id, self._public_key)

    async def _watch_and_probe(self, cand: _Candidate) -> _Win:
        assert cand.instance_id is not None
        instance_id = cand.instance_id
        timings = self._timings
        loop = asyncio.get_running_loop()
        win: asyncio.Future[_Win] = loop.create_future()
        probers: dict[tuple[str, int], asyncio.Task[None]] = {}
        loading_deadline = time.monotonic() + timings.loading_s
        ssh_deadline: float | None = None
        seen_gen = 0
        seen_once = False
        try:
            while True:
                deadline = ssh_deadline if ssh_deadline is not None else loading_deadline
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if ssh_deadline is None:
                        raise _CandidateFailure(
                            f"not running within the loading deadline ({timings.loading_s:g} s)",
                            last_status=cand.last_status,
                        )
                    raise _CandidateFailure(
                        f"no SSH login within {timings.ssh_s:g} s of running",
                        last_status=cand.last_status,
                    )
                update = asyncio.ensure_future(self._poller.wait(instance_id, seen_gen))
                waiters: set[asyncio.Future[Any]] = {update, win}
                try:
                    await asyncio.wait(
                        waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    if not update.done():
                        update.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await update
                if win.done():
                    return win.result()
                if not update.done() or update.cancelled():
                    continue
                seen_gen, snap = update.result()
                if snap is None:
                    if seen_once:
                        raise _CandidateFailure(
                            "instance disappeared from the listing", last_status=cand.last_status
                        )
                    continue
                seen_once = True
                await self._observe(cand, snap)
                if snap.is_running() and ssh_deadline is None:
                    ssh_deadline = time.monotonic() + timings.ssh_s
                for endpoint in snap.ssh_endpoints():
                    key = (endpoint.host, endpoint.port)
                    if key not in probers:
                        probers[key] = asyncio.create_task(
                            self._probe_loop(cand, endpoint, win),
                            name=f"probe-{instance_id}-{endpoint.kind}",
                        )
                if probers:
                    # The probes find the login: the status is now listed at the slower tick.
                    self._poller.slow_down(instance_id, timings.probing_poll_interval_s)
        finally:
            for prober in probers.values():
                prober.cancel()
            if probers:
                await asyncio.gather(*probers.values(), return_exceptions=True)

    async def _observe(self, cand: _Candidate, snap: Instance) -> None:
        assert cand.instance_id is not None
        if snap.actual_status != cand.last_status:
            old, cand.last_status = cand.last_status, snap.actual_status
            if snap.is_running():
                self._observe_boot(cand)
            await self._emit(
                StatusChanged,
                instance_id=cand.instance_id,
                old=old,
                new=snap.actual_status,
                status_msg=snap.status_msg,
            )
        if snap.is_outbid():
            await self._emit(
                Outbid, instance_id=snap.id, bid=self._request.price, min_bid=snap.min_bid
            )
        reason = snap.fatal_reason()
        if reason is None and self._request.price is not None:
            # Created with a bid: it must be an interruptible rental at (or under) that bid.
            reason = snap.interruptible_mismatch(self._request.price)
        if reason is not None:
            raise _CandidateFailure(reason, last_status=snap.actual_status)

    async def _probe_loop(
        self, cand: _Candidate, endpoint: SSHEndpoint, win: asyncio.Future[_Win]
    ) -> None:
        assert cand.instance_id is not None
        attempt = 0
        pause = self._timings.probe_pause_s
        while not win.done():
            attempt += 1
            started = time.monotonic()
            outcome = await self._probe(endpoint)
            await self._emit(
                ProbeAttempt,
                instance_id=cand.instance_id,
                kind=endpoint.kind,
                host=endpoint.host,
                port=endpoint.port,
                attempt=attempt,
                ok=outcome.ok,
                reason=outcome.reason,
            )
            if outcome.ok and outcome.host_key:
                if not win.done():
                    win.set_result(_Win(cand, endpoint, outcome.host_key))
                return
            # Retry at the probe pause, counted from the attempt's start (a slow refusal
            # does not add a full pause on top).
            await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))

    # -- money ----------------------------------------------------------------------------

    def spend_usd(self) -> float:
        """Estimated money accrued by this race's instances (price x time alive, our clock)."""
        now = time.monotonic()
        total = sum(self._spend_of(c, now) for c in self._created.values())
        return total + sum(
            a.spend_usd for a in self._attempts if a.instance_id not in self._created
        )

    @staticmethod
    def _spend_of(cand: _Candidate, now: float) -> float:
        if cand.created_monotonic is None:
            return 0.0
        return (cand.offer.dph_total or 0.0) * (now - cand.created_monotonic) / 3600.0

    def _check_spend(self) -> None:
        if self._max_spend is not None and self.spend_usd() >= self._max_spend:
            raise self._failure(f"spend limit of ${self._max_spend:.4f} reached")

    # -- custody ------------------------------------------------------------------------

    async def _settle(self, *, keep: int | None) -> None:
        await self._custody.settle(self._lot, keep=keep, budget_s=self._timings.teardown_budget_s)

    async def _on_gone(self, instance_id: int, reason: str, already_gone: bool) -> None:
        # Custody confirmed an instance of this race gone: account for it and say so.
        cand = self._created.pop(instance_id, None)
        if cand is not None and not any(a.instance_id == instance_id for a in self._attempts):
            self._record(cand, "lost", reason)
        await self._emit(
            InstanceDestroyed, instance_id=instance_id, reason=reason, already_gone=already_gone
        )
        await self._emit(SpendUpdate, total_usd=self.spend_usd())

    async def _list(self, *, label: str) -> list[Instance]:
        return list(await self._client.list_instances(label=label))

    # -- records --------------------------------------------------------------------------

    def _record(self, cand: _Candidate, outcome: str, reason: str) -> None:
        now = time.time()
        spend = self._spend_of(cand, time.monotonic())
        self._attempts.append(
            AttemptRecord(
                offer_id=cand.offer.id,
                machine_id=cand.offer.machine_id,
                instance_id=cand.instance_id,
                last_status=cand.last_status,
                outcome=outcome,
                reason=reason,
                started_at=cand.started_at,
                ended_at=now,
                spend_usd=spend,
            )
        )

    def _record_offer(self, offer: Offer, outcome: str, reason: str) -> None:
        self._record(_Candidate(offer=offer, started_at=time.time()), outcome, reason)

    def _failure(self, message: str) -> ProvisioningError:
        return ProvisioningError(
            f"job {self._job_id}: {message} ({len(self._attempts)} offers tried)",
            attempts=self._attempts,
        )

    def _result(self, win: _Win) -> RaceResult:
        cand = win.candidate
        assert cand.instance_id is not None
        assert cand.created_at is not None
        self._record(cand, "won", f"SSH login proven on {win.endpoint.kind} endpoint")
        return RaceResult(
            race_id=self._race_id,
            label=self._label,
            offer=cand.offer,
            instance_id=cand.instance_id,
            endpoint=win.endpoint,
            host_key=win.host_key,
            created_at=cand.created_at,
            ready_at=time.time(),
            attempts=tuple(self._attempts),
        )

    async def _emit(self, cls: type, **fields: object) -> None:
        await self._emitter.emit(cls(race_id=self._race_id, job_id=self._job_id, **fields))
