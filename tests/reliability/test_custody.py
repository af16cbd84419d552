"""Custody: every instance a service creates is destroyed or named, under load and at close.

Each test reads the sandbox's billing ledger after the service closed: nothing may be alive
unless a raised ``TeardownError`` named it. Cut points are request counts or events, never
sleeps, so outcomes do not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.reliability._harness import pick_offers
from vastai_async import ServiceClosedError, TeardownError, VastAIError, VastAIService
from vastai_async.config import VastAIConfig
from vastai_async.events import Event, InstanceCreated, RaceStarted, WinnerChosen
from vastai_async.sandbox import HTTPFault, Sandbox

_CREATE = "PUT /api/v0/asks/{id}/"
_DELETE_ONE = "DELETE /api/v0/instances/{id}/"
_DELETE_MANY = "DELETE /api/v0/instances/"
_LIST = "GET /api/v1/instances/"


class _OnRoute(list[Any]):
    """The sandbox's request record; calls ``action`` once the Nth request on ``route`` arrives."""

    def __init__(self, items: list[Any], route: str, nth: int, action: Any) -> None:
        super().__init__(items)
        self.route, self.nth, self.action, self.seen = route, nth, action, 0

    def append(self, item: Any) -> None:
        super().append(item)
        if item.route == self.route:
            self.seen += 1
            if self.seen == self.nth:
                self.action()


def _named(results: list[Any]) -> set[int]:
    return {i for r in results if isinstance(r, TeardownError) for i in r.instance_ids}


def _assert_typed(results: list[Any]) -> None:
    for result in results:
        assert isinstance(result, asyncio.CancelledError | VastAIError), repr(result)


@pytest.mark.vastai_sandbox(offers=400, time_scale=0.02, seed=3)
async def test_hundred_races_of_three_cancelled_together_leave_nothing_alive_after_close(
    vastai_sandbox: Sandbox, vastai_config: VastAIConfig
) -> None:
    """Creates still queued behind the create pacer are withdrawn, never sent."""
    sb = vastai_sandbox
    tasks: list[asyncio.Task[Any]] = []

    def cancel_all() -> None:
        for task in tasks:
            task.cancel()

    async with VastAIService(config=vastai_config) as vast:
        offers = await vast.search_offers()
        assert len(offers) >= 300
        # 60 creates have reached the sandbox; about 240 are still decided and queued.
        sb.state.requests = _OnRoute(sb.state.requests, _CREATE, 60, cancel_all)
        tasks.extend(
            asyncio.create_task(
                vast.provision_instance(job_id=f"storm-{i}", offers=offers, fan_out=3)
            )
            for i in range(100)
        )
        results = await asyncio.gather(*tasks, return_exceptions=True)
    _assert_typed(results)
    sent = sb.request_counts()[_CREATE]
    assert 60 <= sent < 300, f"queued creates must be withdrawn, not sent ({sent} sent)"
    assert sb.alive_instance_ids() <= _named(results)
    assert sb.alive_instance_ids() == set()


@pytest.mark.vastai_sandbox(offers=20, time_scale=0.02, seed=4)
async def test_close_with_a_race_in_flight_destroys_its_instances_before_the_session_closes(
    vastai_sandbox: Sandbox, vastai_config: VastAIConfig
) -> None:
    """``gather(provision, sibling_that_raises)`` leaves the race running past ``async with``."""
    sb = vastai_sandbox
    created = asyncio.Event()

    def on_event(event: Event) -> None:
        if isinstance(event, InstanceCreated):
            created.set()

    async def sibling_that_raises() -> None:
        await created.wait()
        raise RuntimeError("a sibling failed")

    provisions: list[asyncio.Future[Any]] = []

    async def user_code() -> None:
        async with VastAIService(config=vastai_config, on_event=on_event) as vast:
            offers = pick_offers(await vast.search_offers(), 2)
            for offer in offers:
                sb.set_boot_latency(offer.id, 100_000.0)  # never boots: the race runs on
            provisions.append(
                asyncio.ensure_future(
                    vast.provision_instance(job_id="orphan", offers=offers, fan_out=2)
                )
            )
            await asyncio.gather(provisions[0], sibling_that_raises())

    with pytest.raises(RuntimeError, match="a sibling failed"):
        await user_code()
    (provision,) = provisions
    with pytest.raises(ServiceClosedError):
        await provision
    assert sb.alive_instance_ids() == set()
    assert sb.request_counts()[_CREATE] >= 1


@pytest.mark.vastai_sandbox(offers=20, time_scale=0.02, seed=5)
async def test_a_create_answered_after_the_teardown_budget_is_named_then_destroyed_at_close(
    vastai_sandbox: Sandbox, vastai_config: VastAIConfig
) -> None:
    """Cancelled while its create is held by the server: named by label, destroyed on answer."""
    sb = vastai_sandbox
    sb.add_fault(HTTPFault(kind="slow", route=_CREATE, delay_s=1.5))
    timings = vastai_config.timings.replace(teardown_budget_s=0.2)
    async with VastAIService(config=vastai_config, timings=timings) as vast:
        offers = pick_offers(await vast.search_offers(), 1)
        task = asyncio.ensure_future(
            vast.provision_instance(job_id="late", offers=offers, fan_out=1)
        )
        sb.state.requests = _OnRoute(sb.state.requests, _CREATE, 1, task.cancel)
        with pytest.raises(TeardownError) as info:
            await task
        assert info.value.labels, "the create in flight is named by its label"
        assert ":late:" in info.value.labels[0]
    # close() drained custody: the create answered, and its instance was destroyed.
    assert sb.request_counts()[_CREATE] == 1
    assert len(sb.ledger()) == 1, "the held create was carried out"
    assert sb.alive_instance_ids() == set()


@pytest.mark.vastai_sandbox(offers=20, time_scale=0.02, seed=6)
async def test_a_create_carried_out_after_the_client_gave_up_is_destroyed_or_named(
    vastai_sandbox: Sandbox, vastai_config: VastAIConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """Creates on offer A time out on our side; B wins; A's first create lands 3 s later.

    Custody sweeps the label for twice the request timeout after the last lost answer: the
    late instance is destroyed if it lands inside that window, and otherwise a WARNING names
    its label and the reap command, which then finds exactly it. Either way it is never
    billing unseen.
    """
    caplog.set_level(logging.WARNING, logger="vastai_async")
    sb = vastai_sandbox
    timings = vastai_config.timings.replace(request_timeout_s=0.3)
    async with VastAIService(config=vastai_config, timings=timings) as vast:
        offers = pick_offers(await vast.search_offers(), 2)
        for offer in offers:
            sb.set_boot_latency(offer.id, 5.0)
        sb.add_fault(
            HTTPFault(kind="slow", route=_CREATE, target=offers[0].id, delay_s=3.0, times=3)
        )
        rental = await vast.provision_instance(job_id="ghost", offers=offers, fan_out=1)
        assert rental.info.offer is not None
        assert rental.info.offer.id == offers[1].id
        async with rental:
            pass
    # The first held create lands now (the other two find the offer rented).
    await _until(lambda: sb.request_counts()[_CREATE] == 4 and len(sb.ledger()) == 2)
    late = [e["instance_id"] for e in sb.ledger() if e["instance_id"] != rental.instance_id]
    warnings = [r.getMessage() for r in caplog.records if "lost its answer" in r.getMessage()]
    if sb.alive_instance_ids():
        assert sb.alive_instance_ids() == set(late)
        assert warnings, "a late instance custody could not see must be reported"
        assert rental.info.label in warnings[0]
        assert "vastai-async reap --owner" in warnings[0]
        async with VastAIService(config=vastai_config) as vast:
            report = await vast.reap(job_id="ghost")
        assert {i for i, _ in report.destroyed} == set(late)
    assert sb.alive_instance_ids() == set()


@pytest.mark.vastai_sandbox(offers=20, time_scale=0.02, seed=7)
async def test_terminate_is_bounded_in_real_time_and_custody_finishes_the_job_at_close(
    vastai_sandbox: Sandbox, vastai_config: VastAIConfig
) -> None:
    sb = vastai_sandbox
    timings = vastai_config.timings.replace(teardown_budget_s=0.5)
    async with VastAIService(config=vastai_config, timings=timings) as vast:
        offers = pick_offers(await vast.search_offers(), 1)
        rental = await vast.provision_instance(job_id="bounded", offers=offers, fan_out=1)
        for route in (_DELETE_ONE, _DELETE_MANY, _LIST):
            sb.add_fault(HTTPFault(kind="slow", route=route, delay_s=5.0, times=None))
        with pytest.raises(TeardownError) as info:
            await vast.terminate_instance(rental.instance_id)
        assert info.value.instance_ids == (rental.instance_id,)
        sb.faults.clear()
    assert sb.alive_instance_ids() == set(), "custody kept working and close() drained it"


@pytest.mark.vastai_sandbox(offers=20, time_scale=0.02, seed=8)
async def test_admission_control_runs_at_most_the_configured_races_at_once(
    vastai_sandbox: Sandbox, vastai_config: VastAIConfig
) -> None:
    active = 0
    most = 0

    def on_event(event: Event) -> None:
        nonlocal active, most
        if isinstance(event, RaceStarted):
            active += 1
            most = max(most, active)
        elif isinstance(event, WinnerChosen):
            active -= 1

    async with VastAIService(
        config=vastai_config, on_event=on_event, max_concurrent_provisions=2
    ) as vast:
        offers = pick_offers(await vast.search_offers(), 6)
        for offer in offers:
            vastai_sandbox.set_boot_latency(offer.id, 5.0)
        rentals = await asyncio.gather(
            *(
                vast.provision_instance(job_id=f"q{i}", offers=[offer], fan_out=1)
                for i, offer in enumerate(offers)
            )
        )
        for rental in rentals:
            await rental.terminate()
    assert most == 2
    assert vastai_sandbox.alive_instance_ids() == set()


def test_admission_limit_must_be_a_positive_integer(vastai_config: VastAIConfig) -> None:
    with pytest.raises(VastAIError, match="max_concurrent_provisions"):
        VastAIService(config=vastai_config, max_concurrent_provisions=0)


@pytest.mark.vastai_sandbox(offers=20, time_scale=0.02, seed=9)
async def test_a_new_provision_after_close_is_refused_typed(vastai_config: VastAIConfig) -> None:
    vast = VastAIService(config=vastai_config)
    async with vast:
        pass
    with pytest.raises(ServiceClosedError):
        await vast.provision_instance(job_id="late", fan_out=1)


async def _until(predicate: Any, within_s: float = 20.0) -> None:
    async with asyncio.timeout(within_s):
        # The sandbox carries out a held request on its own: there is no event to wait on.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
