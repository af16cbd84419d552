"""Host history: outcomes read from a race's events, and the stores that keep them.

SQLite: round trip, bounds, schema version, several processes writing at once. Redis (the same
behaviour): needs ``VASTAI_TEST_REDIS_URL``; skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from vastai_async.errors import SSHError
from vastai_async.events import (
    CandidateChosen,
    CandidateFailed,
    CreateFailed,
    InstanceCreated,
    InstanceDestroyed,
    StatusChanged,
    WinnerChosen,
)
from vastai_async.models import Instance, Offer
from vastai_async.reputation import (
    HostHistory,
    HostHistoryError,
    HostOutcome,
    HostRecorder,
    OfferRanker,
    OutcomeKind,
    RedisHostHistory,
    SQLiteHostHistory,
    classify_failure,
)
from vastai_async.reputation.service_glue import HostReputation

#: Read at import: the autouse fixture clears ``VASTAI_*`` before each test.
REDIS_URL = os.environ.get("VASTAI_TEST_REDIS_URL")


def outcome(machine_id: int, at: float, kind: str = OutcomeKind.WON, **kw: object) -> HostOutcome:
    return HostOutcome(machine_id=machine_id, offer_id=machine_id * 10, kind=kind, at=at, **kw)  # type: ignore[arg-type]


# -- the recorder --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("OCI runtime create failed (status exited)", OutcomeKind.OCI_ERROR),
        ("status offline", OutcomeKind.OFFLINE),
        ("status exited", OutcomeKind.OFFLINE),
        ("instance disappeared from the listing", OutcomeKind.OFFLINE),
        ("not running within the loading deadline (900 s)", OutcomeKind.STUCK),
        ("no SSH login within 120 s of running", OutcomeKind.SSH_REFUSED),
        ("outbid: the market stopped this interruptible rental", OutcomeKind.OUTBID),
        ("offer unavailable (no_such_ask)", OutcomeKind.OFFER_GONE),
        ("created with a bid but Vast reports an on-demand rental", OutcomeKind.FAILED),
    ],
)
def test_failure_reasons_map_to_outcome_kinds(reason: str, kind: str) -> None:
    assert classify_failure(reason) == kind


def _offer(i: int) -> Offer:
    return Offer(
        id=i,
        machine_id=100 + i,
        host_id=7,
        num_gpus=1,
        gpu_name="A100",
        dph_total=0.5 * i,
        reliability=0.9,
    )


def test_recorder_turns_a_race_into_one_outcome_per_candidate() -> None:
    offers = [_offer(i) for i in (1, 2, 3, 4, 5)]
    rec = HostRecorder(offers, image="img:1")
    ids: dict[str, Any] = {"race_id": "r", "job_id": "j"}
    t0 = 1000.0
    for o in offers:
        rec(CandidateChosen(**ids, at=t0, offer_id=o.id, machine_id=o.machine_id,
                            gpu_name=None, dph_total=o.dph_total))  # fmt: skip
    rec(CreateFailed(**ids, at=t0 + 1, offer_id=5, reason="offer unavailable (no_such_ask)"))
    for o in offers[:4]:
        rec(InstanceCreated(**ids, at=t0 + 2, offer_id=o.id, instance_id=o.id * 11))
    rec(StatusChanged(**ids, at=t0 + 5, instance_id=11, old=None, new="loading"))
    rec(StatusChanged(**ids, at=t0 + 30, instance_id=11, old="loading", new="running"))
    rec(StatusChanged(**ids, at=t0 + 20, instance_id=22, old=None, new="exited",
                      status_msg="OCI runtime create failed"))  # fmt: skip
    rec(CandidateFailed(**ids, at=t0 + 21, offer_id=2, instance_id=22,
                        reason="OCI runtime create failed (status exited)"))  # fmt: skip
    rec(StatusChanged(**ids, at=t0 + 25, instance_id=33, old=None, new="running"))
    rec(WinnerChosen(**ids, at=t0 + 32, offer_id=1, instance_id=11, host="h", port=1,
                     kind="direct", elapsed_s=30.0))  # fmt: skip
    rec(InstanceDestroyed(**ids, at=t0 + 40, instance_id=33, reason="lost"))
    got = {o.offer_id: o for o in rec.outcomes(now=t0 + 50)}
    assert got[1].kind == OutcomeKind.WON
    assert got[1].login_s == 30.0
    assert got[1].running_s == pytest.approx(28.0)
    assert got[1].image == "img:1"
    assert got[1].host_id == 7
    assert got[1].dph_total == 0.5
    assert got[2].kind == OutcomeKind.OCI_ERROR
    assert got[2].elapsed_s == pytest.approx(19.0)
    assert got[3].kind == OutcomeKind.LOST_RUNNING
    assert got[3].running_s == pytest.approx(23.0)
    assert got[4].kind == OutcomeKind.LOST_LOADING
    assert got[4].elapsed_s == pytest.approx(30.0)  # censored at the winner's moment
    assert got[5].kind == OutcomeKind.OFFER_GONE
    assert got[5].instance_id is None


def test_recorder_of_a_cancelled_race_records_created_candidates_as_lost() -> None:
    offers = [_offer(1), _offer(2)]
    rec = HostRecorder(offers, image=None)
    ids: dict[str, Any] = {"race_id": "r", "job_id": "j"}
    for o in offers:
        rec(CandidateChosen(**ids, at=0.0, offer_id=o.id, machine_id=o.machine_id,
                            gpu_name=None, dph_total=None))  # fmt: skip
    rec(InstanceCreated(**ids, at=1.0, offer_id=1, instance_id=9))
    rec(CreateFailed(**ids, at=2.0, offer_id=2, reason="create withdrawn before it was sent"))
    out = rec.outcomes(now=11.0)
    # Offer 2's create never happened (withdrawn): nothing is known about its machine.
    assert [(o.offer_id, o.kind, o.elapsed_s) for o in out] == [(1, "lost_loading", 10.0)]


# -- stores ---------------------------------------------------------------------------------


@pytest_asyncio.fixture(params=["sqlite", "redis"], loop_scope="function")
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HostHistory]:
    if request.param == "sqlite":
        yield SQLiteHostHistory(tmp_path / "h.sqlite3", max_per_machine=3, max_records=10)
        return
    if not REDIS_URL:
        pytest.skip("VASTAI_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6390)")
    # The redis client is the optional `arq` extra (absent from `nox -s mindeps`).
    pytest.importorskip("redis", reason="the redis package (the 'arq' extra) is not installed")
    redis = RedisHostHistory(
        REDIS_URL, prefix=f"test-hosts-{secrets.token_hex(4)}:", max_per_machine=3
    )
    try:
        yield redis
    finally:
        await redis.forget()
        await redis.close()


async def test_store_round_trip_newest_first_and_by_machine(store: HostHistory) -> None:
    now = time.time()
    a = outcome(1, now - 30, login_s=12.5, running_s=10.0, image="x", dph_total=0.3)
    b = outcome(2, now - 20, OutcomeKind.OCI_ERROR, reason="OCI runtime")
    c = outcome(1, now - 10, OutcomeKind.LOST_LOADING, elapsed_s=4.0)
    await store.record([a, b])
    await store.record([c])
    assert await store.history() == [c, b, a]
    assert await store.history([1]) == [c, a]
    assert await store.history([]) == []
    assert await store.history([3]) == []


async def test_store_keeps_the_newest_records_per_machine(store: HostHistory) -> None:
    now = time.time()
    await store.record([outcome(1, now - 100 + i) for i in range(5)])
    kept = await store.history([1])
    assert [o.at for o in kept] == [now - 96, now - 97, now - 98]


async def test_store_ages_out_old_records(tmp_path: Path) -> None:
    db = SQLiteHostHistory(tmp_path / "h.sqlite3", max_age_s=3600)
    now = time.time()
    await db.record([outcome(1, now - 7200), outcome(2, now - 60)])
    await db.record([outcome(3, now)])
    assert [o.machine_id for o in await db.history()] == [3, 2]


async def test_sqlite_store_is_bounded_in_all(tmp_path: Path) -> None:
    db = SQLiteHostHistory(tmp_path / "h.sqlite3", max_records=10)
    now = time.time()
    await db.record([outcome(m, now - 100 + m) for m in range(25)])
    assert [o.machine_id for o in await db.history()] == list(range(24, 14, -1))


async def test_store_forgets_machines_or_everything(store: HostHistory) -> None:
    now = time.time()
    await store.record([outcome(1, now - 3), outcome(2, now - 2), outcome(2, now - 1)])
    assert await store.forget([2, 99]) == 2
    assert [o.machine_id for o in await store.history()] == [1]
    assert await store.forget() == 1
    assert await store.history() == []


async def test_sqlite_refuses_a_newer_schema_and_rebuilds_an_older_one(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(HostHistoryError, match="schema 99"):
        await SQLiteHostHistory(path).history()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE outcomes (old TEXT)")
        db.execute("PRAGMA user_version = 0")
    fresh = SQLiteHostHistory(path)
    await fresh.record([outcome(1, time.time())])
    assert [o.machine_id for o in await fresh.history()] == [1]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_an_unusable_path_is_a_typed_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = SQLiteHostHistory(blocker / "sub" / "h.sqlite3")
    assert await store.history() == []  # never written: nothing to read, nothing created
    with pytest.raises(HostHistoryError, match="cannot open"):
        await store.record([outcome(1, time.time())])


def _writer(path: str, worker: int, count: int, start: float) -> None:
    store = SQLiteHostHistory(path, max_per_machine=1000, max_records=100_000)
    for i in range(count):
        store.record_sync([outcome(worker * 1000 + i % 7, start + i, login_s=float(worker))])


def test_several_processes_write_without_losing_a_record(tmp_path: Path) -> None:
    """Four processes record 40 outcomes each, one at a time, into one file: all 160 land."""
    path = str(tmp_path / "shared.sqlite3")
    start = time.time()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 40, start)) for w in range(1, 5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    records = SQLiteHostHistory(path).history_sync()
    assert len(records) == 160
    for w in range(1, 5):
        assert sum(o.login_s == float(w) for o in records) == 40


def _opener(paths: list[str], barrier: Any) -> None:
    failed = 0
    for path in paths:
        store = SQLiteHostHistory(path)
        barrier.wait(timeout=60)
        try:
            store.record_sync([outcome(1, time.time())])
        except (HostHistoryError, sqlite3.Error):
            failed += 1  # keep meeting the others at the barrier; fail at the end
    raise SystemExit(1 if failed else 0)


def test_processes_opening_a_new_file_together_all_get_in(tmp_path: Path) -> None:
    """Six processes open each of 40 new files at the same instant: every one of them records.

    Switching a new file to WAL fails at once ("database is locked") for a process that comes
    while another is switching it; the store retries that step (CI saw it fail without).
    """
    paths = [str(tmp_path / f"new{i}.sqlite3") for i in range(40)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_opener, args=(paths, barrier)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * 6
    assert [len(SQLiteHostHistory(path).history_sync()) for path in paths] == [6] * 40


async def test_sqlite_work_runs_off_the_event_loop(tmp_path: Path) -> None:
    """While one process holds the write lock, the loop stays free (the wait is in a thread)."""
    path = tmp_path / "h.sqlite3"
    store = SQLiteHostHistory(path, busy_timeout_s=5)
    await store.record([outcome(1, time.time())])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        write = asyncio.create_task(store.record([outcome(2, time.time())]))
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done()  # waiting for the lock, in a thread
        assert ticks == 5
    finally:
        holder.execute("COMMIT")
        holder.close()
    await write
    assert {o.machine_id for o in await store.history()} == {1, 2}


def test_redis_store_needs_exactly_one_connection_and_hides_the_url() -> None:
    with pytest.raises(HostHistoryError):
        RedisHostHistory()
    store = RedisHostHistory("redis://:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(store)


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        ("running", None, OutcomeKind.ADOPTED),
        ("running", "no SSH login (41234: refused)", OutcomeKind.SSH_REFUSED),
        # Not running yet: a race would still be waiting; nothing is held against the machine.
        ("loading", "no SSH login (41234: refused)", OutcomeKind.FAILED),
        # Our key was not accepted: another key than the one it was made with, not the machine.
        ("running", "no SSH login (41234: permission_denied)", OutcomeKind.FAILED),
    ],
)
async def test_adopt_outcomes_hold_only_the_machines_own_failures_against_it(
    tmp_path: Path, status: str, error: str | None, kind: str
) -> None:
    store = SQLiteHostHistory(tmp_path / "h.sqlite3")
    reputation = HostReputation(store, logger=logging.getLogger("test"), owns_history=True)
    inst = Instance(id=7, machine_id=70, actual_status=status, dph_total=0.5)
    reputation.save_adopted(inst, None if error is None else SSHError(error, instance_id=7))
    await reputation.close()
    (got,) = await store.history()
    assert (got.kind, got.machine_id, got.instance_id, got.offer_id) == (kind, 70, 7, None)


async def test_the_services_writes_invalidate_a_ranker_passed_as_rank(tmp_path: Path) -> None:
    """A ranker of your own sees what the service's races taught at once, not cache_s later."""
    store = SQLiteHostHistory(tmp_path / "h.sqlite3")
    reputation = HostReputation(store, logger=logging.getLogger("test"), owns_history=False)
    mine = OfferRanker(store, cache_s=3600.0)
    offers = [
        Offer(id=i, machine_id=i, gpu_name="RTX 4090", num_gpus=1, dph_total=1.0) for i in (1, 2)
    ]
    await store.record([outcome(1, time.time() - 60, login_s=30.0), outcome(2, time.time() - 60)])
    first, _ = await reputation.order(offers, mine)
    reputation.save_adopted(
        Instance(id=9, machine_id=first[0].machine_id, actual_status="running"),
        SSHError("no SSH login (22: refused)", instance_id=9),
    )
    await reputation.drain()
    again, _ = await reputation.order(offers, mine)
    assert again[-1].id == first[0].id  # its fatal failure pushed it back, seen at once
