"""Instances and their lifecycle: create, load, run, stop, reboot, outbid, fail, destroy.

Each instance has one asyncio task driving it through its states on the simulated clock; the
task is cancelled on stop, destroy and close. The instance's SSH server (``sshd.py``) is bound at
creation (proxy port), started when it runs (direct port) and stopped when it stops or dies. Its
container (``container.py``: folder, environment, mapped ports, processes) is made at creation,
runs the onstart script each time the instance reaches running (output into the instance's log),
has its processes killed whenever the instance stops, and is removed when it is destroyed.
Instance JSON is built here from the sandbox's own state, never from the SDK's models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import attrs

from vastai_async.sandbox.billing import Ledger
from vastai_async.sandbox.clock import SimClock
from vastai_async.sandbox.container import Container, ShellMode
from vastai_async.sandbox.lifecycle import OCI_ERROR, BootModel, LifecycleFault
from vastai_async.sandbox.market import Market
from vastai_async.sandbox.nvidia_smi import gpu_data
from vastai_async.sandbox.views import instance_json

__all__ = ["Cloud", "Instance", "SSHServerLike"]

logger = logging.getLogger(__name__)


class SSHServerLike(Protocol):
    """The face of ``sshd.InstanceSSHServer`` the lifecycle uses."""

    async def bind(self) -> int: ...
    async def start(self) -> int: ...
    async def stop(self) -> None: ...


SSHFactory = Callable[..., SSHServerLike]


@attrs.define(kw_only=True)
class Instance:
    """One rented instance, as the sandbox keeps it."""

    id: int
    offer_id: int
    machine_id: int
    offer: dict[str, Any]
    image: str
    env: dict[str, str]
    onstart: str | None
    label: str | None
    runtype: str
    disk_gb: float
    bid: float | None
    gpu_dph: float
    api_key: str
    start_date: float
    template_hash_id: str | None
    args: list[str] | None
    boot_s: float
    fault: LifecycleFault | None
    actual_status: str | None = None
    intended_status: str = "running"
    cur_state: str = "running"
    next_state: str = "running"
    status_msg: str | None = None
    ssh_port: int | None = None
    direct_port: int | None = None
    keys: dict[str, float] = attrs.field(factory=dict)  # OpenSSH line -> attached epoch
    log: list[str] = attrs.field(factory=list)
    server: SSHServerLike | None = None
    task: asyncio.Task[None] | None = None
    workdir: Path | None = None
    container: Container | None = None
    port_map: dict[str, int] = attrs.field(factory=dict)  # "8080/tcp" -> host port


class Cloud:
    """The sandbox's account: market, instances, keys, ledger and lifecycle tasks.

    Args:
        market: the offers.
        clock: the simulated clock.
        ledger: billing.
        boot: boot latencies.
        ssh_factory: builds an instance's SSH server (keyword arguments of
            ``InstanceSSHServer``).
        workroot: folder holding each instance's SFTP area.
        seed: seeds instance ids and keys.
        shell: ``"real"`` or ``"emulated"``: what runs an instance's commands.
    """

    def __init__(
        self,
        *,
        market: Market,
        clock: SimClock,
        ledger: Ledger,
        boot: BootModel,
        ssh_factory: SSHFactory,
        workroot: Path,
        seed: int,
        shell: ShellMode = "emulated",
    ) -> None:
        self.market = market
        self.clock = clock
        self.ledger = ledger
        self.boot = boot
        self.ssh_factory = ssh_factory
        self.workroot = workroot
        self.shell: ShellMode = shell
        self.instances: dict[int, Instance] = {}
        self.account_keys: dict[int, tuple[str, float]] = {}
        self.lifecycle_faults: dict[int, LifecycleFault] = {}  # by offer id or machine id
        self.ssh_faults: dict[int, Any] = {}  # sshd.SSHFaults, by offer id or machine id
        self._rng = random.Random(f"ids:{seed}")
        self._next_id = 9_000_000 + self._rng.randrange(90_000)
        self._next_key_id = 40_000 + self._rng.randrange(1000)

    # --- create / destroy ---------------------------------------------------------------------

    async def create(
        self,
        *,
        offer_id: int,
        image: str,
        env: dict[str, str],
        onstart: str | None,
        label: str | None,
        runtype: str,
        disk_gb: float,
        bid: float | None,
        template_hash_id: str | None,
        args: list[str] | None,
    ) -> Instance:
        """Rent an available offer (the caller checked availability and billing)."""
        offer = self.market.rent(offer_id, self._next_id)
        self._next_id += 1 + self._rng.randrange(3)
        iid = self.market.machines[offer.machine_id].rented_by
        if iid is None:  # pragma: no cover - rent() just set it
            raise RuntimeError("market.rent did not record the instance")
        fields = dict(offer.fields)
        gpu_dph = float(bid) if bid is not None else float(fields["dph_base"])
        inst = Instance(
            id=iid,
            offer_id=offer_id,
            machine_id=offer.machine_id,
            offer=fields,
            image=image,
            env=env,
            onstart=onstart,
            label=label,
            runtype=runtype,
            disk_gb=disk_gb,
            bid=bid,
            gpu_dph=gpu_dph,
            api_key=secrets.token_hex(32),
            start_date=self.clock.epoch(),
            template_hash_id=template_hash_id,
            args=args,
            boot_s=self.boot.draw(offer_id=offer_id, machine_id=offer.machine_id),
            fault=self._take_fault(offer_id, offer.machine_id),
        )
        self.instances[iid] = inst
        inst.container = self._new_container(inst)
        inst.port_map = dict(inst.container.ports)
        self.ledger.open(
            instance_id=iid,
            offer_id=offer_id,
            machine_id=offer.machine_id,
            disk_gb=disk_gb,
            storage_cost=float(fields["storage_cost"]),
            gpu_dph=gpu_dph,
            now=self.clock.now(),
        )
        self._note(inst, f"created from offer {offer_id}")
        await self._new_server(inst)
        inst.task = asyncio.create_task(self._boot(inst, inst.boot_s), name=f"sandbox-{iid}")
        return inst

    def _take_fault(self, offer_id: int, machine_id: int) -> LifecycleFault | None:
        for key in (offer_id, machine_id):
            fault = self.lifecycle_faults.get(key)
            if fault is None:
                continue
            if fault.times is not None:
                if fault.times <= 0:
                    continue
                fault.times -= 1
            return fault
        return None

    async def destroy(self, iid: int) -> bool:
        """Destroy an instance; False when it does not exist."""
        inst = self.instances.pop(iid, None)
        if inst is None:
            return False
        await self._halt(inst)
        if inst.container is not None:
            await asyncio.to_thread(inst.container.remove)
        self.ledger.close(iid, self.clock.now())
        self.market.release(inst.machine_id, iid)
        return True

    async def close(self) -> None:
        """Stop every task and server (the sandbox is shutting down); billing stops too."""
        for inst in list(self.instances.values()):
            await self._halt(inst)
            if inst.container is not None:
                await asyncio.to_thread(inst.container.remove)
            self.ledger.set_running(inst.id, False, self.clock.now())

    # --- state changes -------------------------------------------------------------------------

    async def stop(self, inst: Instance, *, outbid: bool = False) -> None:
        """Stop an instance (by request, or outbid): disk kept and billed, GPU free."""
        await self._halt(inst)
        inst.actual_status = "stopped"
        inst.intended_status = inst.cur_state = inst.next_state = "stopped"
        if outbid:  # the owner still wants it running: the SDK's outbid signature (wire-notes)
            inst.intended_status = "running"
        inst.status_msg = "Outbid: stopped by a higher bid" if outbid else None
        inst.direct_port = None
        self.ledger.set_running(inst.id, False, self.clock.now())
        self._note(inst, "outbid, stopped" if outbid else "stopped")

    async def start(self, inst: Instance) -> None:
        """Start a stopped instance again: loading, then running after a shorter latency."""
        if inst.actual_status == "running" or (inst.task is not None and not inst.task.done()):
            return
        inst.intended_status = inst.cur_state = inst.next_state = "running"
        await self._new_server(inst)
        restart = max(5.0, inst.boot_s * 0.1)
        inst.task = asyncio.create_task(self._boot(inst, restart), name=f"sandbox-{inst.id}")

    async def reboot(self, inst: Instance) -> None:
        """Restart the container: ``rebooting``, then loading and running again."""
        await self._halt(inst)
        inst.actual_status = "rebooting"
        inst.direct_port = None
        self.ledger.set_running(inst.id, False, self.clock.now())
        self._note(inst, "rebooting")
        await self._new_server(inst)
        restart = max(5.0, inst.boot_s * 0.1)
        inst.task = asyncio.create_task(self._boot(inst, restart), name=f"sandbox-{inst.id}")

    async def change_bid(self, inst: Instance, price: float) -> None:
        """New bid; an interruptible instance bidding under the offer's floor is outbid."""
        inst.bid = price
        inst.gpu_dph = price
        self.ledger.set_gpu_dph(inst.id, price, self.clock.now())
        if price < float(inst.offer["min_bid"]) and inst.actual_status not in ("stopped", None):
            await self.stop(inst, outbid=True)

    # --- the task ------------------------------------------------------------------------------

    async def _boot(self, inst: Instance, latency: float) -> None:
        try:
            # The first stretch keeps the current status (null when fresh, rebooting, stopped).
            await self.clock.sleep(min(5.0, latency / 4))
            inst.actual_status = "loading"
            inst.status_msg = f"Pulling image {inst.image}"
            self._note(inst, "loading")
            if inst.fault is not None and inst.fault.stuck_loading:
                await asyncio.Event().wait()  # until destroyed or stopped
            await self.clock.sleep(latency - min(5.0, latency / 4))
            if inst.fault is not None and inst.fault.oci_error:
                inst.actual_status = "exited"
                inst.cur_state = inst.next_state = "stopped"
                inst.status_msg = OCI_ERROR
                self._note(inst, "container exited")
                return
            if await self._fails_at_running(inst):
                return
            if inst.server is not None:
                inst.direct_port = await inst.server.start()
            inst.actual_status = "running"
            inst.status_msg = "success, running " + inst.image
            self.ledger.set_running(inst.id, True, self.clock.now())
            self._note(inst, "running")
            self._run_onstart(inst)
            await self._after_running(inst)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("sandbox instance %s lifecycle failed", inst.id)

    async def _after_running(self, inst: Instance) -> None:
        fault = inst.fault
        if fault is None:
            return
        events = []
        if fault.offline_after_s is not None:
            events.append((fault.offline_after_s, "offline"))
        if fault.outbid_after_s is not None and inst.bid is not None:
            events.append((fault.outbid_after_s, "outbid"))
        if not events:
            return
        after, what = min(events)
        await self.clock.sleep(after)
        if what == "outbid":
            await self.stop(inst, outbid=True)
        else:
            await self.go_offline(inst)

    async def _fails_at_running(self, inst: Instance) -> bool:
        # A fault due 0 s after running strikes before the SSH server accepts anything, so
        # whether a login gets in first never depends on how fast the machine is.
        fault = inst.fault
        if fault is None:
            return False
        if fault.offline_after_s == 0:
            await self.go_offline(inst)
            return True
        if fault.outbid_after_s == 0 and inst.bid is not None:
            await self.stop(inst, outbid=True)
            return True
        return False

    async def go_offline(self, inst: Instance) -> None:
        """The host drops: SSH gone, status ``offline``, GPU billing stops."""
        await self._halt(inst)
        inst.actual_status = "offline"
        inst.status_msg = "Host is offline"
        inst.direct_port = None
        self.ledger.set_running(inst.id, False, self.clock.now())
        self._note(inst, "host offline")

    async def _halt(self, inst: Instance) -> None:
        task, inst.task = inst.task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server, inst.server = inst.server, None
        if server is not None:
            try:
                await server.stop()
            except Exception:
                logger.exception("sandbox ssh server of %s failed to stop", inst.id)
        if inst.container is not None:
            # Whatever the instance started dies with it (a stopped container runs nothing).
            await inst.container.kill_all()

    def _new_container(self, inst: Instance) -> Container:
        offer = inst.offer
        gpus = gpu_data(
            instance_id=inst.id,
            gpu_name=str(offer["gpu_name"]),
            num_gpus=int(offer["num_gpus"]),
            memory_mib=int(offer.get("gpu_ram") or 24564),
            driver_version=str(offer.get("driver_version") or "550.54.15"),
            cuda_version=str(offer.get("cuda_max_good") or "12.4"),
        )
        return Container(
            instance_id=inst.id,
            workdir=self.workroot / str(inst.id),
            shell=self.shell,
            env=inst.env,
            gpus=gpus,
        )

    def _run_onstart(self, inst: Instance) -> None:
        container = inst.container
        if not inst.onstart or container is None:
            return
        if container.direct_port is None:
            container.direct_port = inst.direct_port  # an SSH-less sandbox still names port 22
        self._note(inst, "running onstart")

        def finished(status: int) -> None:
            if status == 0:
                self._note(inst, "onstart finished (exit status 0)")
            elif status < 0:
                self._note(inst, f"onstart killed by signal {-status}")
            else:
                self._note(inst, f"onstart failed: exit status {status}")

        container.start_onstart(inst.onstart, on_line=inst.log.append, on_exit=finished)

    async def _new_server(self, inst: Instance) -> None:
        workdir = self.workroot / str(inst.id)
        inst.workdir = workdir
        env = {k: v for k, v in inst.env.items() if not k.startswith("-")}
        extra: dict[str, Any] = {"container": inst.container}
        faults = self.ssh_faults.get(inst.offer_id, self.ssh_faults.get(inst.machine_id))
        if faults is not None:
            # A copy per server: one instance's fault changes must not leak into the next.
            extra["faults"] = attrs.evolve(faults) if attrs.has(type(faults)) else faults
        server = self.ssh_factory(
            **extra,
            instance_id=inst.id,
            hostname=f"C.{inst.id}",
            authorized_keys=lambda: self.authorized_keys(inst.id),
            env=env,
            gpu_name=str(inst.offer["gpu_name"]),
            num_gpus=int(inst.offer["num_gpus"]),
            workdir=workdir,
            host="127.0.0.1",
        )
        inst.ssh_port = await server.bind()
        inst.server = server

    def _note(self, inst: Instance, text: str) -> None:
        inst.log.append(f"[{self.clock.now():10.1f}s] {text}")

    # --- keys and views ------------------------------------------------------------------------

    def authorized_keys(self, iid: int) -> list[tuple[str, float]]:
        """Keys that may log into ``iid``: its own, then the account's, with attach times."""
        inst = self.instances.get(iid)
        own = list(inst.keys.items()) if inst is not None else []
        return own + list(self.account_keys.values())

    def add_account_key(self, key: str) -> int:
        """Register an account key; returns its id."""
        key_id = self._next_key_id
        self._next_key_id += 1
        self.account_keys[key_id] = (key, self.clock.epoch())
        return key_id

    def instance_json(self, inst: Instance) -> dict[str, Any]:
        """The instance as the API shows it (fields per vast-api.md)."""
        return instance_json(inst)
