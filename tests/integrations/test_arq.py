"""arq workers in separate processes against one sandbox: jobs complete, dead workers are reaped,
a retry adopts instead of renting twice, nothing outside the deployment is touched.

Needs a real Redis (``VASTAI_TEST_REDIS_URL``, default ``redis://127.0.0.1:6390``); skipped with
the reason when none answers. The sandbox is served from the test's loop; workers are
subprocesses running ``arq.worker.run_worker``.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from vastai_async.sandbox import Sandbox

arq = pytest.importorskip("arq", reason="the arq extra is not installed")
from arq.connections import ArqRedis  # noqa: E402

from tests.integrations._arq_workers import (  # noqa: E402
    CREATE_ROUTE,
    REDIS_URL,
    Workers,
    instances_of,
    redis_pool_or_skip,
    running_command,
)
from tests.integrations._arq_workers import wait_for as _wait_for  # noqa: E402
from vastai_async.integrations import JobSpec  # noqa: E402
from vastai_async.integrations.arq import HEARTBEAT_PREFIX, enqueue_gpu_job  # noqa: E402


def _fast_boot(rng: random.Random) -> float:
    return rng.uniform(2.0, 6.0)  # simulated seconds: 40-120 ms at time_scale 0.02


pytestmark = pytest.mark.vastai_sandbox(
    offers=120, time_scale=0.02, seed=33, boot_distribution=_fast_boot
)


@pytest_asyncio.fixture(loop_scope="function")
async def redis() -> AsyncIterator[ArqRedis]:
    pool = await redis_pool_or_skip(REDIS_URL)
    yield pool
    await pool.aclose()


@pytest_asyncio.fixture(loop_scope="function")
async def workers(
    vastai_sandbox: Sandbox, tmp_path: Path, redis: ArqRedis
) -> AsyncIterator[Workers]:
    tag = secrets.token_hex(3)
    pool = Workers(vastai_sandbox, tmp_path, deployment=f"t{tag}", queue=f"arq:test:{tag}")
    try:
        yield pool
    finally:
        await pool.close()
        keys = [k async for k in redis.scan_iter(f"*{tag}*")]
        if keys:
            await redis.delete(*keys)


def _creates(sandbox: Sandbox, job_id: str) -> int:
    return sum(
        1
        for r in sandbox.requests
        if r.route == CREATE_ROUTE
        and r.status == 200
        and f":{job_id}:" in (r.json() or {}).get("label", "")
    )


_instances_of = instances_of


async def test_twenty_jobs_through_two_worker_processes_complete_with_correct_outputs(
    workers: Workers, redis: ArqRedis, vastai_sandbox: Sandbox
) -> None:
    first = await workers.start()
    second = await workers.start()
    jobs = []
    for i in range(20):
        spec = JobSpec(job_id=f"{workers.deployment}-j{i:02d}", commands=[f"echo arq-{i}"])
        job = await enqueue_gpu_job(redis, spec, _queue_name=workers.queue)
        assert job is not None
        jobs.append(job)
    assert await enqueue_gpu_job(redis, spec, _queue_name=workers.queue) is None  # same id

    results = [await job.result(timeout=60, poll_delay=0.05) for job in jobs]

    for i, result in enumerate(results):
        assert result["ok"], result["error"]
        assert result["outputs"][0]["stdout"] == f"arq-{i}\n"
    assert {r["owner"] for r in results} == {workers.owner(first), workers.owner(second)}
    assert await workers.stop(first) == 0
    assert await workers.stop(second) == 0
    assert vastai_sandbox.alive_instance_ids() == set()
    assert not await redis.exists(HEARTBEAT_PREFIX + workers.owner(first))


async def test_a_retry_after_a_worker_died_adopts_its_machine_instead_of_renting_another(
    workers: Workers, redis: ArqRedis, vastai_sandbox: Sandbox
) -> None:
    # A long heartbeat: the dead worker still looks alive, so its machine is not reaped and
    # the retry (after arq's in-progress key expires: job_timeout + 10 s) must find it.
    doomed = await workers.start(ttl=60.0, job_timeout=4)
    spec = JobSpec(job_id=f"{workers.deployment}-retried", commands=["sleep 2"], fan_out=1)
    job = await enqueue_gpu_job(redis, spec, _queue_name=workers.queue)
    assert job is not None

    await _wait_for(
        lambda: running_command(vastai_sandbox, spec.job_id, "sleep 2"),
        20,
        lambda: workers.log(doomed),
    )
    [first] = _instances_of(vastai_sandbox, spec.job_id)
    await workers.stop(doomed, signal.SIGKILL)
    survivor = await workers.start(ttl=60.0, job_timeout=4)
    assert "reaped 0 instances" in workers.log(survivor)

    peak = 0

    def watch() -> bool:
        nonlocal peak
        peak = max(peak, len(_instances_of(vastai_sandbox, spec.job_id)))
        return False

    watcher = asyncio.create_task(_wait_for(watch, 40))
    try:
        result = await job.result(timeout=40, poll_delay=0.05)
    finally:
        watcher.cancel()

    assert result["ok"], result["error"]
    assert result["job_try"] == 2
    assert result["adopted"]
    assert result["instance_id"] == first["id"]
    assert result["owner"] == workers.owner(survivor)
    assert _creates(vastai_sandbox, spec.job_id) == 1  # the retry rented nothing
    assert peak == 1
    assert await workers.stop(survivor) == 0
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_a_transient_api_failure_is_retried_by_arq_and_then_succeeds(
    workers: Workers, redis: ArqRedis, vastai_sandbox: Sandbox
) -> None:
    from vastai_async.sandbox import HTTPFault

    # Every search fails with 500 until the first try has given up.
    fault = vastai_sandbox.add_fault(
        HTTPFault(kind="status", route="POST /api/v0/bundles/", status=500, times=None)
    )
    index = await workers.start()
    spec = JobSpec(job_id=f"{workers.deployment}-flaky", commands=["echo second try"])
    job = await enqueue_gpu_job(redis, spec, _queue_name=workers.queue)
    assert job is not None
    await workers.wait_log(index, "retrying job")
    fault.times = fault.fired  # the API recovers

    result = await job.result(timeout=30, poll_delay=0.05)

    assert result["ok"], result["error"]
    assert result["job_try"] == 2
    assert result["outputs"][0]["stdout"] == "second try\n"
    assert await workers.stop(index) == 0
    assert vastai_sandbox.alive_instance_ids() == set()
