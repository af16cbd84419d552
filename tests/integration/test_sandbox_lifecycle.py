"""Instance lifecycle and billing on the sandbox's scaled clock, observed over real HTTP."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from vastai_async.sandbox import Sandbox, SSHFaults
from vastai_async.sandbox.lifecycle import BootModel, default_boot_distribution
from vastai_async.sandbox.market import HOURS_PER_MONTH
from vastai_async.sandbox.sshd import InstanceSSHServer

SCALE = 0.01  # 100 simulated seconds = 1 wall second
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx0cGV4YW1wbGVrZXlmb3J0ZXN0c29ubHkxMjM0NTY3 t@x"


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=11, offers=20, time_scale=SCALE, rate_limits=False, ssh=False) as box:
        yield box


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(sb: Sandbox, http: aiohttp.ClientSession, method: str, path: str, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {sb.api_key}"}
    async with http.request(method, sb.url + path, headers=headers, **kw) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def first_offer(sb: Sandbox, http: aiohttp.ClientSession) -> dict[str, Any]:
    body = await call(sb, http, "POST", "/api/v0/bundles/", json={"order": [["id", "asc"]]})
    return body["offers"][0]  # type: ignore[no-any-return]


async def show(sb: Sandbox, http: aiohttp.ClientSession, iid: int) -> Any:
    return (await call(sb, http, "GET", f"/api/v0/instances/{iid}/"))["instances"]


async def poll_until(
    sb: Sandbox, http: aiohttp.ClientSession, iid: int, status: str, seen: list[Any]
) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            row = await show(sb, http, iid)
            seen.append(row["actual_status"])
            if row["actual_status"] == status:
                return row  # type: ignore[no-any-return]
            await asyncio.sleep(2 * SCALE)


def test_boot_latencies_are_seeded_and_heavy_tailed() -> None:
    """Same seed, same latencies; mostly 30-120 s with a tail past 10 minutes."""
    a = [BootModel(seed=1).typical(m) for m in range(2000)]
    b = [BootModel(seed=1).typical(m) for m in range(2000)]
    assert a == b
    mostly = sum(30 <= x <= 120 for x in a) / len(a)
    assert mostly > 0.8
    assert 0 < sum(x >= 600 for x in a) / len(a) < 0.1
    assert default_boot_distribution(random.Random(3)) > 0


async def test_create_loading_running_destroy_and_offer_back(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """created (null) -> loading -> running with ports; destroy frees the offer again."""
    offer = await first_offer(sb, http)
    sb.set_boot_latency(offer["id"], 60.0)
    created = await call(sb, http, "PUT", f"/api/v0/asks/{offer['id']}/", json={"image": "u"})
    iid = created["new_contract"]
    row = await show(sb, http, iid)
    assert row["actual_status"] is None
    assert row["ports"] is None
    assert row["ssh_host"] == "127.0.0.1"
    assert isinstance(row["ssh_port"], int)
    seen: list[Any] = []
    row = await poll_until(sb, http, iid, "running", seen)
    assert "loading" in seen
    host_port = row["ports"]["22/tcp"][0]["HostPort"]
    assert isinstance(host_port, str)
    assert int(host_port) > 0
    assert row["ports"]["22/tcp"][0]["HostIp"] == "0.0.0.0"
    assert row["public_ipaddr"] == "127.0.0.1"
    assert row["start_date"] > 0
    search = {"id": {"eq": offer["id"]}}
    assert (await call(sb, http, "POST", "/api/v0/bundles/", json=search))["offers"] == []
    await call(sb, http, "DELETE", f"/api/v0/instances/{iid}/", json={})
    assert await show(sb, http, iid) is None
    back = (await call(sb, http, "POST", "/api/v0/bundles/", json=search))["offers"]
    assert [o["id"] for o in back] == [offer["id"]]
    assert sb.leak_report() == []


async def test_boot_latency_is_exact_on_the_scaled_clock(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """An instance set to boot in 50 simulated s reaches running after 50 x time_scale wall s."""
    offer = await first_offer(sb, http)
    sb.set_boot_latency(offer["machine_id"], 50.0)
    t0 = sb.clock.now()
    iid = (await call(sb, http, "PUT", f"/api/v0/asks/{offer['id']}/", json={"image": "u"}))[
        "new_contract"
    ]
    await sb.wait_status(iid, "running", within_s=5)
    elapsed = sb.clock.now() - t0
    # Never early; late by at most 0.5 s of loop lag (a saturated machine's, not a speed bound).
    assert 50.0 <= elapsed < 50.0 + 0.5 / SCALE


async def test_stop_start_reboot(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    """stopped everywhere on stop; start and reboot bring it back to running."""
    offer = await first_offer(sb, http)
    sb.set_boot_latency(offer["id"], 20.0)
    iid = (await call(sb, http, "PUT", f"/api/v0/asks/{offer['id']}/", json={"image": "u"}))[
        "new_contract"
    ]
    await sb.wait_status(iid, "running", within_s=5)
    await call(sb, http, "PUT", f"/api/v0/instances/{iid}/", json={"state": "stopped"})
    row = await show(sb, http, iid)
    assert (row["actual_status"], row["intended_status"], row["cur_state"]) == ("stopped",) * 3
    assert row["ports"] is None
    await call(sb, http, "PUT", f"/api/v0/instances/{iid}/", json={"state": "running"})
    await poll_until(sb, http, iid, "running", [])
    await call(sb, http, "PUT", f"/api/v0/instances/reboot/{iid}/", json={})
    assert (await show(sb, http, iid))["actual_status"] == "rebooting"
    await poll_until(sb, http, iid, "running", [])


async def test_bid_change_below_the_floor_outbids_to_stopped(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """An interruptible instance bidding under min_bid is outbid (the SDK's signature: still
    wanted running, contract stopped) and cannot start."""
    offer = await first_offer(sb, http)
    sb.set_boot_latency(offer["id"], 10.0)
    body = {"image": "u", "price": offer["min_bid"] * 1.5}
    iid = (await call(sb, http, "PUT", f"/api/v0/asks/{offer['id']}/", json=body))["new_contract"]
    await sb.wait_status(iid, "running", within_s=5)
    row = await show(sb, http, iid)
    assert row["is_bid"] is True
    await call(
        sb,
        http,
        "PUT",
        f"/api/v0/instances/bid_price/{iid}/",
        json={"client_id": "me", "price": offer["min_bid"] / 2},
    )
    row = await show(sb, http, iid)
    states = [row[k] for k in ("actual_status", "intended_status", "cur_state", "next_state")]
    assert states == ["stopped", "running", "stopped", "stopped"]
    answer = await call(sb, http, "PUT", f"/api/v0/instances/{iid}/", json={"state": "running"})
    assert answer["success"] is False
    assert answer["error"] == "resources_unavailable"


async def test_ledger_for_a_known_timeline(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    """Storage billed from creation, GPU only while running, balance down by the total."""
    offer = await first_offer(sb, http)
    boot = 100.0
    sb.set_boot_latency(offer["id"], boot)
    body = {"image": "u", "disk": 40}
    iid = (await call(sb, http, "PUT", f"/api/v0/asks/{offer['id']}/", json=body))["new_contract"]
    await sb.wait_status(iid, "running", within_s=5)
    await asyncio.sleep(150 * SCALE)
    await call(sb, http, "DELETE", f"/api/v0/instances/{iid}/", json={})
    (entry,) = sb.ledger()
    # Loop lag between the boot's end and billing's start, in simulated seconds: up to 0.5 s of
    # wall time on a saturated machine (the assertion is about the phases, not the speed).
    tolerance_s = 0.5 / SCALE
    assert not entry["alive"]
    assert entry["running_s"] == pytest.approx(entry["lifetime_s"] - boot, abs=tolerance_s)
    assert entry["running_s"] >= 150
    storage_dph = offer["storage_cost"] * 40 / HOURS_PER_MONTH
    assert entry["storage_usd"] == pytest.approx(storage_dph * entry["lifetime_s"] / 3600)
    assert entry["gpu_usd"] == pytest.approx(offer["dph_base"] * entry["running_s"] / 3600)
    user = await call(sb, http, "GET", "/api/v0/users/current")
    assert user["balance"] == pytest.approx(1000.0 - entry["total_usd"], abs=1e-6)
    await asyncio.sleep(20 * SCALE)
    assert sb.ledger()[0]["total_usd"] == entry["total_usd"]  # billing stopped


async def test_leak_report_lists_live_instances_and_their_rate(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """A created, never destroyed instance is a leak billing storage (and GPU once running)."""
    offer = await first_offer(sb, http)
    sb.set_boot_latency(offer["id"], 10.0)
    iid = (await call(sb, http, "PUT", f"/api/v0/asks/{offer['id']}/", json={"image": "u"}))[
        "new_contract"
    ]
    (leak,) = sb.leak_report()
    assert leak["instance_id"] == iid
    assert not leak["running"]
    await sb.wait_status(iid, "running", within_s=5)
    (leak,) = sb.leak_report()
    assert leak["running"]
    assert leak["dph_now"] > offer["dph_base"]
    assert sb.alive_instance_ids() == {iid}


async def test_real_ssh_server_is_bound_at_create_and_released_on_destroy(
    http: aiohttp.ClientSession,
) -> None:
    """With SSH on, the proxy port accepts TCP from creation and is closed after destroy."""
    async with Sandbox(seed=2, offers=5, time_scale=SCALE, rate_limits=False) as box:
        offer = await first_offer(box, http)
        box.set_boot_latency(offer["id"], 10.0)
        iid = (await call(box, http, "PUT", f"/api/v0/asks/{offer['id']}/", json={"image": "u"}))[
            "new_contract"
        ]
        port = (await show(box, http, iid))["ssh_port"]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await box.wait_status(iid, "running", within_s=5)
        row = await show(box, http, iid)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", int(row["ports"]["22/tcp"][0]["HostPort"])
        )
        assert (await reader.readline()).startswith(b"SSH-2.0-")
        writer.close()
        await call(box, http, "DELETE", f"/api/v0/instances/{iid}/", json={})
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)


async def test_ssh_faults_per_offer_reach_the_instance_server(http: aiohttp.ClientSession) -> None:
    """``set_ssh_faults`` applies to the rental's real server: ``refuse`` closes without banner."""
    async with Sandbox(seed=2, offers=5, time_scale=SCALE, rate_limits=False) as box:
        offer = await first_offer(box, http)
        box.set_boot_latency(offer["id"], 10.0)
        box.set_ssh_faults(offer["machine_id"], SSHFaults(refuse=True))
        iid = (await call(box, http, "PUT", f"/api/v0/asks/{offer['id']}/", json={"image": "u"}))[
            "new_contract"
        ]
        await box.wait_status(iid, "running", within_s=5)
        await call(box, http, "POST", "/api/v0/ssh/", json={"ssh_key": PUBKEY})
        row = await show(box, http, iid)
        reader, writer = await asyncio.open_connection("127.0.0.1", row["ssh_port"])
        assert await reader.read() == b""  # closed at once, no SSH banner
        writer.close()
        assert box.ready_at(iid) is None
        server = box.ssh_server(iid)
        assert isinstance(server, InstanceSSHServer)
        server.faults.refuse = False
        ready = box.ready_at(iid)
        assert ready is not None
        assert ready > row["start_date"]
