"""``Sandbox``: a local Vast.ai (HTTP API, market, lifecycle, billing, SSH) for tests and demos.

Two aiohttp servers on loopback: the API at :attr:`Sandbox.url` (the server root, as the
official CLI's ``--url`` takes it) and a second origin serving log files (``result_url``), so a
test can see whether a client leaks its API key there. No access log is ever written: an
``api_key`` query value must not end up in a log.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from vastai_async.sandbox.app import LogStore, RecordedRequest, SandboxState, make_app
from vastai_async.sandbox.app import make_logs_app as _make_logs_app
from vastai_async.sandbox.billing import Ledger
from vastai_async.sandbox.clock import SimClock
from vastai_async.sandbox.container import SHELLS, ShellMode
from vastai_async.sandbox.faults import FaultPlan, HTTPFault
from vastai_async.sandbox.lifecycle import BootModel, LifecycleFault, default_boot_distribution
from vastai_async.sandbox.market import Market
from vastai_async.sandbox.ratelimit import DEFAULT_THRESHOLDS, RateLimiter
from vastai_async.sandbox.routes import ROUTES
from vastai_async.sandbox.state import Cloud, Instance, SSHFactory, SSHServerLike

__all__ = ["Sandbox"]

_TEMPLATES: list[dict[str, Any]] = [
    {"id": 101, "hash_id": "4e17788f74f075dd9aab7d0d4427968f", "name": "PyTorch (Vast)",
     "image": "vastai/pytorch", "tag": "latest", "runtype": "ssh_direc ssh_proxy",
     "env": "", "onstart": "", "recommended": True, "private": False},
    {"id": 102, "hash_id": "3f4cde1e1c4b3d2e5b7ea0d4d7c9a1b2", "name": "NVIDIA CUDA",
     "image": "nvidia/cuda", "tag": "12.4.1-devel-ubuntu22.04", "runtype": "ssh_proxy",
     "env": "", "onstart": "", "recommended": True, "private": False},
    {"id": 103, "hash_id": "a1b2c3d4e5f60718293a4b5c6d7e8f90", "name": "Ubuntu 22.04",
     "image": "ubuntu", "tag": "22.04", "runtype": "ssh_proxy",
     "env": "", "onstart": "", "recommended": False, "private": False},
]  # fmt: skip


class _ClosedDoor:
    """SSH ports of an HTTP-only sandbox (``ssh=False``): real listeners that accept and close.

    Ports reported in instance JSON are then real and refuse SSH as a host that never finishes
    booting would, instead of being made-up numbers that may belong to another process.
    """

    def __init__(self, **_: Any) -> None:
        self._servers: list[asyncio.Server] = []

    async def _listen(self) -> int:
        async def shut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(shut, "127.0.0.1", 0, family=socket.AF_INET)
        self._servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    async def bind(self) -> int:
        return await self._listen()

    async def start(self) -> int:
        return await self._listen()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()


def _real_ssh_factory() -> SSHFactory:
    from vastai_async.sandbox.sshd import InstanceSSHServer

    return InstanceSSHServer


class Sandbox:
    """A local Vast.ai. Use ``async with Sandbox(...) as sb:`` and point a client at ``sb.url``.

    Args:
        seed: seeds the market, boot latencies, ids and fault draws.
        offers: number of machines in the market (each has 1 to 4 offers).
        time_scale: wall seconds per simulated second.
        api_key: the account key; random when ``None``.
        host: address the API and log servers bind to.
        port: API port (0 picks a free one).
        rate_limits: enforce per-route rate limits (the real 429 answers).
        thresholds: requests/second per route, overriding the defaults.
        credit: starting balance in dollars.
        ssh: run real SSH servers per instance (``sshd.py``); ``False`` binds ports that only
            accept and close connections.
        ssh_factory: builds an instance's SSH server (overrides ``ssh``).
        boot_distribution: draws a machine's typical boot latency (simulated seconds).
        faults: HTTP faults active from the start (more with :meth:`add_fault`).
        legacy_list: serve the legacy ``GET /api/v0/instances/``; ``False`` answers 410 as
            the real service does for newer accounts.
        shell: ``"real"`` runs an instance's commands, onstart script and SSH sessions with
            ``/bin/sh`` in a folder of its own, as the local user on this machine;
            ``"emulated"`` answers a dozen built-in commands and starts no process.

    Raises:
        ValueError: ``shell`` is neither ``"real"`` nor ``"emulated"``.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        offers: int = 40,
        time_scale: float = 0.05,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        rate_limits: bool = True,
        thresholds: Mapping[str, float] | None = None,
        credit: float = 1000.0,
        ssh: bool = True,
        ssh_factory: SSHFactory | None = None,
        boot_distribution: Callable[[random.Random], float] = default_boot_distribution,
        faults: Sequence[HTTPFault] = (),
        legacy_list: bool = True,
        shell: ShellMode = "real",
    ) -> None:
        if shell not in SHELLS:
            raise ValueError(f"shell must be one of {', '.join(SHELLS)}; got {shell!r}")
        self.shell: ShellMode = shell
        self.seed = seed
        self.time_scale = time_scale
        self.api_key = api_key if api_key is not None else secrets.token_hex(32)
        self.host = host
        self._port = port
        self.clock = SimClock(time_scale)
        self.market = Market(seed=seed, machines=offers)
        self.billing = Ledger(credit=credit)
        self.boot = BootModel(seed=seed, distribution=boot_distribution)
        self.limiter = RateLimiter(
            clock=self.clock, thresholds=thresholds or DEFAULT_THRESHOLDS, seed=seed
        )
        self.limiter.enabled = rate_limits
        self.faults = FaultPlan(seed=seed)
        for fault in faults:
            self.faults.add(fault)
        self._ssh = ssh
        self._legacy_list = legacy_list
        self._ssh_factory = ssh_factory
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._runners: list[web.AppRunner] = []
        self._state: SandboxState | None = None
        self.url = ""
        self.logs_url = ""

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> Sandbox:
        """Bind both servers; returns self."""
        factory = self._ssh_factory or (_real_ssh_factory() if self._ssh else _ClosedDoor)
        self._tmp = tempfile.TemporaryDirectory(prefix="vastai-sandbox-")
        cloud = Cloud(
            market=self.market,
            clock=self.clock,
            ledger=self.billing,
            boot=self.boot,
            ssh_factory=factory,
            workroot=Path(self._tmp.name),
            seed=self.seed,
            shell=self.shell,
        )
        self._state = SandboxState(
            cloud=cloud,
            api_key=self.api_key,
            limiter=self.limiter,
            faults=self.faults,
            logs=LogStore(),
            templates=[dict(t) for t in _TEMPLATES],
            user_id=random.Random(f"user:{self.seed}").randrange(100_000, 999_999),
            legacy_list=self._legacy_list,
        )
        try:
            api_port = await self._serve(make_app(self._state, ROUTES), self._port)
            logs_port = await self._serve(_make_logs_app(self._state), 0)
        except BaseException:
            await self.close()
            raise
        self.url = f"http://{self.host}:{api_port}"
        self.logs_url = f"http://{self.host}:{logs_port}"
        self._state.logs.base_url = self.logs_url
        return self

    async def _serve(self, app: web.Application, port: int) -> int:
        # No access log: an api_key query value must never be written anywhere. A short
        # shutdown timeout: clients of a sandbox being closed have nothing left to wait for.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.host, port)
        await site.start()
        server = site._server
        if not isinstance(server, asyncio.Server) or not server.sockets:
            raise RuntimeError("sandbox server did not bind")
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        """Stop instances' tasks and SSH servers and both HTTP servers. Idempotent."""
        if self._state is not None:
            await self._state.cloud.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> Sandbox:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- inspection ----------------------------------------------------------------------------

    @property
    def state(self) -> SandboxState:
        """The shared state (started sandboxes only)."""
        if self._state is None:
            raise RuntimeError("sandbox not started: use `async with Sandbox(...)`")
        return self._state

    @property
    def cloud(self) -> Cloud:
        """Instances, keys and lifecycle."""
        return self.state.cloud

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every API request received, in order (headers raw: never print them)."""
        return self.state.requests

    @property
    def log_requests(self) -> list[RecordedRequest]:
        """Every request the log origin received."""
        return self.state.logs.requests

    def request_counts(self) -> Counter[str]:
        """Requests per route key."""
        return Counter(r.route for r in self.requests)

    def instances(self) -> list[dict[str, Any]]:
        """Every live instance as the API shows it."""
        cloud = self.cloud
        return [cloud.instance_json(i) for i in cloud.instances.values()]

    def instance(self, instance_id: int) -> Instance:
        """The sandbox's record of one live instance (``KeyError`` if absent)."""
        return self.cloud.instances[instance_id]

    def alive_instance_ids(self) -> set[int]:
        """Ids of instances that exist (and may bill)."""
        return set(self.cloud.instances)

    def ssh_server(self, instance_id: int) -> SSHServerLike | None:
        """The current SSH server of an instance (to set its ``faults``), if any."""
        return self.cloud.instances[instance_id].server

    def ledger(self) -> list[dict[str, Any]]:
        """Every instance's account (alive or destroyed), in simulated seconds and dollars."""
        now = self.clock.now()
        return [e.as_dict(now) for e in self.billing.entries.values()]

    def balance(self) -> float:
        """The account balance now."""
        return self.billing.balance(self.clock.now())

    def leak_report(self) -> list[dict[str, Any]]:
        """Instances still existing, with what they cost per hour right now."""
        return self.billing.leak_report(self.clock.now())

    def ready_at(self, instance_id: int) -> float | None:
        """Epoch when the instance's SSH server could first accept a login (sshd's oracle)."""
        server = self.cloud.instances[instance_id].server
        value = getattr(server, "ready_at", None)
        return value if isinstance(value, float) else None

    # --- controls ------------------------------------------------------------------------------

    def set_boot_latency(self, offer_or_machine_id: int, sim_s: float) -> None:
        """Make every rental of an offer (or of any offer of a machine) boot in ``sim_s``."""
        self.boot.exact[offer_or_machine_id] = sim_s

    def add_fault(self, fault: HTTPFault) -> HTTPFault:
        """Activate an HTTP fault (see ``faults.py``); returns it for its counters."""
        return self.faults.add(fault)

    def set_lifecycle_fault(self, offer_or_machine_id: int, fault: LifecycleFault) -> None:
        """Make rentals of an offer (or machine) fail as ``fault`` says."""
        self.cloud.lifecycle_faults[offer_or_machine_id] = fault

    def set_ssh_faults(self, offer_or_machine_id: int, faults: Any) -> None:
        """SSH faults (``sshd.SSHFaults``) for servers of rentals of an offer (or machine).

        Applied when an instance's server is made (creation, start, reboot); to change the
        faults of a live server, set ``sb.ssh_server(instance_id).faults``.
        """
        self.cloud.ssh_faults[offer_or_machine_id] = faults

    def take_offer(self, offer_id: int) -> None:
        """Someone else rents this offer (and its machine) now."""
        if self.market.available(offer_id) is not None:
            self.market.rent(offer_id, -1)

    async def outbid(self, instance_id: int) -> None:
        """A higher bid arrives: the interruptible instance stops."""
        inst = self.cloud.instances[instance_id]
        if inst.bid is None:
            raise ValueError(f"instance {instance_id} is on-demand; it cannot be outbid")
        await self.cloud.stop(inst, outbid=True)

    async def host_offline(self, instance_id: int) -> None:
        """The instance's host drops now: its SSH server stops and it reports ``offline``."""
        await self.cloud.go_offline(self.cloud.instances[instance_id])

    async def wait_status(self, instance_id: int, status: str, *, within_s: float = 30.0) -> None:
        """Wait up to ``within_s`` wall seconds until an instance's ``actual_status`` is ``status``.

        Raises:
            TimeoutError: it did not get there in time.
            KeyError: the instance does not exist (any more).
        """
        async with asyncio.timeout(within_s):
            # Statuses change inside lifecycle tasks; a 10 ms poll is simpler than a condition
            # per instance and far finer than any simulated step.
            while self.cloud.instances[instance_id].actual_status != status:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
