"""The official ``vastai`` CLI, in its own virtual environment, works against the sandbox.

The package pins old dependencies, so it never enters our dev environment: it is installed once
into a cached folder under the system temp dir (reused when present) and driven by subprocess.
The test is skipped, with the reason, only when that install fails (no package index).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from vastai_async.sandbox import Sandbox

VENV = Path(tempfile.gettempdir()) / "vastai-official-venv"
VASTAI = VENV / "bin" / "vastai"


@pytest.fixture(scope="session")
def official_cli() -> Path:
    """Path of the official ``vastai`` executable, installing it on first use."""
    lock_path = Path(tempfile.gettempdir()) / "vastai-official-venv.lock"
    with open(lock_path, "w") as lock:
        # Two test processes may get here at once; one builds, the other waits and reuses.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not VASTAI.exists():
            steps = [
                [sys.executable, "-m", "venv", "--clear", str(VENV)],
                [str(VENV / "bin" / "pip"), "install", "--quiet", "vastai"],
            ]
            for step in steps:
                # Fixed argv: our interpreter and the venv's pip, no user input.
                done = subprocess.run(step, capture_output=True, text=True, timeout=900)  # noqa: S603
                if done.returncode != 0:
                    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                    pytest.skip(f"official vastai package cannot be installed: {' | '.join(tail)}")
    return VASTAI


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=8, offers=30, time_scale=0.02, ssh=False, api_key="cli-key") as box:
        yield box


async def vastai(sb: Sandbox, cli: Path, *args: str, home: Path) -> Any:
    """Run ``vastai --url ROOT --api-key KEY ARGS --raw``; returns parsed JSON stdout (or text)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),  # no real ~/.config/vastai key file is read
        "VASTAI_NO_UPDATE_CHECK": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        str(cli),
        "--url",
        sb.url,
        "--api-key",
        sb.api_key,
        *args,
        "--raw",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    text = out.decode()
    assert proc.returncode == 0, f"vastai {args}: {err.decode()[-2000:]}"
    assert "invalid return Content-Type" not in text
    try:
        return json.loads(text)
    except ValueError:
        return text


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_official_cli_round_trip(sb: Sandbox, official_cli: Path, tmp_path: Path) -> None:
    """search (query string) -> create (--env --onstart-cmd --ssh --direct) -> show -> label ->
    show user -> destroy, all answered as the real service would."""
    cli = official_cli
    offers = await vastai(
        sb, cli, "search", "offers", "num_gpus=1 gpu_ram>=8 reliability>0.9", "-o", "dph_total",
        "--limit", "3", home=tmp_path,
    )  # fmt: skip
    assert 0 < len(offers) <= 3
    assert all(o["num_gpus"] == 1 and o["gpu_ram"] >= 8000 for o in offers)
    assert [o["dph_total"] for o in offers] == sorted(o["dph_total"] for o in offers)
    search = next(r for r in sb.requests if r.route == "POST /api/v0/bundles/").json()
    assert search["num_gpus"] == {"eq": "1"}
    assert search["verified"] == {"eq": True}

    offer_id = offers[0]["id"]
    sb.set_boot_latency(offer_id, 30.0)
    created = await vastai(
        sb, cli, "create", "instance", str(offer_id), "--image", "ubuntu:22.04", "--disk", "8",
        "--env", "-e FOO=bar -p 8080:8080", "--onstart-cmd", "echo hi", "--ssh", "--direct",
        "--label", "cli-test", home=tmp_path,
    )  # fmt: skip
    assert created["success"] is True
    iid = int(created["new_contract"])
    body = next(r for r in sb.requests if r.route == "PUT /api/v0/asks/{id}/").json()
    assert body["runtype"] == "ssh_direc ssh_proxy"
    assert body["env"] == {"FOO": "bar", "-p 8080:8080": "1"}
    assert body["onstart"] == "echo hi"
    await sb.wait_status(iid, "running", within_s=10)

    listed = await vastai(sb, cli, "show", "instances", home=tmp_path)
    assert [row["id"] for row in listed] == [iid]
    assert listed[0]["extra_env"] == {"FOO": "bar", "-p 8080:8080": "1"}
    one = await vastai(sb, cli, "show", "instance", str(iid), home=tmp_path)
    assert one["id"] == iid
    assert one["label"] == "cli-test"
    assert one["ports"]["22/tcp"][0]["HostPort"].isdigit()

    await vastai(sb, cli, "label", "instance", str(iid), "renamed", home=tmp_path)
    assert sb.instance(iid).label == "renamed"

    user = await vastai(sb, cli, "show", "user", home=tmp_path)
    assert 0 < user["balance"] < 1000.0

    await vastai(sb, cli, "destroy", "instance", str(iid), "-y", home=tmp_path)
    assert sb.alive_instance_ids() == set()
    assert sb.leak_report() == []
