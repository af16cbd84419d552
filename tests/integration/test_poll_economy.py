"""Status economy: once a candidate's SSH probes run, its status is listed at the slower tick.

Counted on the sandbox's own request log (the poller's listings are the v1 list calls that
filter by instance id) against the poller's ticks, so the assertions hold however slowly the
machine runs: no wall-clock figure is asserted.
"""

from __future__ import annotations

import json

import pytest

from tests.integration._market import distinct_machines
from vastai_async import VastAIService
from vastai_async.config import VastAIConfig
from vastai_async.events import Event, ProbeAttempt, WinnerChosen
from vastai_async.models import Offer
from vastai_async.sandbox import Sandbox

pytestmark = pytest.mark.vastai_sandbox(offers=30, time_scale=0.02, seed=11)

LIST = "GET /api/v1/instances/"


def _status_listings(sandbox: Sandbox, start: int, until: float) -> list[list[int]]:
    """The ids of every status listing (v1 list filtered by id) from request ``start`` until
    the winner was chosen (custody's confirming listings come after)."""
    out: list[list[int]] = []
    for rec in sandbox.requests[start:]:
        if rec.route != LIST or rec.at > until:
            continue
        filters = json.loads(rec.query.get("select_filters", "{}"))
        if "id" in filters:
            out.append(sorted(filters["id"]["in"]))
    return out


async def _race(
    config: VastAIConfig, sandbox: Sandbox, offers: list[Offer], probing_ticks: int
) -> tuple[list[list[int]], int, list[Event]]:
    timings = config.timings
    timings = timings.replace(probing_poll_interval_s=probing_ticks * timings.poll_interval_s)
    events: list[Event] = []
    start = len(sandbox.requests)
    async with VastAIService(config=config, timings=timings) as service:
        rental = await service.provision_instance(
            job_id=f"eco{probing_ticks}", offers=offers, fan_out=4, on_event=events.append
        )
        poller = service._poller
        assert poller is not None
        won = next(e for e in events if isinstance(e, WinnerChosen))
        listings = _status_listings(sandbox, start, won.at)
        wakes = poller.wakes
        await rental.terminate()
    return listings, wakes, events


async def test_probing_candidates_are_listed_every_fourth_tick_together(
    vastai_config: VastAIConfig, vastai_sandbox: Sandbox, vastai_service: VastAIService
) -> None:
    offers = distinct_machines(await vastai_service.search_offers(), 4)
    for offer, boot_s in zip(offers, (90.0, 120.0, 150.0, 180.0), strict=True):
        vastai_sandbox.set_boot_latency(offer.id, boot_s)
    listings, wakes, events = await _race(vastai_config, vastai_sandbox, offers, 4)
    # Probes ran from the first listing on (the proxy port exists before the machine boots).
    assert any(isinstance(e, ProbeAttempt) for e in events)
    # ~30 ticks passed while the first machine booted; listing every tick would cost as many.
    assert wakes >= 20
    # First listings until every candidate was seen once (usually two: the first candidate is
    # listed as the poller wakes, the others a tick later); from then on one listing every 4th
    # tick for all four together (one more allowed for a slow-down processed after a tick).
    covered: set[int] = set()
    first = 0
    while len(covered) < 4:
        covered |= set(listings[first])
        first += 1
    later = listings[first:]
    assert len(later) <= wakes // 4 + 1
    assert sum(len(ids) == 4 for ids in later) >= len(later) - 1


async def test_without_the_slower_tick_every_tick_lists(
    vastai_config: VastAIConfig, vastai_sandbox: Sandbox, vastai_service: VastAIService
) -> None:
    """The control: the same race with the probing tick equal to the loading tick."""
    offers = distinct_machines(await vastai_service.search_offers(), 4)
    for offer, boot_s in zip(offers, (90.0, 120.0, 150.0, 180.0), strict=True):
        vastai_sandbox.set_boot_latency(offer.id, boot_s)
    listings, wakes, _ = await _race(vastai_config, vastai_sandbox, offers, 1)
    assert wakes >= 20
    assert len(listings) >= wakes - 2  # a tick may fall between the win and the unwatch
