"""``reap`` across PID namespaces: containers sharing a host name, and owners that ran as PID 1.

``unshare --pid --fork --mount-proc`` gives a process its own PID namespace on the same host
name, as containers with host networking (or Kubernetes ``hostNetwork`` pods) have. A live
owner's machine must survive a reap run from there; a dead owner that ran as PID 1 must be
reapable through the owner lock in a shared state directory, and is otherwise spared with the
``--owner`` command to reap it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest

from tests.reliability._harness import pick_offers
from vastai_async import VastAIService
from vastai_async.config import VastAIConfig
from vastai_async.labels import parse_label
from vastai_async.sandbox import Sandbox

pytestmark = pytest.mark.vastai_sandbox(offers=12, time_scale=0.02, seed=71)


UNSHARE = shutil.which("unshare")
ROOT = str(Path(__file__).resolve().parents[2])


def _unshare_works() -> bool:
    if UNSHARE is None:
        return False
    probe = subprocess.run(  # noqa: S603  (a fixed argv of our own)
        [UNSHARE, "--pid", "--fork", "--mount-proc", "sh", "-c", "echo $$"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.returncode == 0 and probe.stdout.strip() == "1"


needs_unshare = pytest.mark.skipif(
    not _unshare_works(),
    reason="needs `unshare --pid --fork --mount-proc` (root or user namespaces)",
)

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from vastai_async import VastAIService
    from vastai_async.sandbox_link import sandbox_config

    async def main():
        url, key, scale, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
        config = sandbox_config(url, key, time_scale=scale, max_bid_usd_per_hour=50.0,
                                min_vram_gb=0, preferred_gpus=())
        vast = VastAIService(config=config)
        await vast.__aenter__()
        if mode == "reap":
            report = await vast.reap()
            print(json.dumps({"pid": os.getpid(), "destroyed": [i for i, _ in report.destroyed],
                              "spared": report.spared}), flush=True)
            await vast.close()
            return
        offers = [o for o in await vast.search_offers() if o.id == int(mode)]
        rental = await vast.provision_instance(job_id="pid1", offers=offers, fan_out=1)
        print(json.dumps({"pid": os.getpid(), "owner": vast.owner,
                          "instance": rental.instance_id}), flush=True)
        os._exit(0)  # dies without any teardown, as a killed container would

    asyncio.run(main())
    """
)


async def _in_new_pid_namespace(sb: Sandbox, state_dir: Path, mode: str) -> dict[str, object]:
    env = dict(os.environ, VASTAI_STATE_DIR=str(state_dir))
    assert UNSHARE is not None
    proc = await asyncio.create_subprocess_exec(
        UNSHARE,
        "--pid",
        "--fork",
        "--mount-proc",
        sys.executable,
        "-c",
        CHILD,
        sb.url,
        sb.api_key,
        str(sb.time_scale),
        mode,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, out
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    assert result["pid"] == 1, "the child must run as PID 1 of its own namespace"
    return result


@needs_unshare
async def test_reap_from_another_pid_namespace_spares_a_live_owner(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, tmp_path: Path
) -> None:
    """Same host name, different PID namespace: the owner's pid is invisible, not dead."""
    offers = pick_offers(await vastai_service.search_offers(), 1)
    vastai_sandbox.set_boot_latency(offers[0].id, 5.0)
    rental = await vastai_service.provision_instance(job_id="alive", offers=offers, fan_out=1)
    # With the owner's state directory (its lock is held) and without it (no lock to read).
    for state_dir in (vastai_service.config.state_dir, tmp_path / "elsewhere"):
        result = await _in_new_pid_namespace(vastai_sandbox, state_dir, "reap")
        assert result["destroyed"] == [], state_dir
        assert vastai_sandbox.alive_instance_ids() == {rental.instance_id}
    await rental.terminate()


@needs_unshare
async def test_a_dead_pid1_owner_is_reaped_through_its_lock_and_spared_without_it(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, tmp_path: Path
) -> None:
    offers = pick_offers(await vastai_service.search_offers(), 1)
    vastai_sandbox.set_boot_latency(offers[0].id, 5.0)
    shared = tmp_path / "shared-state"
    child = await _in_new_pid_namespace(vastai_sandbox, shared, str(offers[0].id))
    instance, owner = child["instance"], str(child["owner"])
    assert owner.split("-")[-2] == "1", owner  # <host>-<pidns>-<pid>-<rand>
    assert vastai_sandbox.alive_instance_ids() == {instance}

    # A reaper without the shared state directory cannot prove the death: spared, with how.
    elsewhere = VastAIService(config=_with_state(vastai_service, tmp_path / "other"))
    async with elsewhere:
        report = await elsewhere.reap()
    assert report.destroyed == ()
    (reason,) = [why for i, why in report.spared if i == instance]
    assert f"--owner {owner}" in reason
    assert vastai_sandbox.alive_instance_ids() == {instance}

    # The documented way: a reaper sharing the state directory takes the free lock.
    async with VastAIService(config=_with_state(vastai_service, shared)) as reaper:
        report = await reaper.reap()
    assert [i for i, _ in report.destroyed] == [instance]
    assert vastai_sandbox.alive_instance_ids() == set()
    assert all(
        (p := parse_label(i.get("label"))) is None or p.owner != owner
        for i in vastai_sandbox.instances()
    )


def _with_state(service: VastAIService, state_dir: Path) -> VastAIConfig:
    return attrs.evolve(service.config, state_dir=state_dir)
