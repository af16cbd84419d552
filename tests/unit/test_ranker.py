"""OfferRanker on synthetic histories: cold, warm, drifting; exploration, fatal push-back,
reliability as a prior, seeded tie-breaking. Pure functions: no store, no server."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterable, Sequence

import pytest

from vastai_async.models import Offer
from vastai_async.reputation import HostHistoryError, HostOutcome, OfferRanker, OutcomeKind

NOW = 1_800_000_000.0


def offer(machine_id: int, *, price: float = 1.0, reliability: float = 0.95) -> Offer:
    return Offer(
        id=1000 + machine_id,
        machine_id=machine_id,
        host_id=machine_id // 10,
        dph_total=price,
        reliability=reliability,
        gpu_name="RTX 4090",
        num_gpus=1,
    )


def won(machine_id: int, login_s: float, *, ago: float = 600.0) -> HostOutcome:
    return HostOutcome(
        machine_id=machine_id,
        offer_id=1000 + machine_id,
        kind=OutcomeKind.WON,
        running_s=login_s - 2,
        login_s=login_s,
        elapsed_s=login_s,
        at=NOW - ago,
    )


def lost(machine_id: int, elapsed_s: float, *, ago: float = 600.0) -> HostOutcome:
    return HostOutcome(
        machine_id=machine_id,
        offer_id=1000 + machine_id,
        kind=OutcomeKind.LOST_LOADING,
        elapsed_s=elapsed_s,
        at=NOW - ago,
    )


def fatal(machine_id: int, kind: str = OutcomeKind.OCI_ERROR, *, ago: float) -> HostOutcome:
    return HostOutcome(
        machine_id=machine_id, offer_id=1000 + machine_id, kind=kind, elapsed_s=30.0, at=NOW - ago
    )


def order(ranker: OfferRanker, offers: list[Offer], records: list[HostOutcome]) -> list[int]:
    ranking = ranker.rank_records(offers, records, now=NOW)
    return [o.machine_id or 0 for o in ranking.offers]


def warm_market(rng: random.Random) -> tuple[dict[int, float], list[HostOutcome]]:
    """Twenty machines with typical login times 30..600 s and four rentals each (+-30%)."""
    typical = {m: 30.0 * (1.17**m) for m in range(1, 21)}
    records = []
    for m, t in typical.items():
        for i, noise in enumerate((0.75, 0.95, 1.05, 1.3)):
            records.append(won(m, t * noise * rng.uniform(0.97, 1.03), ago=100.0 * (i + 1)))
    return typical, records


def test_cold_history_keeps_the_callers_order() -> None:
    """No history at all: nothing is reordered (no harm without knowledge)."""
    offers = [offer(m, price=p) for m, p in ((5, 3.0), (2, 1.0), (9, 2.0))]
    ranking = OfferRanker().rank_records(offers, [], now=NOW)
    assert not ranking.informed
    assert [o.id for o in ranking.offers] == [o.id for o in offers]
    assert all("no host history" in e.reason for e in ranking.entries)


def test_warm_history_puts_the_fastest_machines_first() -> None:
    typical, records = warm_market(random.Random(1))
    offers = [offer(m) for m in sorted(typical, reverse=True)]  # slowest first
    ranked = order(OfferRanker(), offers, records)
    assert ranked[:4] == [1, 2, 3, 4]
    assert ranked[-1] == 20


def test_estimates_track_measured_times_and_shrink_sparse_histories() -> None:
    typical, records = warm_market(random.Random(2))
    prior, est = OfferRanker().estimate(records)
    assert prior.from_data
    for m, t in typical.items():
        assert est[m].expected_login_s == pytest.approx(t, rel=0.25)
    # One fast observation is shrunk toward the market far more than ten of them.
    one = [won(99, 20.0)]
    ten = [won(98, 20.0 * (1 + 0.01 * i), ago=10.0 * i) for i in range(10)]
    _, est = OfferRanker().estimate(records + one + ten)
    assert est[98].expected_login_s < est[99].expected_login_s
    assert 20.0 < est[99].expected_login_s < prior.median_login_s
    assert est[99].var_log_s > est[98].var_log_s


def test_unseen_machines_are_explored_not_ignored() -> None:
    """Unseen: behind machines known to be fast, ahead of machines known to be slow."""
    typical, records = warm_market(random.Random(3))
    unseen = offer(500)
    offers = [offer(m) for m in typical] + [unseen]
    ranking = OfferRanker().rank_records(offers, records, now=NOW)
    ranked = [o.machine_id for o in ranking.offers]
    position = ranked.index(500)
    assert 0 < position < len(ranked) - 1
    assert ranked[0] == 1
    assert ranked[-1] == 20
    entry = ranking.entries[position]
    assert entry.records == 0
    assert "unseen machine" in entry.reason


def test_losers_count_as_censored_times() -> None:
    """A machine that only ever lost after 100 s is believed slower than 100 s."""
    _, records = warm_market(random.Random(4))
    records += [lost(77, 100.0, ago=50.0 * i) for i in range(1, 5)]
    _, est = OfferRanker().estimate(records)
    assert est[77].expected_login_s > 100.0
    assert est[77].wins == 0


def test_recent_fatal_failure_pushes_a_machine_back_for_a_while() -> None:
    _, records = warm_market(random.Random(5))
    offers = [offer(m) for m in (1, 2, 3)]
    broken = [*records, fatal(1, ago=600.0)]
    ranking = OfferRanker(fatal_cooldown_s=3600).rank_records(offers, broken, now=NOW)
    assert [o.machine_id for o in ranking.offers] == [2, 3, 1]
    assert ranking.entries[-1].pushed_back
    assert "oci_error" in ranking.entries[-1].reason
    # Two hours later the cooldown is over: machine 1 is judged on its record again.
    later = [*records, fatal(1, ago=7200.0)]
    assert order(OfferRanker(fatal_cooldown_s=3600), offers, later)[0] == 1


@pytest.mark.parametrize(
    "kind",
    [OutcomeKind.STUCK, OutcomeKind.OCI_ERROR, OutcomeKind.OFFLINE, OutcomeKind.SSH_REFUSED],
)
def test_every_fatal_kind_pushes_back(kind: str) -> None:
    _, records = warm_market(random.Random(6))
    ranking = OfferRanker().rank_records(
        [offer(1), offer(2)], [*records, fatal(1, kind, ago=60.0)], now=NOW
    )
    assert [e.machine_id for e in ranking.entries] == [2, 1]


def test_lost_races_and_outbids_do_not_push_back() -> None:
    _, records = warm_market(random.Random(7))
    extra = [lost(1, 5.0, ago=10.0), fatal(1, OutcomeKind.OUTBID, ago=10.0)]
    ranking = OfferRanker().rank_records([offer(2), offer(1)], records + extra, now=NOW)
    assert not any(e.pushed_back for e in ranking.entries)
    assert ranking.entries[0].machine_id == 1


def test_reliability_is_a_prior_not_the_answer() -> None:
    _, records = warm_market(random.Random(8))
    a, b = offer(300, reliability=0.99), offer(301, reliability=0.5)
    # Both unseen: the more reliable machine goes first.
    assert order(OfferRanker(), [b, a], records) == [300, 301]
    # Evidence outweighs the prior: the "unreliable" machine has won fast five times.
    proven = [won(301, 25.0, ago=100.0 * i) for i in range(1, 6)]
    assert order(OfferRanker(), [a, b], records + proven) == [301, 300]


def test_price_weighs_in_but_speed_dominates() -> None:
    _, records = warm_market(random.Random(9))
    same = [won(400, 60.0, ago=10.0 * i) for i in range(1, 6)]
    same += [won(401, 60.0, ago=10.0 * i) for i in range(1, 6)]
    cheap, dear = offer(400, price=0.5), offer(401, price=2.0)
    assert order(OfferRanker(), [dear, cheap], records + same) == [400, 401]
    faster = [won(402, 20.0, ago=10.0 * i) for i in range(1, 6)]
    fast_dear = offer(402, price=2.0)
    assert order(OfferRanker(), [cheap, fast_dear], records + same + faster)[0] == 402
    assert order(OfferRanker(price_weight=0), [dear, cheap], records + same)[0] in (400, 401)


def test_a_drifting_machine_is_relearned_in_a_few_rentals() -> None:
    """Fast for ten rentals, then three slow ones: the estimate follows the recent ones."""
    _, records = warm_market(random.Random(10))
    history = [won(600, 30.0, ago=1000.0 + 10 * i) for i in range(10)]
    _, before = OfferRanker().estimate(records + history)
    assert before[600].expected_login_s < 45
    slow = [won(600, 300.0, ago=10.0 * (i + 1)) for i in range(3)]
    _, after = OfferRanker().estimate(records + history + slow)
    assert after[600].expected_login_s > 150
    # ... and a machine that got faster is preferred again just as quickly.
    quick = [won(600, 30.0, ago=1.0 + i) for i in range(3)]
    _, back = OfferRanker().estimate(records + history + slow + quick)
    assert back[600].expected_login_s < 90


def test_ties_are_broken_by_a_seeded_hash_not_the_input_order() -> None:
    _, records = warm_market(random.Random(11))
    twins = [offer(m) for m in range(700, 710)]
    first = order(OfferRanker(seed=1), twins, records)
    assert first == order(OfferRanker(seed=1), list(reversed(twins)), records)
    assert first == order(OfferRanker(seed=1), twins, records)
    others = {tuple(order(OfferRanker(seed=s), twins, records)) for s in range(2, 8)}
    assert len(others | {tuple(first)}) > 1


def test_a_few_records_are_not_enough_for_a_market_estimate() -> None:
    prior, _ = OfferRanker(default_login_s=90).estimate([won(1, 10.0)])
    assert not prior.from_data
    assert prior.median_login_s == pytest.approx(90.0)
    assert math.isfinite(prior.tau2)


def test_a_machine_that_turned_slow_is_relearned_from_its_losses() -> None:
    """In a race a slowed machine loses rather than wins: two long losses are enough."""
    _, records = warm_market(random.Random(12))
    history = [won(601, 30.0, ago=1000.0 + 10 * i) for i in range(10)]
    losses = [lost(601, 200.0, ago=10.0), lost(601, 220.0, ago=20.0)]
    _, est = OfferRanker().estimate(records + history + losses)
    assert est[601].expected_login_s > 200.0


class _MemoryStore:
    def __init__(self, records: list[HostOutcome]) -> None:
        self.records = records

    async def record(self, outcomes: object) -> None:
        raise AssertionError("the ranker only reads")

    async def history(self, machine_ids: object = None) -> list[HostOutcome]:
        return list(self.records)

    async def forget(self, machine_ids: object = None) -> int:
        return 0

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("copies", [1, 60])
async def test_rank_reads_the_store_small_or_large(copies: int) -> None:
    """The same order whether ranked inline or (for a large history) in a worker thread."""
    typical, records = warm_market(random.Random(13))
    many = [r for _ in range(copies) for r in records]
    ranker = OfferRanker(_MemoryStore(many), clock=lambda: NOW)  # type: ignore[arg-type]
    ranking = await ranker.rank([offer(m) for m in sorted(typical, reverse=True)])
    assert ranking.informed
    assert [o.machine_id for o in ranking.offers][:3] == [1, 2, 3]


class CountingStore:
    """A history store that counts reads; a read can be held open or made to fail."""

    def __init__(self, records: list[HostOutcome]) -> None:
        self.records = records
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.reading = asyncio.Event()

    async def record(self, outcomes: Sequence[HostOutcome]) -> None:
        self.records.extend(outcomes)

    async def history(self, machine_ids: Iterable[int] | None = None) -> list[HostOutcome]:
        self.reads += 1
        self.reading.set()
        snapshot = list(self.records)  # what the read sees: the store as the read began
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return snapshot

    async def forget(self, machine_ids: Iterable[int] | None = None) -> int:
        return 0

    async def close(self) -> None:
        pass


async def test_a_hundred_ranks_at_once_read_and_fit_the_history_once() -> None:
    _, records = warm_market(random.Random(3))
    store = CountingStore(records)
    store.gate = asyncio.Event()
    ranker = OfferRanker(store, clock=lambda: NOW)
    offers = [offer(m) for m in (20, 1, 10)]
    ranks = [asyncio.ensure_future(ranker.rank(offers)) for _ in range(100)]
    await asyncio.sleep(0)
    ranks[0].cancel()  # one caller gives up: the others still get the shared fit
    store.gate.set()
    done = await asyncio.gather(*ranks[1:])
    assert store.reads == 1
    assert {tuple(o.machine_id for o in r.offers) for r in done} == {(1, 10, 20)}
    assert ranks[0].cancelled()


async def test_the_fit_is_reused_until_invalidated_or_stale() -> None:
    _, records = warm_market(random.Random(4))
    store = CountingStore(records)
    ranker = OfferRanker(store, clock=lambda: NOW)
    offers = [offer(1), offer(2)]
    await ranker.rank(offers)
    await ranker.rank(offers)
    assert store.reads == 1
    store.records.append(fatal(1, ago=10.0))  # another process wrote: seen after invalidate()
    assert (await ranker.rank(offers)).offers[0].machine_id == 1
    ranker.invalidate()
    assert (await ranker.rank(offers)).offers[0].machine_id == 2  # machine 1 is pushed back
    assert store.reads == 2
    ranker.cache_s = 0.0  # stale at once: every rank reads
    await ranker.rank(offers)
    assert store.reads == 3


async def test_a_failed_read_fails_its_ranks_and_the_next_rank_reads_again() -> None:
    _, records = warm_market(random.Random(5))
    store = CountingStore(records)
    store.fail = HostHistoryError("disk on fire")
    ranker = OfferRanker(store, clock=lambda: NOW)
    with pytest.raises(HostHistoryError, match="disk on fire"):
        await ranker.rank([offer(1), offer(2)])
    store.fail = None
    assert (await ranker.rank([offer(2), offer(1)])).informed
    assert store.reads == 2


async def test_a_rank_after_invalidate_does_not_join_a_fit_that_read_before_the_write() -> None:
    _, records = warm_market(random.Random(6))
    store = CountingStore(records)
    store.gate = asyncio.Event()
    ranker = OfferRanker(store, clock=lambda: NOW)
    offers = [offer(1), offer(2)]
    early = asyncio.ensure_future(ranker.rank(offers))
    await store.reading.wait()  # its read is in flight, held
    store.records.append(fatal(1, ago=10.0))  # a write lands ...
    ranker.invalidate()  # ... and says so
    late = asyncio.ensure_future(ranker.rank(offers))
    store.gate.set()
    assert (await early).offers[0].machine_id == 1  # it read before the write
    assert (await late).offers[0].machine_id == 2  # it reads again: machine 1 is pushed back
    assert store.reads == 2
