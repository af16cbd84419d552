"""Cancelling a provision at any point leaves nothing alive in the sandbox ledger."""

from __future__ import annotations

import asyncio

import pytest

from vastai_async import Rental, VastAIService
from vastai_async.events import Event
from vastai_async.models import Offer
from vastai_async.sandbox import Sandbox

pytestmark = pytest.mark.vastai_sandbox(offers=30, time_scale=0.02, seed=11)

BOOTS = (30.0, 5.0, 15.0, 60.0)  # simulated seconds; spaced so event order is stable


async def _offers(service: VastAIService, sandbox: Sandbox) -> list[Offer]:
    seen: set[int | None] = set()
    picked = []
    for offer in await service.search_offers():
        if offer.machine_id not in seen:
            seen.add(offer.machine_id)
            picked.append(offer)
    picked = picked[: len(BOOTS)]
    for offer, boot in zip(picked, BOOTS, strict=True):
        sandbox.set_boot_latency(offer.id, boot)
    return picked


async def _provision_cut_at(
    service: VastAIService, offers: list[Offer], job: str, cut_at: int | None
) -> tuple[list[Event], Rental | None, bool]:
    """Provision; cancel the provision when event number ``cut_at`` is emitted."""
    events: list[Event] = []
    task: asyncio.Task[Rental] | None = None

    def on_event(event: Event) -> None:
        events.append(event)
        if cut_at is not None and len(events) == cut_at and task is not None:
            task.cancel()

    task = asyncio.create_task(
        service.provision_instance(job_id=job, offers=offers, fan_out=3, on_event=on_event)
    )
    try:
        rental = await task
    except asyncio.CancelledError:
        return events, None, True
    return events, rental, False


async def test_cancellation_at_every_event_index_leaks_nothing(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await _offers(vastai_service, vastai_sandbox)
    events, rental, _ = await _provision_cut_at(vastai_service, offers, "count", None)
    assert rental is not None
    await rental.terminate()
    total = len(events)
    assert total >= 10
    cut_points = list(range(1, total + 1))
    # At least 50 cut-in points: beyond the first race's length, later indexes cut into the
    # teardown of a race that already has a winner (or let it finish).
    while len(cut_points) < 50:
        cut_points.append(cut_points[-1] + 1)
    cancelled = 0
    for index in cut_points:
        _, rental, was_cancelled = await _provision_cut_at(
            vastai_service, offers, f"cut-{index}", index
        )
        if rental is not None:
            await rental.terminate()
        cancelled += was_cancelled
        assert vastai_sandbox.alive_instance_ids() == set(), f"leak after cutting at {index}"
    # Probe counts vary a little between runs, so not every index lands inside a race; most do.
    assert cancelled >= 15


async def test_caller_timeout_raises_timeout_error_and_leaks_nothing(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await _offers(vastai_service, vastai_sandbox)
    for offer in offers:
        vastai_sandbox.set_boot_latency(offer.id, 10_000.0)  # never ready in time
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await vastai_service.provision_instance(job_id="slow", offers=offers, fan_out=3)
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_cancel_during_rental_exit_still_terminates(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await _offers(vastai_service, vastai_sandbox)
    rental = await vastai_service.provision_instance(job_id="exit", offers=offers[:1], fan_out=1)

    async def use_then_exit() -> None:
        async with rental:
            await asyncio.sleep(0)

    task = asyncio.create_task(use_then_exit())
    await asyncio.sleep(0)  # enter the block
    await asyncio.sleep(0)  # now inside __aexit__'s terminate
    for _ in range(3):
        task.cancel()
        await asyncio.sleep(0.005)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert vastai_sandbox.alive_instance_ids() == set()
