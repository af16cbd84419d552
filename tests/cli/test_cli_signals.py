"""Ctrl-C / SIGTERM during ``provision``: the process exits 130 and nothing is left alive."""

from __future__ import annotations

import asyncio
import random
import signal

import pytest

from tests.cli._runner import finish, start_cli
from vastai_async.sandbox import HTTPFault, Sandbox


def _slow_boot(rng: random.Random) -> float:
    """Simulated boot seconds: so long (about 200 wall s) that the race is surely waiting."""
    return 10_000.0


pytestmark = pytest.mark.vastai_sandbox(
    offers=30, time_scale=0.02, seed=5, boot_distribution=_slow_boot
)


async def _wait_for_instances(
    sandbox: Sandbox, count: int, proc: asyncio.subprocess.Process
) -> None:
    async with asyncio.timeout(30):
        while len(sandbox.alive_instance_ids()) < count:
            assert proc.returncode is None, "provision ended before the race started"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_during_provision_destroys_every_candidate_and_exits_130(
    vastai_sandbox: Sandbox, sig: signal.Signals
) -> None:
    proc = await start_cli(
        "provision", "--job-id", "interrupted", "--fan-out", "3", sandbox=vastai_sandbox
    )
    await _wait_for_instances(vastai_sandbox, 3, proc)
    created = vastai_sandbox.alive_instance_ids()
    proc.send_signal(sig)
    result = await finish(proc, within_s=30)
    assert result.code == 130, result.err
    assert "cancelling: tearing down what was created" in result.err
    assert "interrupted: teardown finished" in result.err
    assert "Traceback" not in result.err
    assert result.out == ""
    assert vastai_sandbox.alive_instance_ids() == set()
    destroyed = {e["instance_id"] for e in vastai_sandbox.ledger() if not e["alive"]}
    assert created <= destroyed


async def test_a_second_ctrl_c_says_teardown_is_still_running(vastai_sandbox: Sandbox) -> None:
    """A Ctrl-C during teardown is acknowledged; teardown still completes; exit 130."""
    # Slow destroys (wall time, within the scaled request timeout) keep teardown in progress.
    vastai_sandbox.add_fault(
        HTTPFault(kind="slow", route="DELETE /api/v0/instances/{id}/", delay_s=0.4, times=None)
    )
    proc = await start_cli(
        "provision", "--job-id", "twice", "--fan-out", "2", sandbox=vastai_sandbox
    )
    await _wait_for_instances(vastai_sandbox, 2, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    async with asyncio.timeout(10):
        while b"cancelling:" not in await proc.stderr.readline():
            pass
    proc.send_signal(signal.SIGINT)
    result = await finish(proc, within_s=30)
    assert result.code == 130, result.err
    assert "teardown is still running" in result.err
    assert "interrupted: teardown finished" in result.err
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_a_third_ctrl_c_quits_at_once_naming_the_instances_left(
    vastai_sandbox: Sandbox,
) -> None:
    """The user insists: exit now, and name what ``reap`` will have to find."""
    vastai_sandbox.add_fault(
        HTTPFault(kind="slow", route="DELETE /api/v0/instances/{id}/", delay_s=0.5, times=None)
    )
    proc = await start_cli(
        "provision", "--job-id", "thrice", "--fan-out", "2", sandbox=vastai_sandbox
    )
    await _wait_for_instances(vastai_sandbox, 2, proc)
    created = vastai_sandbox.alive_instance_ids()
    assert proc.stderr is not None
    for expected in (b"cancelling:", b"teardown is still running"):
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            while expected not in await proc.stderr.readline():
                pass
    proc.send_signal(signal.SIGINT)
    result = await finish(proc, within_s=10)
    assert result.code == 130
    (last,) = [line for line in result.err.splitlines() if line.startswith("quitting now")]
    named = {int(i) for i in last.split("left: ")[1].split(" (")[0].split(", ")}
    assert named == created
    assert "vastai-async reap" in last
