"""Host reputation on real races against the sandbox: what each race records (wins, losses,
failures by kind, cancellations), and how the next race uses it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

import pytest

from vastai_async import InvalidRequestError, SSHError, VastAIConfig, VastAIService
from vastai_async.events import CandidateChosen, Event, InstanceCreated
from vastai_async.models import Offer
from vastai_async.reputation import (
    HostHistoryError,
    HostOutcome,
    OfferRanker,
    OffersRanked,
    OutcomeKind,
    SQLiteHostHistory,
)
from vastai_async.sandbox import LifecycleFault, Sandbox

pytestmark = pytest.mark.vastai_sandbox(offers=30, time_scale=0.02, seed=17)


async def distinct(service: VastAIService, n: int) -> list[Offer]:
    """The first ``n`` offers on distinct machines that a rental of the default disk fits."""
    picked: list[Offer] = []
    disk = service.config.default_disk_gb
    for offer in await service.search_offers():
        if offer.disk_space_gb is not None and offer.disk_space_gb < disk:
            continue
        if offer.machine_id not in {o.machine_id for o in picked}:
            picked.append(offer)
        if len(picked) == n:
            return picked
    raise AssertionError("not enough machines")


def store_of(config: VastAIConfig) -> SQLiteHostHistory:
    return SQLiteHostHistory.in_state_dir(config.state_dir)


def by_offer(records: Iterable[HostOutcome]) -> dict[int, HostOutcome]:
    return {r.offer_id: r for r in records}


def boot(sandbox: Sandbox, offers: Sequence[Offer], latencies: Sequence[float]) -> None:
    for offer, sim_s in zip(offers, latencies, strict=True):
        sandbox.set_boot_latency(offer.id, sim_s)


async def test_a_race_records_its_winner_and_its_censored_losers(
    vastai_config: VastAIConfig, vastai_sandbox: Sandbox
) -> None:
    async with VastAIService(config=vastai_config) as vast:
        offers = await distinct(vast, 3)
        boot(vastai_sandbox, offers, (400.0, 40.0, 200.0))
        rental = await vast.provision_instance(job_id="rep-1", offers=offers, fan_out=3)
        await rental.terminate()
    got = by_offer(await store_of(vastai_config).history())
    assert set(got) == {o.id for o in offers}
    winner = got[offers[1].id]
    assert winner.kind == OutcomeKind.WON
    assert winner.instance_id == rental.instance_id
    assert winner.machine_id == offers[1].machine_id
    assert winner.host_id == offers[1].host_id
    assert winner.dph_total == offers[1].dph_total
    assert winner.image == vastai_config.default_image
    assert winner.login_s is not None
    assert winner.login_s > 0
    # The proxy login may beat the poller's view of "running"; when it was seen, it came first.
    assert winner.running_s is None or winner.running_s <= winner.login_s
    for loser in (got[offers[0].id], got[offers[2].id]):
        assert loser.kind == OutcomeKind.LOST_LOADING
        assert loser.login_s is None
        # Censored: still loading when the winner logged in.
        assert loser.elapsed_s is not None
        assert loser.elapsed_s >= winner.login_s * 0.5


async def test_failures_are_recorded_by_kind_and_pushed_back_next_time(
    vastai_config: VastAIConfig, vastai_sandbox: Sandbox
) -> None:
    async with VastAIService(config=vastai_config) as vast:
        offers = await distinct(vast, 3)
        boot(vastai_sandbox, offers, (20.0, 20.0, 150.0))
        vastai_sandbox.set_lifecycle_fault(offers[0].id, LifecycleFault(oci_error=True))
        vastai_sandbox.set_lifecycle_fault(offers[1].id, LifecycleFault(offline_after_s=0))
        rental = await vast.provision_instance(job_id="rep-2", offers=offers, fan_out=3)
        assert rental.info.offer is not None
        assert rental.info.offer.id == offers[2].id
        await rental.terminate()
        await vast._reputation.drain()
        got = by_offer(await store_of(vastai_config).history())
        assert got[offers[0].id].kind == OutcomeKind.OCI_ERROR
        assert got[offers[1].id].kind == OutcomeKind.OFFLINE
        assert got[offers[2].id].kind == OutcomeKind.WON
        # The next race, in the same order, puts the two broken machines behind the good one.
        events: list[Event] = []
        rental = await vast.provision_instance(
            job_id="rep-3", offers=offers, fan_out=1, on_event=events.append
        )
        await rental.terminate()
    ranked = next(e for e in events if isinstance(e, OffersRanked))
    assert [e.offer_id for e in ranked.entries] == [offers[2].id, offers[0].id, offers[1].id] or [
        e.offer_id for e in ranked.entries
    ] == [offers[2].id, offers[1].id, offers[0].id]
    assert [e.pushed_back for e in ranked.entries] == [False, True, True]
    assert "pushed back" in ranked.entries[1].reason
    chosen = [e.offer_id for e in events if isinstance(e, CandidateChosen)]
    assert chosen == [offers[2].id]


async def test_the_next_race_tries_the_machine_that_booted_fastest_first(
    vastai_config: VastAIConfig, vastai_sandbox: Sandbox
) -> None:
    async with VastAIService(config=vastai_config) as vast:
        offers = await distinct(vast, 3)
        boot(vastai_sandbox, offers, (400.0, 40.0, 200.0))
        rental = await vast.provision_instance(job_id="learn-1", offers=offers, fan_out=3)
        await rental.terminate()
        await vast._reputation.drain()
        # Slowest first, one at a time: without history this would wait for the slow machine.
        slow_first = [offers[0], offers[2], offers[1]]
        events: list[Event] = []
        rental = await vast.provision_instance(
            job_id="learn-2", offers=slow_first, fan_out=1, on_event=events.append
        )
        assert rental.info.offer is not None
        assert rental.info.offer.id == offers[1].id
        await rental.terminate()
        ranked = next(e for e in events if isinstance(e, OffersRanked))
        assert ranked.entries[0].offer_id == offers[1].id
        assert ranked.entries[0].records >= 1
        # rank=False keeps the caller's order and says nothing about ranking.
        events.clear()
        rental = await vast.provision_instance(
            job_id="learn-3", offers=slow_first, fan_out=3, on_event=events.append, rank=False
        )
        await rental.terminate()
        assert not any(isinstance(e, OffersRanked) for e in events)
        chosen = [e.offer_id for e in events if isinstance(e, CandidateChosen)]
        assert chosen == [o.id for o in slow_first]


async def test_a_cancelled_race_records_what_it_had_created(
    vastai_config: VastAIConfig, vastai_sandbox: Sandbox
) -> None:
    async with VastAIService(config=vastai_config) as vast:
        offers = await distinct(vast, 3)
        boot(vastai_sandbox, offers, (2000.0, 2000.0, 2000.0))
        created: list[int] = []
        all_created = asyncio.Event()

        def watch(event: Event) -> None:
            if isinstance(event, InstanceCreated):
                created.append(event.instance_id)
                if len(created) == 3:
                    all_created.set()

        task = asyncio.create_task(
            vast.provision_instance(job_id="rep-c", offers=offers, fan_out=3, on_event=watch)
        )
        async with asyncio.timeout(30):
            await all_created.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert vastai_sandbox.alive_instance_ids() == set()
    got = await store_of(vastai_config).history()
    assert sorted(r.instance_id or 0 for r in got) == sorted(created)
    assert {r.kind for r in got} == {OutcomeKind.LOST_LOADING}
    assert all(r.elapsed_s is not None and r.elapsed_s >= 0 for r in got)


class _BrokenStore:
    async def record(self, outcomes: Sequence[HostOutcome]) -> None:
        raise HostHistoryError("disk full")

    async def history(self, machine_ids: Iterable[int] | None = None) -> list[HostOutcome]:
        raise HostHistoryError("disk on fire")

    async def forget(self, machine_ids: Iterable[int] | None = None) -> int:
        return 0

    async def close(self) -> None:
        pass


async def test_a_broken_store_never_breaks_a_race(
    vastai_config: VastAIConfig, vastai_sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vastai_async")
    async with VastAIService(config=vastai_config, host_history=_BrokenStore()) as vast:
        offers = await distinct(vast, 2)
        boot(vastai_sandbox, offers, (30.0, 60.0))
        rental = await vast.provision_instance(job_id="rep-b", offers=offers, fan_out=2)
        await rental.terminate()
    assert "host history unavailable" in caplog.text
    assert "disk full" in caplog.text


async def test_rank_is_checked_before_anything_is_rented(
    vastai_config: VastAIConfig, vastai_sandbox: Sandbox
) -> None:
    async with VastAIService(config=vastai_config) as vast:
        offers = await distinct(vast, 2)
        with pytest.raises(InvalidRequestError, match="rank must be"):
            await vast.provision_instance(job_id="x", offers=offers, rank="fast")  # type: ignore[arg-type]
    assert vastai_sandbox.alive_instance_ids() == set()
    assert not vastai_sandbox.request_counts().get("PUT /api/v0/asks/{id}/")


async def test_a_custom_ranker_and_no_history(
    vastai_config: VastAIConfig, vastai_sandbox: Sandbox
) -> None:
    """``host_history=False`` remembers nothing; a ranker passed in is used as given."""
    records = [HostOutcome(machine_id=0, offer_id=0, kind=OutcomeKind.WON, login_s=5.0, at=0.0)]

    class Fixed(OfferRanker):
        async def rank(self, offers: Sequence[Offer]):  # type: ignore[no-untyped-def]
            return self.rank_records(list(reversed(offers)), records, now=1.0)

    async with VastAIService(config=vastai_config, host_history=False) as vast:
        offers = await distinct(vast, 2)
        boot(vastai_sandbox, offers, (30.0, 30.0))
        events: list[Event] = []
        rental = await vast.provision_instance(
            job_id="rep-n", offers=offers, fan_out=1, rank=Fixed(), on_event=events.append
        )
        await rental.terminate()
    assert not (vastai_config.state_dir / "hosts.sqlite3").exists()
    assert any(isinstance(e, OffersRanked) for e in events)
    chosen = [e.offer_id for e in events if isinstance(e, CandidateChosen)]
    assert len(chosen) == 1


async def test_adopt_records_how_the_machine_answered(
    vastai_config: VastAIConfig, vastai_sandbox: Sandbox
) -> None:
    """``adopt`` touches a machine too: a proven login is ``adopted``, none is ``ssh_refused``."""
    async with VastAIService(config=vastai_config, host_history=False) as first:
        offer, other = await distinct(first, 2)
        rental = await first.provision_instance(job_id="rep-a", offers=[offer])
        await rental.close()  # the machine stays; this service lets go of it
    instance_id = rental.instance_id
    assert await store_of(vastai_config).history() == []  # nothing recorded by that service
    async with VastAIService(config=vastai_config) as vast:
        adopted = await vast.adopt(instance_id)
        await adopted.run("true")
        await adopted.close()
    (ok,) = await store_of(vastai_config).history()
    assert (ok.kind, ok.machine_id, ok.instance_id) == ("adopted", offer.machine_id, instance_id)
    assert ok.offer_id is None  # an instance does not say which offer it came from
    assert ok.login_s is None  # its boot was not seen: no time to learn from
    assert ok.dph_total == offer.dph_total

    vastai_sandbox.ssh_server(instance_id).faults.refuse = True
    timings = vastai_config.timings.replace(ssh_s=0.5)
    async with VastAIService(config=vastai_config, timings=timings) as vast:
        with pytest.raises(SSHError, match="no SSH login"):
            await vast.adopt(instance_id)
        await vast.terminate_instance(instance_id)
    refused, again = await store_of(vastai_config).history()  # newest first
    assert (refused.kind, refused.machine_id) == (OutcomeKind.SSH_REFUSED, offer.machine_id)
    assert again == ok
    # The fatal failure pushes the machine behind one never seen.
    ranking = await OfferRanker(store_of(vastai_config)).rank([offer, other])
    assert [o.id for o in ranking.offers] == [other.id, offer.id]
    assert vastai_sandbox.alive_instance_ids() == set()
