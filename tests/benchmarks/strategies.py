"""The strategies compared: our race, a per-instance-polling race, and the sequential baseline.

Each strategy runs against a started :class:`~tests.benchmarks.scenario.Scenario` and returns a
plain dict (one trial): success, time to proven SSH login (simulated seconds), API requests,
money spent on instances other than the winner, the oracle, and for the race the wall time from
the winner's login to the last loser confirmed destroyed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import attrs

from tests.benchmarks.scenario import Scenario
from vastai_async._poller import InstancePoller
from vastai_async.client import VastAIClient
from vastai_async.config import VastAIConfig
from vastai_async.errors import NotFoundError, OfferUnavailableError, VastAIError
from vastai_async.events import Event, InstanceCreated, StatusChanged, WinnerChosen
from vastai_async.hedging import BootTimes, Hedged, HedgePolicy
from vastai_async.models import CreateInstanceRequest, Instance
from vastai_async.pacing import Pacing
from vastai_async.service import VastAIService
from vastai_async.ssh import load_client_key, probe

__all__ = ["run_race", "run_sequential"]

IMAGE = "vastai/pytorch:latest"
#: Routes of the once-per-service account key registration (not per provision).
KEY_SETUP_ROUTES = ("GET /api/v0/ssh/", "POST /api/v0/ssh/")


class PerInstancePollingService(VastAIService):
    """Our race, but its status poller shows each instance (one request per instance per tick).

    The counterfactual of the issue's "per-instance polling": the same race, the same tick, the
    status fetched the way sequential provisioners fetch it.
    """

    def _get_poller(self) -> InstancePoller:
        if self._poller is None:

            async def show_each(ids: list[int]) -> list[Instance]:
                async def one(instance_id: int) -> Instance | None:
                    try:
                        return await self.client.show_instance(instance_id)
                    except NotFoundError:
                        return None

                found = await asyncio.gather(*(one(i) for i in ids))
                return [inst for inst in found if inst is not None]

            self._poller = InstancePoller(show_each, interval_s=self.timings.poll_interval_s)
        return self._poller


def _base(sc: Scenario, strategy: str) -> dict[str, Any]:
    return {"strategy": strategy, "seed": sc.seed, "ok": False, "error": None}


async def run_race(
    sc: Scenario,
    *,
    fan_out: int,
    per_instance_polling: bool = False,
    real_pacing: bool = False,
    hedge: HedgePolicy | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """``VastAIService.provision_instance`` with ``fan_out`` over the scenario's candidates."""
    if name is None:
        name = f"race_k{fan_out}" + ("_show" if per_instance_polling else "")
        name += "_realpacing" if real_pacing else ""
    out = _base(sc, name)
    config = sc.config
    if real_pacing:
        config = attrs.evolve(config, pacing=Pacing())
    cls = PerInstancePollingService if per_instance_polling else VastAIService
    events: list[Event] = []
    requests_before = sc.request_total()
    t0 = time.time()
    winner: int | None = None
    async with cls(config=config) as service:
        try:
            rental = await service.provision_instance(
                job_id=f"bench-{sc.seed}",
                offers=sc.candidates,
                fan_out=fan_out,
                image=IMAGE,
                on_event=events.append,
                hedge=hedge,
            )
        except VastAIError as err:
            out["error"] = f"{type(err).__name__}: {err}"
        else:
            returned = time.time()
            winner = rental.instance_id
            won = next(e for e in events if isinstance(e, WinnerChosen))
            out.update(
                ok=True,
                instance_id=winner,
                time_to_ssh_s=(won.at - t0) / sc.spec.time_scale,
                returned_s=(returned - t0) / sc.spec.time_scale,
                teardown_wall_s=returned - won.at,
            )
        finally:
            out["requests"] = sc.request_total() - requests_before
            out["requests_by_route"] = _routes_since(sc, requests_before)
            out["requests_key_setup"] = sum(
                out["requests_by_route"].get(r, 0) for r in KEY_SETUP_ROUTES
            )
            out["boot_wall_s"] = _boot_times(events)
            out["hedges"] = [
                {"age_s": e.age_s / sc.spec.time_scale, "delay_s": e.delay_s / sc.spec.time_scale}
                for e in events
                if isinstance(e, Hedged)
            ]
            _oracle(sc, out, t0)
            out["loser_usd"] = sc.loser_usd(winner)
            out["instances_created"] = len(sc.servers)
            if winner is not None:
                await service.terminate_instance(winner)
    out["leaked"] = sorted(sc.sandbox.alive_instance_ids())
    return out


async def run_sequential(
    sc: Scenario,
    *,
    poll_s: float,
    instance_deadline_s: float | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The baseline: best offer, create, show it every ``poll_s`` simulated s, then SSH; next.

    Written as existing provisioners do it, on our :class:`VastAIClient` (pacing and retries
    included): one candidate at a time, its status fetched by a show call per poll, SSH tried
    once it runs, destroyed on a fatal status or a deadline, then the next offer. Deadlines are
    the SDK's defaults (loading 1200 s, SSH 300 s after running, overall 1800 s), scaled;
    ``instance_deadline_s`` (dstack's 600 s) bounds one instance from create to a login too.
    """
    out = _base(sc, name or f"sequential_{poll_s:g}s")
    config = sc.config
    ts = sc.spec.time_scale
    timings = config.timings
    key = load_client_key(config.ssh_key_path)
    requests_before = sc.request_total()
    t0 = time.time()
    winner: int | None = None
    tried = 0
    async with VastAIClient.from_config(config) as client:
        try:
            async with asyncio.timeout(timings.overall_s):
                winner = await _sequential_loop(
                    client,
                    sc,
                    config,
                    key,
                    poll_s * ts,
                    out,
                    None if instance_deadline_s is None else instance_deadline_s * ts,
                )
        except TimeoutError:
            out["error"] = (
                f"no SSH login within the overall deadline ({timings.overall_s / ts:g} s)"
            )
        tried = out.pop("_tried", 0)
        if winner is not None:
            won_s = (out.pop("_won") - t0) / ts
            out.update(ok=True, instance_id=winner, time_to_ssh_s=won_s, returned_s=won_s)
        out["requests"] = sc.request_total() - requests_before
        out["requests_by_route"] = _routes_since(sc, requests_before)
        out["loser_usd"] = sc.loser_usd(winner)
        out["instances_created"] = len(sc.servers)
        out["candidates_tried"] = tried
        # Left behind: anything alive but the winner (a deadline hit mid-candidate).
        out["leaked"] = sorted(sc.sandbox.alive_instance_ids() - {winner})
        for instance_id in sorted(sc.sandbox.alive_instance_ids()):
            await client.destroy_instance(instance_id)
    return out


async def _sequential_loop(
    client: VastAIClient,
    sc: Scenario,
    config: VastAIConfig,
    key: Any,
    poll_wall_s: float,
    out: dict[str, Any],
    instance_deadline: float | None = None,
) -> int | None:
    timings = config.timings
    request = CreateInstanceRequest(
        image=IMAGE, disk_gb=config.default_disk_gb, label=f"bench-seq-{sc.seed}"
    )
    out["_tried"] = 0
    for offer in sc.candidates:
        out["_tried"] += 1
        try:
            created = await client.create_instance(offer.id, request)
        except OfferUnavailableError:
            continue
        instance_id = int(created.new_contract)
        await client.attach_ssh_key(instance_id, config.ssh_public_key)
        waited = _wait_then_ssh(client, instance_id, timings, key, poll_wall_s)
        try:
            async with asyncio.timeout(instance_deadline):
                ready = await waited
        except TimeoutError:
            ready = False
        if ready:
            out["_won"] = time.time()
            return instance_id
        await client.destroy_instance(instance_id)
    out["error"] = "every candidate failed"
    return None


async def _wait_then_ssh(
    client: VastAIClient, instance_id: int, timings: Any, key: Any, poll_wall_s: float
) -> bool:
    loading_deadline = time.monotonic() + timings.loading_s
    inst: Instance | None = None
    while time.monotonic() < loading_deadline:
        await asyncio.sleep(poll_wall_s)
        inst = await client.show_instance(instance_id)
        if inst.fatal_reason() is not None:
            return False
        if inst.is_running():
            break
    else:
        return False
    assert inst is not None
    ssh_deadline = time.monotonic() + timings.ssh_s
    while time.monotonic() < ssh_deadline:
        started = time.monotonic()
        for endpoint in inst.ssh_endpoints():
            res = await probe(
                endpoint.host,
                endpoint.port,
                client_key=key,
                connect_timeout=timings.connect_timeout_s,
                login_timeout=timings.login_timeout_s,
                username=endpoint.user,
            )
            if res.ok:
                return True
        await asyncio.sleep(max(0.0, timings.probe_pause_s - (time.monotonic() - started)))
    return False


def _boot_times(events: list[Event]) -> list[float]:
    """Wall seconds from each create to its first listing as running, or to the winning login
    if that came first: what the race itself records into the service's boot times."""
    created = {e.instance_id: e.at for e in events if isinstance(e, InstanceCreated)}
    out = []
    seen: set[int] = set()
    for e in events:
        if (isinstance(e, StatusChanged) and e.new == "running") or isinstance(e, WinnerChosen):
            iid = e.instance_id
        else:
            continue
        if iid not in seen and iid in created:
            seen.add(iid)
            out.append(e.at - created[iid])
    return out


def history_from(samples: list[float]) -> BootTimes:
    """Boot times seen in earlier provisions, for a hedged race's policy."""
    return BootTimes(samples, keep=max(1, len(samples)))


def _routes_since(sc: Scenario, before: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in sc.sandbox.requests[before:]:
        counts[rec.route] = counts.get(rec.route, 0) + 1
    return counts


def _oracle(sc: Scenario, out: dict[str, Any], t0: float) -> None:
    oracle = sc.oracle_epoch()
    out["oracle_s"] = None if oracle is None else (oracle - t0) / sc.spec.time_scale
    if out.get("ok") and oracle is not None:
        out["minus_oracle_s"] = out["time_to_ssh_s"] - out["oracle_s"]
