"""Hedged provisioning on the sandbox: a late first candidate brings in one more, and only one."""

from __future__ import annotations

import pytest

from tests.integration._market import distinct_machines
from vastai_async import BootTimes, Hedged, HedgePolicy, InvalidRequestError, VastAIService
from vastai_async.events import Event, InstanceCreated, WinnerChosen
from vastai_async.sandbox import Sandbox

TIME_SCALE = 0.02
pytestmark = pytest.mark.vastai_sandbox(offers=30, time_scale=TIME_SCALE, seed=5)


async def test_a_late_candidate_is_hedged_with_one_more(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = distinct_machines(await vastai_service.search_offers(), 4)
    # The first boots far past the observed boot times; the second boots fast.
    for offer, boot_s in zip(offers, (2000.0, 15.0, 15.0, 15.0), strict=True):
        vastai_sandbox.set_boot_latency(offer.id, boot_s)
    # Boot times seen before (wall seconds on the sandbox clock): 60 simulated s.
    history = BootTimes([60.0 * TIME_SCALE] * 8)
    policy = HedgePolicy(start=1, min_samples=8, history=history).scaled(TIME_SCALE)
    events: list[Event] = []
    rental = await vastai_service.provision_instance(
        job_id="hedge", offers=offers, fan_out=4, hedge=policy, on_event=events.append
    )
    created = [e for e in events if isinstance(e, InstanceCreated)]
    hedges = [e for e in events if isinstance(e, Hedged)]
    assert [c.offer_id for c in created] == [offers[0].id, offers[1].id]
    assert len(hedges) == 1
    hedge = hedges[0]
    assert hedge.late_offer_id == offers[0].id
    assert hedge.late_instance_id == created[0].instance_id
    assert hedge.delay_s == pytest.approx(60.0 * TIME_SCALE)
    assert hedge.age_s >= hedge.delay_s
    assert hedge.basis == "p75 of 8 observed boot times"
    assert hedge.in_flight == 2
    # The hedge came after the first create and before the second.
    assert created[0].at <= hedge.at <= created[1].at
    win = next(e for e in events if isinstance(e, WinnerChosen))
    assert win.offer_id == offers[1].id
    assert vastai_sandbox.alive_instance_ids() == {rental.instance_id}
    await rental.terminate()


async def test_without_hedging_fan_out_starts_at_once_and_boot_times_are_recorded(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = distinct_machines(await vastai_service.search_offers(), 2)
    for offer in offers:
        vastai_sandbox.set_boot_latency(offer.id, 20.0)
    events: list[Event] = []
    rental = await vastai_service.provision_instance(
        job_id="nohedge", offers=offers, fan_out=2, on_event=events.append
    )
    assert len([e for e in events if isinstance(e, InstanceCreated)]) == 2
    assert not [e for e in events if isinstance(e, Hedged)]
    # The service saw at least the winner boot: a later hedged race derives its delay from it.
    assert len(vastai_service._boot_times) >= 1
    await rental.terminate()


async def test_a_hedge_starting_above_fan_out_is_refused_before_renting(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = distinct_machines(await vastai_service.search_offers(), 2)
    before = vastai_sandbox.request_counts().get("PUT /api/v0/asks/{id}/", 0)
    with pytest.raises(InvalidRequestError, match="fan_out"):
        await vastai_service.provision_instance(
            job_id="bad", offers=offers, fan_out=2, hedge=HedgePolicy(start=3)
        )
    assert vastai_sandbox.request_counts().get("PUT /api/v0/asks/{id}/", 0) == before
