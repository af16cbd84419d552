"""The race: rent several offers at once, keep the first proven SSH login, destroy the rest.

Design.md "The race", steps 1-7. One :class:`Race` per ``provision_instance`` call; one
:class:`InstancePoller` per service, shared by all its races. Whatever happens (a winner, a
deadline, an exception, the caller's cancellation), every instance a race created except the
winner is destroyed before :meth:`Race.run` returns or raises, by one teardown that the caller's
cancellation cannot interrupt (:func:`~vastai_async._teardown.run_uncancellable`).
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
from vastai_async.errors import (
    AuthenticationError,
    CreateOutcomeUnknownError,
    OfferUnavailableError,
    PermissionDeniedError,
    ProvisioningError,
    TeardownError,
    VastAIError,
)
from vastai_async.events import (
    CandidateChosen,
    CandidateFailed,
    CreateFailed,
    EventEmitter,
    InstanceCreated,
    InstanceDestroyed,
    ProbeAttempt,
    RaceFailed,
    RaceStarted,
    SpendUpdate,
    StatusChanged,
    WinnerChosen,
)
from vastai_async.models import (
    CreateInstanceRequest,
    CreateInstanceResponse,
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
        client: a :class:`~vastai_async.client.VastAIClient`.
        poller: the service's shared poller.
        probe: logs into one endpoint once and says how it went.
        emitter: delivers events.
        job_id: the caller's job id.
        label: the label for every instance this race creates (names owner, job, race).
        race_id: this race's id.
        offers: candidates in the caller's order.
        request: what to create each candidate with (``label`` is set by the race).
        public_key: the OpenSSH public key attached to each instance.
        fan_out: how many candidates in flight at once.
        timings: deadlines and intervals.
        max_spend_usd: stop when accrued spend would pass this.
        claim: called with an offer; ``False`` when another race of this service holds it.
        release: called with every offer the race claimed, when it ends.
    """

    def __init__(
        self,
        *,
        client: RaceClient,
        poller: InstancePoller,
        probe: ProbeFn,
        emitter: EventEmitter,
        job_id: str,
        label: str,
        race_id: str,
        offers: Sequence[Offer],
        request: CreateInstanceRequest,
        public_key: str,
        fan_out: int,
        timings: Timings,
        max_spend_usd: float | None = None,
        claim: Callable[[Offer], bool] = lambda offer: True,
        release: Callable[[Offer], None] = lambda offer: None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._client = client
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
        # Every instance this race made (or may have made) until confirmed destroyed.
        self._created: dict[int, _Candidate | None] = {}
        self._pending_creates: set[asyncio.Task[CreateInstanceResponse]] = set()
        self._attempts: list[AttemptRecord] = []
        self._winner: _Win | None = None
        #: Creates whose answer was lost (the server may still carry them out after teardown),
        #: and the monotonic time the last of them failed.
        self.unknown_creates = 0
        self.last_unknown_create_at: float | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """The label of every instance this race creates."""
        return self._label

    @property
    def live_instance_ids(self) -> list[int]:
        """Instances this race created and has not yet confirmed destroyed."""
        return sorted(self._created)

    async def run(self) -> RaceResult:
        """Race the candidates; return the winner or raise.

        Raises:
            ProvisioningError: no candidate produced a login (one record per offer tried).
            TeardownError: cleanup could not confirm every loser destroyed within its budget.
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
            await run_uncancellable(self._teardown(keep=None))
            raise
        finally:
            for offer in self._claimed:
                self._release(offer)
        try:
            await run_uncancellable(self._teardown(keep=win.candidate.instance_id))
        except BaseException:
            # Cancelled (or the losers' teardown failed) after the winner was chosen: the
            # caller will never receive the rental, so the winner must go too.
            await run_uncancellable(self._teardown(keep=None))
            raise
        return self._result(win)

    # -- the race -------------------------------------------------------------------------

    async def _race(self) -> _Win:
        reserves = deque(self._distinct_offers())
        running: dict[asyncio.Task[_Win], _Candidate] = {}
        try:
            while True:
                while len(running) < self._fan_out and reserves:
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
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            for cand in running.values():
                self._record(cand, "lost", "another candidate won or the race ended")

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
        try:
            await self._destroy([cand.instance_id], reason=f"failed: {reason}")
        except VastAIError as err:
            # Still in self._created: the race's teardown tries again within its budget.
            self._log.warning("destroying failed candidate %s: %s", cand.instance_id, err)

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
            # The create runs as its own task: if we are cancelled while the request is in
            # flight, it still completes and teardown learns the id instead of leaking it.
            task = asyncio.create_task(self._client.create_instance(offer.id, self._request))
            self._pending_creates.add(task)
            task.add_done_callback(self._create_done)
            try:
                response = await asyncio.shield(task)
            except OfferUnavailableError as err:
                reason = f"offer unavailable ({err.code or 'no_such_ask'})"
                raise _CandidateFailure(reason) from err
            except CreateOutcomeUnknownError as err:
                # The request may have rented a machine: look for it by our label.
                adopted = await self._find_by_label_for(cand)
                if adopted is not None:
                    return adopted
                # Not listed: it did not take effect. Trying again is safe because any late
                # instance still carries our label, and teardown sweeps the label.
                if attempt == _CREATE_ATTEMPTS:
                    raise _CandidateFailure(
                        f"create failed {attempt} times with no answer ({err.message})"
                    ) from err
                continue
            instance_id = int(response.new_contract)
            self._note_created(cand, instance_id)
            await self._emit(InstanceCreated, offer_id=offer.id, instance_id=instance_id)
            return instance_id
        raise AssertionError("unreachable")  # pragma: no cover

    def _create_done(self, task: asyncio.Task[CreateInstanceResponse]) -> None:
        self._pending_creates.discard(task)
        # A create abandoned by its cancelled candidate (shield drops its callback) may still
        # fail: read its outcome so it is not reported as a task exception never retrieved.
        # Any instance it made is found by label (teardown, late sweep).
        if not task.cancelled() and isinstance(task.exception(), CreateOutcomeUnknownError):
            self.unknown_creates += 1
            self.last_unknown_create_at = time.monotonic()

    async def _find_by_label_for(self, cand: _Candidate) -> int | None:
        found = await self._list(label=self._label)
        known = set(self._created)
        for inst in found:
            if inst.id not in known and (
                inst.machine_id is None or inst.machine_id == cand.offer.machine_id
            ):
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
        finally:
            for prober in probers.values():
                prober.cancel()
            if probers:
                await asyncio.gather(*probers.values(), return_exceptions=True)

    async def _observe(self, cand: _Candidate, snap: Instance) -> None:
        assert cand.instance_id is not None
        if snap.actual_status != cand.last_status:
            old, cand.last_status = cand.last_status, snap.actual_status
            await self._emit(
                StatusChanged,
                instance_id=cand.instance_id,
                old=old,
                new=snap.actual_status,
                status_msg=snap.status_msg,
            )
        reason = snap.fatal_reason()
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
        total = sum(self._spend_of(c, now) for c in self._created.values() if c is not None)
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

    # -- teardown -------------------------------------------------------------------------

    async def _teardown(self, *, keep: int | None) -> None:
        budget = self._timings.teardown_budget_s
        last_error: VastAIError | None = None
        try:
            async with asyncio.timeout(budget):
                while True:
                    try:
                        await self._teardown_once(keep)
                        return
                    except (AuthenticationError, PermissionDeniedError) as err:
                        live = [i for i in self._created if i != keep]
                        raise TeardownError(f"teardown failed: {err}", instance_ids=live) from err
                    except VastAIError as err:
                        # A 500 or a dropped answer on one destroy or list must not end the
                        # teardown (and leave machines billing): try again within the budget.
                        last_error = err
                        self._log.warning("teardown step failed, retrying: %s", err)
                        await asyncio.sleep(self._timings.poll_interval_s)
        except TimeoutError:
            live = [i for i in self._created if i != keep]
            why = f" (last error: {last_error})" if last_error is not None else ""
            raise TeardownError(
                f"teardown did not confirm every instance destroyed within {budget:g} s{why}",
                instance_ids=live,
            ) from last_error

    async def sweep_late(self, *, keep: int | None, window_s: float) -> None:
        """Destroy instances carrying this race's label (except ``keep``) for ``window_s``.

        A create whose answer was lost (a client timeout) may be carried out by the server
        after the race's teardown swept the label: it would bill unseen. Run this after such a
        race; it never raises.
        """
        deadline = time.monotonic() + window_s
        while True:
            try:
                for inst in await self._list(label=self._label):
                    if inst.id != keep:
                        self._created[inst.id] = None
                        await self._destroy([inst.id], reason="late create found by label")
            except VastAIError as err:
                self._log.warning("late sweep of label %s failed: %s", self._label, err)
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(self._timings.poll_interval_s)

    async def _teardown_once(self, keep: int | None) -> None:
        if self._pending_creates:
            # Creates still in flight: let them answer so we learn their ids.
            await asyncio.wait(set(self._pending_creates))
        losers = [i for i in self._created if i != keep]
        if losers:
            await self._destroy(losers, reason="teardown")
        # One label listing serves twice: it sweeps what we never heard of (a lost create
        # answer), and it is the first confirmation for the losers, since every instance of
        # this race carries the race's label. Saves one paced list call per teardown.
        listed = await self._list(label=self._label)
        listed_ids = {inst.id for inst in listed}
        for instance_id in losers:
            if instance_id not in listed_ids:
                self._created.pop(instance_id, None)
        for inst in listed:
            if inst.id != keep and inst.id not in self._created:
                self._created[inst.id] = None
                await self._destroy([inst.id], reason="found by label at teardown")
        await self._confirm_gone(keep)

    async def _confirm_gone(self, keep: int | None) -> None:
        while True:
            expected = [i for i in self._created if i != keep]
            if not expected:
                return
            listed = {inst.id for inst in await self._list(ids=expected)}
            for instance_id in expected:
                if instance_id not in listed:
                    self._created.pop(instance_id, None)
            still = [i for i in expected if i in listed]
            if not still:
                return
            await self._destroy(still, reason="still listed after destroy")
            await asyncio.sleep(self._timings.poll_interval_s)

    async def _destroy(self, instance_ids: list[int], *, reason: str) -> None:
        client = self._client
        if len(instance_ids) == 1:
            gone_already = not await client.destroy_instance(instance_ids[0])
        else:
            await client.destroy_instances(instance_ids)
            gone_already = False
        for instance_id in instance_ids:
            cand = self._created.get(instance_id)
            if cand is not None and not any(a.instance_id == instance_id for a in self._attempts):
                self._record(cand, "lost", reason)
            await self._emit(
                InstanceDestroyed,
                instance_id=instance_id,
                reason=reason,
                already_gone=gone_already,
            )
        await self._emit(SpendUpdate, total_usd=self.spend_usd())

    async def _list(
        self, *, label: str | None = None, ids: list[int] | None = None
    ) -> list[Instance]:
        return list(await self._client.list_instances(label=label, ids=ids))

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
