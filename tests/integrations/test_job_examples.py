"""The batch and arq examples run against a sandbox, do their jobs, and leak nothing."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path

import pytest

from vastai_async.sandbox import Sandbox

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Read at import: the autouse fixture clears ``VASTAI_*`` before each test.
REDIS_URL = os.environ.get("VASTAI_TEST_REDIS_URL", "redis://127.0.0.1:6390")

pytestmark = pytest.mark.vastai_sandbox(offers=30, time_scale=0.02, seed=8)


def _env(sandbox: Sandbox) -> dict[str, str]:
    return {
        **os.environ,
        "VASTAI_SANDBOX_URL": sandbox.url,
        "VASTAI_SANDBOX_KEY": sandbox.api_key,
        "VASTAI_SANDBOX_TIME_SCALE": str(sandbox.time_scale),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


async def _run(*args: str, env: dict[str, str], within_s: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(within_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_batch_jobs_example_runs_every_job_and_destroys_every_machine(
    vastai_sandbox: Sandbox,
) -> None:
    code, out = await _run(
        "-W",
        "error",
        str(EXAMPLES / "batch_jobs.py"),
        "--jobs",
        "5",
        "--concurrency",
        "2",
        env=_env(vastai_sandbox),
    )
    assert code == 0, out
    assert "5/5 jobs succeeded" in out
    for i in range(5):
        assert f"job {i} done" in out
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_arq_worker_example_serves_what_its_enqueue_command_queued(
    vastai_sandbox: Sandbox,
) -> None:
    redis_mod = pytest.importorskip("redis.asyncio", reason="the arq extra is not installed")
    client = redis_mod.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (OSError, redis_mod.RedisError) as err:
        pytest.skip(f"no Redis reachable at {REDIS_URL} ({type(err).__name__})")
    queue = f"arq:example:{secrets.token_hex(3)}"
    common = [str(EXAMPLES / "arq_worker.py"), "--redis", REDIS_URL, "--queue", queue]
    env = _env(vastai_sandbox)
    try:
        enqueue = asyncio.create_task(
            _run(*common, "enqueue", "--jobs", "3", "--prefix", queue[-6:], env=env)
        )
        # The worker starts once the jobs are queued; --burst makes it exit when they are done.
        async with asyncio.timeout(20):
            while not await client.exists(queue):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        worker_code, worker_out = await _run(*common, "worker", "--burst", env=env)
        code, out = await enqueue
    finally:
        keys = [k async for k in client.scan_iter(f"*{queue[-6:]}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    assert worker_code == 0, worker_out
    assert code == 0, out
    assert out.count(": ok (worker demo-") == 3
    assert vastai_sandbox.alive_instance_ids() == set()
