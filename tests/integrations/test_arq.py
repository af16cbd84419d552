"""arq workers in separate processes against one sandbox: jobs complete, dead workers are reaped,
a retry adopts instead of renting twice, nothing outside the deployment is touched.

Needs a real Redis (``VASTAI_TEST_REDIS_URL``, default ``redis://127.0.0.1:6390``); skipped with
the reason when none answers. The sandbox is served from the test's loop; workers are
subprocesses running ``arq.worker.run_worker``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from vastai_async.config import generate_ssh_keypair
from vastai_async.sandbox import Sandbox

arq = pytest.importorskip("arq", reason="the arq extra is not installed")
from arq.connections import ArqRedis, RedisSettings, create_pool  # noqa: E402

from vastai_async.integrations import JobSpec  # noqa: E402
from vastai_async.integrations.arq import HEARTBEAT_PREFIX, enqueue_gpu_job  # noqa: E402

#: Read at import: the autouse fixture clears ``VASTAI_*`` before each test.
REDIS_URL = os.environ.get("VASTAI_TEST_REDIS_URL", "redis://127.0.0.1:6390")
CREATE_ROUTE = "PUT /api/v0/asks/{id}/"


def _fast_boot(rng: random.Random) -> float:
    return rng.uniform(2.0, 6.0)  # simulated seconds: 40-120 ms at time_scale 0.02


pytestmark = pytest.mark.vastai_sandbox(
    offers=120, time_scale=0.02, seed=33, boot_distribution=_fast_boot
)

WORKER = textwrap.dedent(
    """
    import json, logging, sys
    import attrs
    from arq.connections import RedisSettings
    from arq.worker import run_worker
    from vastai_async.config import get_vastai_config
    from vastai_async.service import VastAIService
    from vastai_async.integrations.arq import WorkerOptions, worker_settings

    cfg = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

    def factory(owner):
        config = get_vastai_config(
            api_key=cfg["key"], api_base_url=cfg["url"], ssh_key_path=cfg["ssh_key"],
            state_dir=cfg["state"], owner=owner, max_bid_usd_per_hour=50.0, min_vram_gb=0,
            preferred_gpus=(),
        )
        config = config.scaled(cfg["scale"])
        # Workers and the sandbox share two CPUs: CPU time is not on the sandbox clock, so the
        # scaled teardown budget (1.2 s) is too tight under load; 10 s of wall time is not.
        timings = attrs.evolve(config.timings, teardown_budget_s=10.0)
        # Pacing is per process and the account's limits are shared: two workers, half the rate
        # each (docs/scale.md).
        pacing = config.pacing.scaled(2)
        return VastAIService(config=attrs.evolve(config, timings=timings, pacing=pacing))

    options = WorkerOptions(
        deployment=cfg["deployment"], provider_factory=factory,
        heartbeat_ttl_s=cfg["ttl"], heartbeat_interval_s=cfg["ttl"] / 4,
    )
    run_worker(worker_settings(
        options, redis_settings=RedisSettings.from_dsn(cfg["redis"]), queue_name=cfg["queue"],
        job_timeout=cfg["job_timeout"], max_jobs=cfg["max_jobs"], poll_delay=0.05,
        keep_result=120,
    ))
    """
)


async def _redis_or_skip() -> ArqRedis:
    settings = RedisSettings.from_dsn(REDIS_URL)
    settings.conn_timeout = 1
    settings.conn_retries = 0
    try:
        async with asyncio.timeout(3):
            pool = await create_pool(settings)
            await pool.ping()
    except Exception as err:  # refused or timed out; redis wraps them in its own errors
        pytest.skip(
            f"no Redis reachable at {REDIS_URL} ({type(err).__name__}); start one with "
            "`redis-server --port 6390 --bind 127.0.0.1` or set VASTAI_TEST_REDIS_URL"
        )
    return pool


@pytest_asyncio.fixture(loop_scope="function")
async def redis() -> AsyncIterator[ArqRedis]:
    pool = await _redis_or_skip()
    yield pool
    await pool.aclose()


class Workers:
    """Starts arq worker subprocesses sharing one SSH key, each with its own state folder."""

    def __init__(self, sandbox: Sandbox, tmp: Path, *, deployment: str, queue: str) -> None:
        self.sandbox = sandbox
        self.tmp = tmp
        self.deployment = deployment
        self.queue = queue
        self.ssh_key = tmp / "shared-key" / "id_ed25519"
        generate_ssh_keypair(self.ssh_key)
        self.procs: list[tuple[asyncio.subprocess.Process, Path]] = []

    async def start(
        self, *, ttl: float = 4.0, job_timeout: float = 30.0, max_jobs: int = 10
    ) -> int:
        index = len(self.procs)
        cfg = {
            "url": self.sandbox.url,
            "key": self.sandbox.api_key,
            "scale": self.sandbox.time_scale,
            "ssh_key": str(self.ssh_key),
            "state": str(self.tmp / f"state-{index}"),
            "redis": REDIS_URL,
            "deployment": self.deployment,
            "queue": self.queue,
            "ttl": ttl,
            "job_timeout": job_timeout,
            "max_jobs": max_jobs,
        }
        log = self.tmp / f"worker-{index}.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WORKER, json.dumps(cfg), stdout=out, stderr=out
            )
        self.procs.append((proc, log))
        await self.wait_log(index, "started (reaped")
        return index

    def log(self, index: int) -> str:
        return self.procs[index][1].read_text(errors="replace")

    def owner(self, index: int) -> str:
        line = next(x for x in self.log(index).splitlines() if "started (reaped" in x)
        return line.split("worker ", 1)[1].split(" ", 1)[0]

    async def wait_log(self, index: int, text: str, within_s: float = 20.0) -> None:
        await _wait_for(lambda: text in self.log(index), within_s, lambda: self.log(index))

    async def stop(self, index: int, sig: int = signal.SIGTERM) -> int:
        proc = self.procs[index][0]
        if proc.returncode is None:
            proc.send_signal(sig)
        async with asyncio.timeout(20):
            return await proc.wait()

    async def close(self) -> None:
        for proc, _ in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _wait_for(
    predicate: Callable[[], bool], within_s: float = 20.0, why: Callable[[], str] | None = None
) -> None:
    try:
        async with asyncio.timeout(within_s):
            # Polls the effects of other processes: there is no event to wait on.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"condition not met within {within_s} s\n{why() if why else ''}")


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


def _instances_of(sandbox: Sandbox, job_id: str) -> list[dict[str, Any]]:
    return [i for i in sandbox.instances() if f":{job_id}:" in (i.get("label") or "")]


async def _create_labelled(sandbox: Sandbox, offer_id: int, label: str) -> int:
    """Create an instance with ``label`` by hand (as another client would), past 429s."""
    headers = {"Authorization": f"Bearer {sandbox.api_key}"}
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            async with http.put(
                f"{sandbox.url}/api/v0/asks/{offer_id}/",
                json={"client_id": "me", "image": "ubuntu", "disk": 10, "label": label},
                headers=headers,
            ) as resp:
                body = await resp.json()
                if resp.status != 429:
                    break
            await asyncio.sleep(0.05)  # the route's rate-limit window, on the sandbox clock
    assert "new_contract" in body, body
    return int(body["new_contract"])


async def _free_offers(sandbox: Sandbox, count: int) -> list[int]:
    headers = {"Authorization": f"Bearer {sandbox.api_key}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sandbox.url}/api/v0/bundles/",
            json={"rentable": {"eq": True}, "limit": 200},
            headers=headers,
        ) as resp,
    ):
        offers = (await resp.json())["offers"]
    picked: list[int] = []
    machines: set[int] = set()
    for offer in offers:
        if offer["machine_id"] not in machines:
            machines.add(offer["machine_id"])
            picked.append(int(offer["id"]))
    return picked[:count]


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


async def test_a_sigkilled_workers_machine_is_reaped_by_the_next_workers_startup_and_only_it(
    workers: Workers, redis: ArqRedis, vastai_sandbox: Sandbox
) -> None:
    dep = workers.deployment
    # Bystanders that must survive the reap: another deployment's instance, a live registered
    # colleague's, and a plain SDK user's whose owner id merely starts like the deployment.
    foreign_offer, colleague_offer, lookalike_offer = await _free_offers(vastai_sandbox, 3)
    foreign = await _create_labelled(
        vastai_sandbox, foreign_offer, f"vastai-async:other{dep}-h-1-abcdef:x:r"
    )
    colleague_owner = f"{dep}-elsewhere-7-abcdef"
    await redis.set(HEARTBEAT_PREFIX + colleague_owner, "{}", ex=60)
    await redis.sadd(f"{HEARTBEAT_PREFIX}members:{dep}", colleague_owner)
    colleague = await _create_labelled(
        vastai_sandbox, colleague_offer, f"vastai-async:{colleague_owner}:y:r"
    )
    lookalike = await _create_labelled(
        vastai_sandbox, lookalike_offer, f"vastai-async:{dep}-box-8-abcdef:z:r"
    )
    bystanders = {foreign, colleague, lookalike}

    doomed = await workers.start(ttl=1.0, job_timeout=60)
    spec = JobSpec(job_id=f"{dep}-killed", commands=["sleep 60"], fan_out=1)
    assert await enqueue_gpu_job(redis, spec, _queue_name=workers.queue) is not None

    def sleeping() -> bool:
        for inst in _instances_of(vastai_sandbox, spec.job_id):
            server = vastai_sandbox.ssh_server(inst["id"])
            sessions = getattr(server, "sessions", [])
            if any(s.command == "sleep 60" for s in sessions):
                return True
        return False

    await _wait_for(sleeping, 20, lambda: workers.log(doomed))
    [left] = _instances_of(vastai_sandbox, spec.job_id)
    owner = workers.owner(doomed)
    assert await workers.stop(doomed, signal.SIGKILL) == -signal.SIGKILL
    assert left["id"] in vastai_sandbox.alive_instance_ids()  # the kill left it billing
    # Its heartbeat lapses (TTL 1 s); until then nobody may touch its machine.
    await _wait_for_async(lambda: redis.exists(HEARTBEAT_PREFIX + owner), expect=0, within_s=5)

    successor = await workers.start(ttl=1.0, job_timeout=60)

    assert "reaped 1 instances" in workers.log(successor)
    assert vastai_sandbox.alive_instance_ids() == bystanders
    assert await workers.stop(successor) == 0
    assert vastai_sandbox.alive_instance_ids() == bystanders
    assert not await redis.sismember(f"{HEARTBEAT_PREFIX}members:{dep}", owner)


async def _wait_for_async(probe: Callable[[], Any], *, expect: object, within_s: float) -> None:
    async with asyncio.timeout(within_s):
        # Waits on Redis, changed by another process: there is no event to wait on.
        while await probe() != expect:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_a_retry_after_a_worker_died_adopts_its_machine_instead_of_renting_another(
    workers: Workers, redis: ArqRedis, vastai_sandbox: Sandbox
) -> None:
    # A long heartbeat: the dead worker still looks alive, so its machine is not reaped and
    # the retry (after arq's in-progress key expires: job_timeout + 10 s) must find it.
    doomed = await workers.start(ttl=60.0, job_timeout=4)
    spec = JobSpec(job_id=f"{workers.deployment}-retried", commands=["sleep 2"], fan_out=1)
    job = await enqueue_gpu_job(redis, spec, _queue_name=workers.queue)
    assert job is not None

    def sleeping() -> bool:
        return any(
            s.command == "sleep 2"
            for inst in _instances_of(vastai_sandbox, spec.job_id)
            for s in getattr(vastai_sandbox.ssh_server(inst["id"]), "sessions", [])
        )

    await _wait_for(sleeping, 20, lambda: workers.log(doomed))
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
