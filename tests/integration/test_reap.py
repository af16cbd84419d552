"""``reap`` cleans what a killed process left, and spares everything it must spare."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import aiohttp
import attrs
import pytest

from vastai_async import VastAIService
from vastai_async.labels import parse_label
from vastai_async.sandbox import Sandbox

pytestmark = pytest.mark.vastai_sandbox(offers=30, time_scale=0.02, seed=5)

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from vastai_async import VastAIService
    from vastai_async.sandbox_link import sandbox_config

    async def main():
        url, key, scale = sys.argv[1], sys.argv[2], float(sys.argv[3])
        config = sandbox_config(url, key, time_scale=scale, max_bid_usd_per_hour=50.0,
                                min_vram_gb=0, preferred_gpus=())
        async with VastAIService(config=config) as vast:
            print("owner", vast.owner, flush=True)
            offers = await vast.search_offers()
            await vast.provision_instance(job_id="doomed", offers=offers, fan_out=3)

    asyncio.run(main())
    """
)


async def _wait_for(predicate: object, within_s: float = 20.0) -> None:
    async with asyncio.timeout(within_s):
        # Polls the effects of another process: there is no event to wait on.
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def _create_unlabeled(sandbox: Sandbox, offer_id: int) -> int:
    headers = {"Authorization": f"Bearer {sandbox.api_key}"}
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{sandbox.url}/api/v0/asks/{offer_id}/",
            json={"client_id": "me", "image": "ubuntu", "disk": 10, "runtype": "ssh"},
            headers=headers,
        ) as resp,
    ):
        body = await resp.json()
    return int(body["new_contract"])


async def test_reap_destroys_a_killed_owners_instances_and_spares_the_rest(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, tmp_path: Path
) -> None:
    for offer in await vastai_service.search_offers():
        vastai_sandbox.set_boot_latency(offer.id, 100_000.0)  # nothing gets ready
    offers = await vastai_service.search_offers()
    # Spared: a kept rental and an unlabeled instance.
    vastai_sandbox.set_boot_latency(offers[-1].id, 5.0)
    kept = await vastai_service.provision_instance(job_id="keepme", offers=offers[-1:])
    await kept.detach()
    other_machine = next(o for o in offers if o.machine_id != offers[-1].machine_id)
    unlabeled = await _create_unlabeled(vastai_sandbox, other_machine.id)

    env = dict(os.environ, VASTAI_STATE_DIR=str(tmp_path / "child-state"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        vastai_sandbox.url,
        vastai_sandbox.api_key,
        str(vastai_sandbox.time_scale),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await proc.stdout.readline()).decode().split()
        assert line[0] == "owner"
        child_owner = line[1]

        def child_instances() -> set[int]:
            return {
                i["id"]
                for i in vastai_sandbox.instances()
                if (p := parse_label(i.get("label"))) is not None and p.owner == child_owner
            }

        await _wait_for(lambda: len(child_instances()) == 3)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    doomed = child_instances()
    assert len(doomed) == 3

    # Another live owner's race is running at the same time: it must be spared.
    taken = {offers[-1].machine_id, other_machine.machine_id}
    spare_offers = [o for o in await vastai_service.search_offers() if o.machine_id not in taken]
    spare_offers = [
        o
        for i, o in enumerate(spare_offers)
        if o.machine_id not in {p.machine_id for p in spare_offers[:i]}
    ][:2]
    other = VastAIService(config=attrs.evolve(vastai_service.config, owner="worker-2"))
    other_task = asyncio.create_task(
        other.provision_instance(job_id="alive", offers=spare_offers, fan_out=2)
    )
    await _wait_for(lambda: len(other.live_instance_ids()) == 2)
    live_other = set(other.live_instance_ids())

    report = await vastai_service.reap()
    destroyed = {i for i, _ in report.destroyed}
    spared = {i for i, _ in report.spared}
    assert destroyed == doomed
    assert all("dead" in reason for _, reason in report.destroyed)
    assert {kept.instance_id, unlabeled} | live_other <= spared
    alive = vastai_sandbox.alive_instance_ids()
    assert not alive & doomed
    assert {kept.instance_id, unlabeled} | live_other <= alive

    other_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other_task
    await other.close()
    await vastai_service.terminate_instance(kept.instance_id)
    await vastai_service.terminate_instance(unlabeled)
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_reap_by_job_id_and_dry_run(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await vastai_service.search_offers()
    for offer in offers[:2]:
        vastai_sandbox.set_boot_latency(offer.id, 5.0)
    a = await vastai_service.provision_instance(job_id="job-a", offers=offers[:1])
    b = await vastai_service.provision_instance(job_id="job-b", offers=offers[1:2])
    plan = await vastai_service.reap(job_id="job-a", dry_run=True)
    assert [i for i, _ in plan.destroyed] == [a.instance_id]
    assert vastai_sandbox.alive_instance_ids() == {a.instance_id, b.instance_id}
    report = await vastai_service.reap(job_id="job-a")
    assert [i for i, _ in report.destroyed] == [a.instance_id]
    assert vastai_sandbox.alive_instance_ids() == {b.instance_id}
    listed = await vastai_service.list_rentals(job_id="job-b")
    assert [r.instance_id for r in listed] == [b.instance_id]
    await b.terminate()
