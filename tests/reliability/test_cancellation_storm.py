"""Cancellation storms: cut at exact request counts, during teardown, with the API down.

``tests/integration/test_cancellation.py`` cuts at every race event; here the cut points are
API request counts (the sandbox's request record is the hook), repeated cancellations land
inside the teardown and inside ``Rental.__aexit__``, and the API goes down mid-teardown.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.reliability._harness import Scenario, Tripwire, pick_offers, run_scenario
from vastai_async import TeardownError, VastAIService
from vastai_async.events import Event, WinnerChosen
from vastai_async.sandbox import HTTPFault, Sandbox

pytestmark = pytest.mark.vastai_sandbox(offers=20, time_scale=0.02, seed=21)

_DELETE_ONE = "DELETE /api/v0/instances/{id}/"
_DELETE_MANY = "DELETE /api/v0/instances/"
_LIST = "GET /api/v1/instances/"


async def test_cancel_at_every_request_count_including_rental_exit_leaks_nothing(
    vastai_ssh_key: Path, tmp_path: Path
) -> None:
    phases: set[str | None] = set()
    for cut in range(1, 25):
        scenario = Scenario(
            seed=40,
            faults=("destroy_503",),
            fan_out=3,
            candidates=3,
            boots=(10.0, 20.0, 30.0),
            cancel_at_request=cut,
        )
        outcome = await run_scenario(scenario, vastai_ssh_key, tmp_path)
        assert outcome.leaked == (), f"leak after cutting at request {cut}: {outcome}"
        assert outcome.loop_errors == (), outcome
        assert outcome.kind in ("success", "cancelled"), outcome
        phases.add(outcome.cut_phase)
    # The sweep reached both the race (and its teardown) and the rental's __aexit__.
    assert {"provision", "exit"} <= phases


def _api_down(sb: Sandbox) -> None:
    for route in (_DELETE_ONE, _DELETE_MANY, _LIST):
        sb.add_fault(HTTPFault(kind="status", status=503, route=route, times=None))


async def test_api_down_during_teardown_ends_in_teardown_error_naming_live_ids_then_reap_cleans(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = pick_offers(await vastai_service.search_offers(), 3)
    for offer, boot in zip(offers, (10.0, 30.0, 40.0), strict=True):
        vastai_sandbox.set_boot_latency(offer.id, boot)

    def down_after_win(event: Event) -> None:
        if isinstance(event, WinnerChosen):
            _api_down(vastai_sandbox)

    timings = vastai_service.timings.replace(teardown_budget_s=1.0)
    with pytest.raises(TeardownError) as info:
        await vastai_service.provision_instance(
            job_id="down", offers=offers, fan_out=3, timings=timings, on_event=down_after_win
        )
    alive = vastai_sandbox.alive_instance_ids()
    assert alive, "the API was down: something must still be alive for this test to mean much"
    assert alive <= set(info.value.instance_ids), "every live instance is named"
    vastai_sandbox.faults.clear()
    report = await vastai_service.reap(job_id="down")
    assert {i for i, _ in report.destroyed} == alive
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_api_down_during_rental_exit_raises_teardown_error_then_reap_cleans(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = pick_offers(await vastai_service.search_offers(), 1)
    service = VastAIService(
        config=vastai_service.config,
        timings=vastai_service.timings.replace(teardown_budget_s=0.8),
    )
    async with service:
        rental = await service.provision_instance(job_id="exitdown", offers=offers, fan_out=1)
        with pytest.raises(TeardownError) as info:
            async with rental:
                _api_down(vastai_sandbox)
        assert info.value.instance_ids == (rental.instance_id,)
        assert vastai_sandbox.alive_instance_ids() == {rental.instance_id}
        vastai_sandbox.faults.clear()
        # The service's own custody is still retrying (inside a request backoff); a reap with
        # the default budget confirms it, and both see the instance gone.
        await vastai_service.reap(job_id="exitdown")
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_transient_destroy_failures_in_rental_exit_are_retried_not_leaked(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    """Regression: one 500 on DELETE used to escape terminate() and leave the machine billing."""
    offers = pick_offers(await vastai_service.search_offers(), 1)
    rental = await vastai_service.provision_instance(job_id="exit500", offers=offers, fan_out=1)
    async with rental:
        vastai_sandbox.add_fault(HTTPFault(kind="status", status=500, route=_DELETE_ONE, times=2))
        vastai_sandbox.add_fault(HTTPFault(kind="reset", route=_LIST, times=1))
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_caller_timeout_during_a_failing_teardown_still_raises_timeout_error(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = pick_offers(await vastai_service.search_offers(), 3)
    for offer in offers:
        vastai_sandbox.set_boot_latency(offer.id, 10_000.0)  # never ready in time
    # Destroys fail a few times: the teardown outlives the caller's deadline, then succeeds.
    vastai_sandbox.add_fault(HTTPFault(kind="status", status=500, route=_DELETE_MANY, times=2))
    vastai_sandbox.add_fault(HTTPFault(kind="status", status=500, route=_DELETE_ONE, times=2))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.4):
            await vastai_service.provision_instance(job_id="late", offers=offers, fan_out=3)
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_repeated_cancels_at_request_counts_inside_teardown_leak_nothing(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = pick_offers(await vastai_service.search_offers(), 3)
    for offer in offers:
        vastai_sandbox.set_boot_latency(offer.id, 10_000.0)
    task = asyncio.create_task(
        vastai_service.provision_instance(job_id="storm", offers=offers, fan_out=3)
    )
    # Cut once the three creates and key attaches are in, then keep cutting every request
    # of the teardown that follows.
    base = len(vastai_sandbox.requests)
    cuts = [base + 7 + k for k in range(8)]
    wire = Tripwire(vastai_sandbox.state.requests, cuts, task.cancel)
    vastai_sandbox.state.requests = wire
    with pytest.raises(asyncio.CancelledError):
        await task
    wire.disarm()
    assert wire.fired >= 2, "the teardown itself must have been cancelled too"
    assert vastai_sandbox.alive_instance_ids() == set()
