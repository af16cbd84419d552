"""Fleet custody: live arq workers reap a dead peer's machines on their own tick (no restart),
also after Redis lost its data, and never the machine a peer is adopting.

Real Redis (``VASTAI_TEST_REDIS_URL``; the data-loss test runs its own throwaway
``redis-server``), real worker processes, one in-process sandbox. The promise under test: a
SIGKILLed worker's machines are destroyed within ``2 x TTL + one reaper tick`` of its death.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import pytest_asyncio

from vastai_async.config import VastAIConfig
from vastai_async.sandbox import HTTPFault, Sandbox
from vastai_async.service import VastAIService

arq = pytest.importorskip("arq", reason="the arq extra is not installed")
from arq.connections import ArqRedis  # noqa: E402

from tests.integrations._arq_workers import (  # noqa: E402
    REDIS_URL,
    ThrowawayRedis,
    Workers,
    create_labelled,
    free_offers,
    instances_of,
    redis_pool_or_skip,
    running_command,
    wait_for,
)
from vastai_async.integrations import JobSpec, adopt_previous_try  # noqa: E402
from vastai_async.integrations.arq import (  # noqa: E402
    HEARTBEAT_PREFIX,
    InstanceLeasedError,
    WorkerOptions,
    enqueue_gpu_job,
    reap_dead_workers,
)
from vastai_async.integrations.leases import LeasedProvider  # noqa: E402


def _fast_boot(rng: random.Random) -> float:
    return rng.uniform(2.0, 6.0)  # simulated seconds: 40-120 ms at time_scale 0.02


pytestmark = pytest.mark.vastai_sandbox(
    offers=120, time_scale=0.02, seed=34, boot_distribution=_fast_boot
)

TTL = 2.0  # heartbeat TTL of the workers under test (refreshed every TTL / 4)
TICK = 1.0  # their reaper tick
BOUND = 2 * TTL + TICK  # the promise: a dead worker's machines are gone within this
_LIST_ROUTES = ("GET /api/v1/instances/", "GET /api/v0/instances/")


@pytest_asyncio.fixture(loop_scope="function")
async def redis() -> AsyncIterator[ArqRedis]:
    pool = await redis_pool_or_skip(REDIS_URL)
    yield pool
    await pool.aclose()


@pytest.fixture
def tag() -> str:
    return secrets.token_hex(3)


@pytest_asyncio.fixture(loop_scope="function")
async def clean(redis: ArqRedis, tag: str) -> AsyncIterator[str]:
    """A unique deployment name; its keys are removed from the shared Redis afterwards."""
    yield f"t{tag}"
    keys = [k async for k in redis.scan_iter(f"*{tag}*")]
    if keys:
        await redis.delete(*keys)


async def _sleeping_jobs(
    workers: Workers, pool: ArqRedis, sandbox: Sandbox, index: int, count: int
) -> list[int]:
    """Enqueue ``count`` jobs running ``sleep 60``; their instance ids once all are sleeping."""
    ids = []
    for n in range(count):
        spec = JobSpec(job_id=f"{workers.deployment}-long{n}", commands=["sleep 60"], fan_out=1)
        assert await enqueue_gpu_job(pool, spec, _queue_name=workers.queue) is not None
        ids.append(spec.job_id)
    for job_id in ids:
        await wait_for(
            lambda j=job_id: running_command(sandbox, j, "sleep 60"), 30, lambda: workers.log(index)
        )
    return [inst["id"] for job_id in ids for inst in instances_of(sandbox, job_id)]


async def _gone_within(sandbox: Sandbox, doomed: list[int], started: float, why: str) -> float:
    """Wait (bounded by the promise) until none of ``doomed`` is alive; seconds it took."""
    loop = asyncio.get_running_loop()
    remaining = BOUND - (loop.time() - started)
    await wait_for(lambda: not set(doomed) & sandbox.alive_instance_ids(), remaining, lambda: why)
    return loop.time() - started


async def test_a_sigkilled_workers_machines_are_reaped_by_a_live_peer_within_two_ttls_and_a_tick(
    vastai_sandbox: Sandbox, tmp_path: Path, redis: ArqRedis, clean: str
) -> None:
    dep = clean
    # Bystanders a reap must leave alone: another deployment's worker, a live registered
    # colleague, a plain SDK user on a host named like the deployment, a kept machine.
    offers = await free_offers(vastai_sandbox, 5)
    colleague = f"{dep}-elsewhere-7-wabcdef"
    await redis.set(HEARTBEAT_PREFIX + colleague, "{}", ex=60)
    await redis.sadd(f"{HEARTBEAT_PREFIX}members:{dep}", colleague)
    bystanders = {
        await create_labelled(vastai_sandbox, offers[0], f"vastai-async:o{dep}-h-1-wabcdef:x:r"),
        await create_labelled(vastai_sandbox, offers[1], f"vastai-async:{colleague}:y:r"),
        await create_labelled(vastai_sandbox, offers[2], f"vastai-async:{dep}-box-8-abcdef:z:r"),
        await create_labelled(vastai_sandbox, offers[3], "vastai-async:kept:k"),
    }
    # A worker that died before it could register (or whose registration Redis lost): found
    # by its label alone, reaped after the grace period.
    orphan = await create_labelled(
        vastai_sandbox, offers[4], f"vastai-async:{dep}-lost-9-w123456:o:r"
    )
    workers = Workers(vastai_sandbox, tmp_path, deployment=dep, queue=f"arq:test:{dep}")
    try:
        doomed = await workers.start(ttl=TTL, tick=TICK, job_timeout=120)
        machines = await _sleeping_jobs(workers, redis, vastai_sandbox, doomed, 2)
        peer = await workers.start(ttl=TTL, tick=TICK, job_timeout=120)
        assert len(machines) == 2

        assert await workers.stop(doomed, signal.SIGKILL) == -signal.SIGKILL
        killed_at = asyncio.get_running_loop().time()
        assert set(machines) <= vastai_sandbox.alive_instance_ids()  # the kill left them billing

        # No worker starts: the peer's reaper tick alone destroys them, within the promise.
        await _gone_within(vastai_sandbox, machines, killed_at, workers.log(peer))
        await wait_for(lambda: orphan not in vastai_sandbox.alive_instance_ids(), BOUND)
        assert vastai_sandbox.alive_instance_ids() == bystanders
        assert workers.alive(peer)
        assert "reaping instance" in workers.log(peer) + workers.log(doomed)
        async with asyncio.timeout(2 * TICK):  # forgotten once reaped (after the destroys)
            members = f"{HEARTBEAT_PREFIX}members:{dep}"
            while await redis.sismember(members, workers.owner(doomed)):  # type: ignore[misc]  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert await workers.stop(peer) == 0
        assert vastai_sandbox.alive_instance_ids() == bystanders
    finally:
        await workers.close()


async def test_after_redis_lost_its_data_a_killed_workers_machines_are_still_reaped(
    vastai_sandbox: Sandbox, tmp_path: Path
) -> None:
    if not ThrowawayRedis.available():
        pytest.skip("redis-server is not installed")
    own = ThrowawayRedis(tmp_path / "redis")
    await own.start()
    dep = f"t{secrets.token_hex(3)}"
    workers = Workers(
        vastai_sandbox, tmp_path, deployment=dep, queue=f"arq:test:{dep}", redis_url=own.url
    )
    try:
        pool = await redis_pool_or_skip(own.url)
        doomed = await workers.start(ttl=TTL, tick=TICK, job_timeout=120)
        machines = await _sleeping_jobs(workers, pool, vastai_sandbox, doomed, 2)
        peer = await workers.start(ttl=TTL, tick=TICK, job_timeout=120)
        await pool.aclose()

        await own.restart_empty()  # mid-jobs: queue, heartbeats, registrations, all gone

        pool = await redis_pool_or_skip(own.url)
        members = f"{HEARTBEAT_PREFIX}members:{dep}"
        owners = [workers.owner(doomed), workers.owner(peer)]

        async def registered_again() -> None:
            # Polls Redis, written by the workers' heartbeats: there is no event to wait on.
            while not all([await pool.sismember(members, o) for o in owners]):  # type: ignore[misc]  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        async with asyncio.timeout(TTL):  # one heartbeat interval (TTL / 4), with room
            await registered_again()
        assert "had lapsed" in workers.log(doomed)

        assert await workers.stop(doomed, signal.SIGKILL) == -signal.SIGKILL
        killed_at = asyncio.get_running_loop().time()
        assert set(machines) <= vastai_sandbox.alive_instance_ids()

        await _gone_within(vastai_sandbox, machines, killed_at, workers.log(peer))
        assert workers.alive(peer)  # it rode out the restart
        assert await workers.stop(peer) == 0
        assert vastai_sandbox.alive_instance_ids() == set()
        await pool.aclose()
    finally:
        await workers.close()
        await own.stop()


async def _abandoned_machine(config: VastAIConfig, owner: str, job_id: str) -> int:
    """A machine rented under ``owner`` by a process that then vanished without teardown."""
    async with VastAIService(config=attrs.evolve(config, owner=owner)) as gone:
        rental = await gone.provision_instance(job_id=job_id, fan_out=1)
    return rental.instance_id


def _options(dep: str) -> WorkerOptions:
    return WorkerOptions(
        deployment=dep, heartbeat_ttl_s=30, heartbeat_interval_s=5, reap_interval_s=10
    )


async def _declare_dead(redis: ArqRedis, options: WorkerOptions, dead: str, *alive: str) -> None:
    """``dead`` registered, no heartbeat, a suspect for an hour; ``alive`` heartbeating."""
    await redis.sadd(options.members_key, dead, *alive)  # type: ignore[misc]
    for owner in alive:
        await redis.set(options.heartbeat_key(owner), "{}", ex=60)
    seconds, _ = await redis.time()
    await redis.hset(options.suspects_key, dead, repr(seconds - 3600.0))  # type: ignore[misc]


async def test_an_instance_being_adopted_is_never_destroyed_by_a_peers_reap(
    vastai_sandbox: Sandbox, vastai_config: VastAIConfig, redis: ArqRedis, clean: str
) -> None:
    options = _options(clean)
    dead, adopter, reaper = (f"{clean}-{h}-{n}-wabcdef" for h, n in (("a", 1), ("b", 2), ("c", 3)))
    job_id = f"{clean}-job"
    machine = await _abandoned_machine(vastai_config, dead, job_id)
    await _declare_dead(redis, options, dead, adopter, reaper)
    # The retry's adoption stalls on its first look at the machine: a reap runs meanwhile.
    vastai_sandbox.add_fault(
        HTTPFault(kind="slow", route="GET /api/v0/instances/{id}/", target=machine, delay_s=3.0)
    )
    lease = options.lease_key(machine)
    async with (
        VastAIService(config=attrs.evolve(vastai_config, owner=adopter)) as mine,
        VastAIService(config=attrs.evolve(vastai_config, owner=reaper)) as theirs,
    ):
        leased = LeasedProvider(
            mine, redis, lease_key=options.lease_key, holder=adopter, ttl_ms=30_000, held=set()
        )
        adopting = asyncio.create_task(adopt_previous_try(leased, job_id))
        async with asyncio.timeout(10):
            while await redis.get(lease) != adopter.encode():  # noqa: ASYNC110
                await asyncio.sleep(0.02)

        assert await reap_dead_workers(theirs, redis, options, own=reaper) == ()

        assert not adopting.done()  # the reap really ran mid-adoption
        assert machine in vastai_sandbox.alive_instance_ids()
        assert await redis.sismember(options.members_key, dead)  # type: ignore[misc]
        rental = await adopting
        assert rental is not None
        assert (rental.instance_id, rental.info.owner) == (machine, adopter)
        # Adopted, it belongs to a live worker: the next reap spares it and forgets the dead one.
        assert await reap_dead_workers(theirs, redis, options, own=reaper) == ()
        assert not await redis.sismember(options.members_key, dead)  # type: ignore[misc]
        assert (await rental.run("echo still mine")).stdout == "still mine\n"
        await rental.terminate()
        await leased.release_all()
    assert vastai_sandbox.alive_instance_ids() == set()
    assert not await redis.exists(lease)


async def test_a_retry_waits_for_the_reaper_destroying_its_previous_machine(
    vastai_sandbox: Sandbox, vastai_config: VastAIConfig, redis: ArqRedis, clean: str
) -> None:
    options = _options(clean)
    job_id = f"{clean}-job"
    machine = await _abandoned_machine(vastai_config, f"{clean}-a-1-wabcdef", job_id)
    me = f"{clean}-b-2-wabcdef"
    lease = options.lease_key(machine)
    async with VastAIService(config=attrs.evolve(vastai_config, owner=me)) as mine:
        leased = LeasedProvider(
            mine, redis, lease_key=options.lease_key, holder=me, ttl_ms=30_000, held=set()
        )
        # Another worker holds it (a zombie try adopting it): hands off, at once.
        await redis.set(lease, f"{clean}-d-4-wabcdef", px=30_000)
        assert await leased.list_rentals(job_id=job_id, all_owners=True) == []
        with pytest.raises(InstanceLeasedError, match=str(machine)):
            await leased.adopt(machine)
        assert await leased.terminate_instance(machine) is False
        assert leased.held == set()

        # A reaper holds it: the retry waits until the reaper is done.
        await redis.set(lease, f"reaper:{clean}-c-3-wabcdef", px=30_000)

        def lists() -> int:
            return sum(1 for r in vastai_sandbox.requests if r.route in _LIST_ROUTES)

        before = lists()
        retry = asyncio.create_task(adopt_previous_try(leased, job_id))
        await wait_for(lambda: lists() >= before + 2, 10)  # listed, saw the reaper, listed again
        assert not retry.done()
        assert machine in vastai_sandbox.alive_instance_ids()
        # The reaper finishes: the machine is gone, the lease released.
        await mine.terminate_instance(machine)
        await redis.delete(lease)

        assert await retry is None  # nothing left to adopt: the job rents anew, never beside it
    assert vastai_sandbox.alive_instance_ids() == set()
