"""``vastai-async sandbox`` serves standalone, records URL and key (0600), stops cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path

import aiohttp
import pytest

# Runs the command object directly: it works before and after the lead registers it on the group.
LAUNCH = "from vastai_async.cli.sandbox_cmd import sandbox_cmd; sandbox_cmd()"


async def wait_for_record(path: Path, proc: asyncio.subprocess.Process) -> dict[str, object]:
    async with asyncio.timeout(30):
        while True:
            try:
                text = await asyncio.to_thread(path.read_text)
                return json.loads(text)  # type: ignore[no-any-return]
            except (FileNotFoundError, ValueError):
                pass  # not written yet, or being replaced right now
            assert proc.returncode is None, "sandbox command exited early"
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_standalone_sandbox_serves_records_and_stops_on_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """The record names a working URL and key with mode 0600; a signal stops it and removes it."""
    state = tmp_path / "state"
    env = {**os.environ, "VASTAI_STATE_DIR": str(state)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LAUNCH, "--offers", "5", "--seed", "3", "--api-key", "standalone",
        "--no-ssh", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    record_path = state / "sandboxes" / "default.json"
    try:
        record = await wait_for_record(record_path, proc)
        assert stat.S_IMODE(record_path.stat().st_mode) == 0o600
        assert record["api_key"] == "standalone"
        assert record["pid"] == proc.pid
        headers = {"Authorization": "Bearer standalone"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{record['url']}/api/v0/users/current", headers=headers) as r,
        ):
            assert r.status == 200
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert f"Sandbox URL: {record['url']}" in text
    assert "standalone" in text
    assert not record_path.exists()
