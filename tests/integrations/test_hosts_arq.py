"""A fleet of arq workers shares one host history in Redis: every worker's races land in it.

Needs a real Redis (``VASTAI_TEST_REDIS_URL``); skipped with the reason when it is unset or does
not answer. Two worker subprocesses with their own state folders (so no SQLite is shared) and a
:class:`~vastai_async.RedisHostHistory` under a unique prefix, against one sandbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from vastai_async.config import generate_ssh_keypair
from vastai_async.reputation import OutcomeKind, RedisHostHistory
from vastai_async.sandbox import Sandbox

arq = pytest.importorskip("arq", reason="the arq extra is not installed")
from arq.connections import ArqRedis  # noqa: E402

from tests.integrations._arq_workers import redis_pool_or_skip  # noqa: E402
from vastai_async.integrations import JobSpec  # noqa: E402
from vastai_async.integrations.arq import enqueue_gpu_job  # noqa: E402

#: Read at import: the autouse fixture clears ``VASTAI_*`` before each test.
REDIS_URL = os.environ.get("VASTAI_TEST_REDIS_URL")


def _fast_boot(rng: random.Random) -> float:
    return rng.uniform(2.0, 6.0)


pytestmark = pytest.mark.vastai_sandbox(
    offers=60, time_scale=0.02, seed=41, boot_distribution=_fast_boot
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
    from vastai_async.reputation import RedisHostHistory

    cfg = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

    def factory(owner):
        config = get_vastai_config(
            api_key=cfg["key"], api_base_url=cfg["url"], ssh_key_path=cfg["ssh_key"],
            state_dir=cfg["state"], owner=owner, max_bid_usd_per_hour=50.0, min_vram_gb=0,
            preferred_gpus=(),
        ).scaled(cfg["scale"])
        timings = attrs.evolve(config.timings, teardown_budget_s=10.0)
        config = attrs.evolve(config, timings=timings, pacing=config.pacing.scaled(2))
        history = RedisHostHistory(cfg["redis"], prefix=cfg["prefix"])
        return VastAIService(config=config, host_history=history)

    options = WorkerOptions(deployment=cfg["deployment"], provider_factory=factory,
                            heartbeat_ttl_s=8.0, heartbeat_interval_s=2.0)
    run_worker(worker_settings(
        options, redis_settings=RedisSettings.from_dsn(cfg["redis"]), queue_name=cfg["queue"],
        job_timeout=60, max_jobs=3, poll_delay=0.05, keep_result=120,
    ))
    """
)


@pytest_asyncio.fixture(loop_scope="function")
async def redis() -> AsyncIterator[ArqRedis]:
    if not REDIS_URL:
        pytest.skip("VASTAI_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6390)")
    pool = await redis_pool_or_skip(REDIS_URL)
    yield pool
    await pool.aclose()


async def test_two_workers_record_into_one_shared_history(
    vastai_sandbox: Sandbox, redis: ArqRedis, tmp_path: Path
) -> None:
    assert REDIS_URL is not None
    tag = secrets.token_hex(3)
    prefix, queue = f"test-hosts-{tag}:", f"arq:hosts:{tag}"
    key = tmp_path / "key" / "id_ed25519"
    generate_ssh_keypair(key)
    procs = []
    logs = []
    try:
        for index in range(2):
            cfg = {
                "url": vastai_sandbox.url,
                "key": vastai_sandbox.api_key,
                "scale": vastai_sandbox.time_scale,
                "ssh_key": str(key),
                "state": str(tmp_path / f"state-{index}"),
                "redis": REDIS_URL,
                "prefix": prefix,
                "deployment": f"h{tag}",
                "queue": queue,
            }
            log = tmp_path / f"worker-{index}.log"
            logs.append(log)
            with log.open("wb") as out:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, "-c", WORKER, json.dumps(cfg), stdout=out, stderr=out
                    )
                )
        async with asyncio.timeout(30):
            # Waits on other processes' logs: there is no event to wait on.
            while not all("started (reaped" in p.read_text(errors="replace") for p in logs):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        jobs = []
        # At most three jobs per worker, each holding its machine a moment: both must work.
        for i in range(6):
            spec = JobSpec(job_id=f"h{tag}-j{i}", commands=("sleep 1",), fan_out=2)
            job = await enqueue_gpu_job(redis, spec, _queue_name=queue)
            assert job is not None
            jobs.append(job)
        results = [await job.result(timeout=90, poll_delay=0.05) for job in jobs]
        assert all(r["ok"] for r in results), [r["error"] for r in results]
        owners = {r["owner"] for r in results}
        for proc in procs:
            proc.terminate()
        for proc in procs:
            async with asyncio.timeout(30):
                await proc.wait()
        store = RedisHostHistory(REDIS_URL, prefix=prefix)
        try:
            records = await store.history()
        finally:
            await store.forget()
            await store.close()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        keys = [k async for k in redis.scan_iter(f"*{tag}*")]
        if keys:
            await redis.delete(*keys)
    logs_text = "\n".join(p.read_text(errors="replace") for p in logs)
    wins = [r for r in records if r.kind == OutcomeKind.WON]
    assert len(wins) == 6, logs_text
    assert len(records) >= 6
    assert all(r.login_s is not None and r.login_s > 0 for r in wins)
    # Both workers ran jobs, so both wrote into the one shared history.
    assert len(owners) == 2, owners
    assert vastai_sandbox.alive_instance_ids() == set()
