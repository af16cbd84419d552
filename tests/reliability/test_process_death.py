"""A provisioning process SIGKILLed inside its own teardown: ``reap`` still finds everything.

``tests/integration/test_reap.py`` kills the owner mid-race; here the kill lands at seeded
request counts after the race's first destroy, i.e. while it tears its losers down, and the
reap runs in a new process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.reliability._harness import pick_offers
from vastai_async import VastAIService
from vastai_async.labels import parse_label
from vastai_async.sandbox import Sandbox

pytestmark = pytest.mark.vastai_sandbox(offers=20, time_scale=0.02, seed=61)

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from vastai_async import VastAIService
    from vastai_async.sandbox_link import sandbox_config

    async def main():
        url, key, scale, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
        config = sandbox_config(url, key, time_scale=scale, max_bid_usd_per_hour=50.0,
                                min_vram_gb=0, preferred_gpus=())
        async with VastAIService(config=config) as vast:
            if mode == "reap":
                report = await vast.reap()
                print(json.dumps([i for i, _ in report.destroyed]), flush=True)
                return
            print("owner", vast.owner, flush=True)
            offers = [o for o in await vast.search_offers() if o.id in json.loads(mode)]
            await vast.provision_instance(job_id="doomed", offers=offers, fan_out=3)

    asyncio.run(main())
    """
)


class _KillOnRequest(list[Any]):
    """The sandbox's request record; SIGKILLs ``pid`` at the Nth request after the first DELETE."""

    def __init__(self, items: list[Any], pid: int, after_delete: int) -> None:
        super().__init__(items)
        self.pid = pid
        self.after_delete = after_delete
        self.seen: int | None = None
        self.killed = False

    def append(self, item: Any) -> None:
        super().append(item)
        if self.seen is None and item.route.startswith("DELETE "):
            self.seen = 0
        elif self.seen is not None:
            self.seen += 1
        if not self.killed and self.seen is not None and self.seen >= self.after_delete:
            self.killed = True
            os.kill(self.pid, signal.SIGKILL)


async def _child(sb: Sandbox, env: dict[str, str], mode: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        sb.url,
        sb.api_key,
        str(sb.time_scale),
        mode,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )


# The child's teardown is a bulk DELETE then one label listing: cut at each of them.
@pytest.mark.parametrize("after_delete", [0, 1])
async def test_sigkill_during_teardown_then_reap_in_a_new_process_destroys_all_of_the_dead_owner(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, tmp_path: Path, after_delete: int
) -> None:
    sb = vastai_sandbox
    offers = pick_offers(await vastai_service.search_offers(), 4)
    # A kept rental of ours on another machine must survive the reap.
    sb.set_boot_latency(offers[3].id, 5.0)
    kept = await vastai_service.provision_instance(job_id="keep", offers=offers[3:], fan_out=1)
    await kept.detach()
    # The child's race: one fast winner, two losers that never boot (destroyed in teardown).
    for offer, boot in zip(offers[:3], (5.0, 100_000.0, 100_000.0), strict=True):
        sb.set_boot_latency(offer.id, boot)
    env = dict(os.environ, VASTAI_STATE_DIR=str(tmp_path / "child-state"))
    proc = await _child(sb, env, json.dumps([o.id for o in offers[:3]]))
    record = _KillOnRequest(sb.state.requests, proc.pid, after_delete)
    sb.state.requests = record
    try:
        assert proc.stdout is not None
        owner = (await proc.stdout.readline()).decode().split()[1]
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert record.killed, "the child was killed inside its teardown"
    assert proc.returncode == -signal.SIGKILL

    reaper = await _child(sb, env, "reap")
    assert reaper.stdout is not None
    out, _ = await asyncio.wait_for(reaper.communicate(), 60)
    assert reaper.returncode == 0
    destroyed = set(json.loads(out.decode().strip().splitlines()[-1]))
    of_child = {
        i["id"]
        for i in sb.instances()
        if (p := parse_label(i.get("label"))) is not None and p.owner == owner
    }
    assert of_child == set(), f"the dead owner's instances survived: {of_child}"
    assert sb.alive_instance_ids() == {kept.instance_id}
    assert kept.instance_id not in destroyed
    await vastai_service.terminate_instance(kept.instance_id)
