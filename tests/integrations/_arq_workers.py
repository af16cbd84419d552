"""Helpers of the arq tests and the fleet chaos run: worker subprocesses, a throwaway Redis.

Workers are real ``arq.worker.run_worker`` processes on one sandbox, sharing one SSH key, each
with its own state folder. :class:`ThrowawayRedis` is a ``redis-server`` on a free loopback
port without persistence, which a test may restart to lose all its data.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from vastai_async.config import generate_ssh_keypair
from vastai_async.sandbox import Sandbox

if TYPE_CHECKING:
    from arq.connections import ArqRedis

#: Read at import: the autouse fixture clears ``VASTAI_*`` before each test.
REDIS_URL = os.environ.get("VASTAI_TEST_REDIS_URL", "redis://127.0.0.1:6390")
CREATE_ROUTE = "PUT /api/v0/asks/{id}/"

WORKER = textwrap.dedent(
    """
    import json, logging, sys, warnings
    import attrs
    from arq.connections import RedisSettings
    from arq.worker import run_worker
    from vastai_async.config import get_vastai_config
    from vastai_async.service import VastAIService
    from vastai_async.integrations.arq import WorkerOptions, worker_settings

    warnings.filterwarnings("ignore", "Call to deprecated close", DeprecationWarning)
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
        reap_interval_s=cfg["tick"],
    )
    run_worker(worker_settings(
        options, redis_settings=RedisSettings.from_dsn(cfg["redis"]), queue_name=cfg["queue"],
        job_timeout=cfg["job_timeout"], max_jobs=cfg["max_jobs"], poll_delay=0.05,
        keep_result=120,
    ))
    """
)


class Workers:
    """Starts arq worker subprocesses sharing one SSH key, each with its own state folder."""

    def __init__(
        self,
        sandbox: Sandbox,
        tmp: Path,
        *,
        deployment: str,
        queue: str,
        redis_url: str = REDIS_URL,
    ) -> None:
        self.sandbox = sandbox
        self.tmp = tmp
        self.deployment = deployment
        self.queue = queue
        self.redis_url = redis_url
        self.ssh_key = tmp / "shared-key" / "id_ed25519"
        generate_ssh_keypair(self.ssh_key)
        self.procs: list[tuple[asyncio.subprocess.Process, Path]] = []

    async def start(
        self,
        *,
        ttl: float = 4.0,
        tick: float | None = None,
        job_timeout: float = 30.0,
        max_jobs: int = 10,
        wait: bool = True,
    ) -> int:
        """Start a worker (reaper tick: half the TTL unless given); its index."""
        index = len(self.procs)
        cfg = {
            "url": self.sandbox.url,
            "key": self.sandbox.api_key,
            "scale": self.sandbox.time_scale,
            "ssh_key": str(self.ssh_key),
            "state": str(self.tmp / f"state-{index}"),
            "redis": self.redis_url,
            "deployment": self.deployment,
            "queue": self.queue,
            "ttl": ttl,
            "tick": tick if tick is not None else ttl / 2,
            "job_timeout": job_timeout,
            "max_jobs": max_jobs,
        }
        log = self.tmp / f"worker-{index}.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", WORKER, json.dumps(cfg), stdout=out, stderr=out
            )
        self.procs.append((proc, log))
        if wait:
            await self.wait_log(index, "started (reaped")
        return index

    def log(self, index: int) -> str:
        return self.procs[index][1].read_text(errors="replace")

    def owner(self, index: int) -> str:
        line = next(x for x in self.log(index).splitlines() if "started (reaped" in x)
        return line.split("worker ", 1)[1].split(" ", 1)[0]

    def alive(self, index: int) -> bool:
        return self.procs[index][0].returncode is None

    async def wait_log(self, index: int, text: str, within_s: float = 20.0) -> None:
        await wait_for(lambda: text in self.log(index), within_s, lambda: self.log(index))

    async def stop(self, index: int, sig: int = signal.SIGTERM) -> int:
        proc = self.procs[index][0]
        if proc.returncode is None:
            proc.send_signal(sig)
        async with asyncio.timeout(30):
            return await proc.wait()

    async def close(self) -> None:
        for proc, _ in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def redis_pool_or_skip(url: str) -> ArqRedis:
    """An arq pool on ``url``, or skip the test when no Redis answers there within 3 s."""
    from arq.connections import RedisSettings, create_pool  # callers import-skip without arq

    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 1
    settings.conn_retries = 0
    try:
        async with asyncio.timeout(3):
            pool = await create_pool(settings)
            await pool.ping()
    except Exception as err:  # refused or timed out; redis wraps them in its own errors
        pytest.skip(
            f"no Redis reachable at {url} ({type(err).__name__}); start one with "
            "`redis-server --port 6390 --bind 127.0.0.1` or set VASTAI_TEST_REDIS_URL"
        )
    return pool


async def wait_for(
    predicate: Callable[[], bool], within_s: float = 20.0, why: Callable[[], str] | None = None
) -> None:
    """Poll ``predicate`` until true; fail (``AssertionError``) after ``within_s`` seconds."""
    try:
        async with asyncio.timeout(within_s):
            # Polls the effects of other processes: there is no event to wait on.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(
            f"condition not met within {within_s} s\n{why() if why else ''}"
        ) from None


def instances_of(sandbox: Sandbox, job_id: str) -> list[dict[str, Any]]:
    return [i for i in sandbox.instances() if f":{job_id}:" in (i.get("label") or "")]


def running_command(sandbox: Sandbox, job_id: str, command: str) -> bool:
    """Whether an instance of ``job_id`` has an SSH session running ``command``."""
    return any(
        s.command == command
        for inst in instances_of(sandbox, job_id)
        for s in getattr(sandbox.ssh_server(inst["id"]), "sessions", [])
    )


async def create_labelled(sandbox: Sandbox, offer_id: int, label: str) -> int:
    """Create an instance with ``label`` by hand (as another client would), past 429s."""
    headers = {"Authorization": f"Bearer {sandbox.api_key}"}
    body: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            async with http.put(
                f"{sandbox.url}/api/v0/asks/{offer_id}/",
                json={"client_id": "me", "image": "ubuntu", "disk": 10, "label": label},
                headers=headers,
            ) as resp:
                if resp.status != 429:  # a 429 body may be plain text
                    body = await resp.json()
                    break
            await asyncio.sleep(0.05)  # the route's rate-limit window, on the sandbox clock
    assert "new_contract" in body, body
    return int(body["new_contract"])


async def free_offers(sandbox: Sandbox, count: int) -> list[int]:
    """``count`` rentable offers on distinct machines."""
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


class ThrowawayRedis:
    """A ``redis-server`` of our own on a free loopback port, no persistence; restartable empty."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.proc: asyncio.subprocess.Process | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Started directly (not daemonized): this process owns the server and ends it by pid.
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await wait_for(self._accepts, 10.0)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()  # a crash: nothing is saved (and nothing would be: --save '')
            await self.proc.wait()
        self.proc = None

    async def restart_empty(self) -> None:
        """Kill the server and start a new one on the same port: every key is gone."""
        await self.stop()
        await self.start()
