"""Fault injection and rate limits on the sandbox, each observed through real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from vastai_async import pacing
from vastai_async.sandbox import DEFAULT_THRESHOLDS, HTTPFault, LifecycleFault, Sandbox
from vastai_async.sandbox.lifecycle import OCI_ERROR

SCALE = 0.01
CREATE = "PUT /api/v0/asks/{id}/"


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=21, offers=20, time_scale=SCALE, rate_limits=False, ssh=False) as box:
        yield box


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def auth(sb: Sandbox) -> dict[str, str]:
    return {"Authorization": f"Bearer {sb.api_key}"}


async def offer_ids(sb: Sandbox, http: aiohttp.ClientSession, n: int) -> list[int]:
    async with http.post(f"{sb.url}/api/v0/bundles/", json={"order": [["id", "asc"]]}) as resp:
        offers = (await resp.json())["offers"]
    seen: dict[int, int] = {}
    for o in offers:
        seen.setdefault(o["machine_id"], o["id"])
    return list(seen.values())[:n]


async def create(sb: Sandbox, http: aiohttp.ClientSession, offer: int, **body: Any) -> Any:
    url = f"{sb.url}/api/v0/asks/{offer}/"
    async with http.put(url, json={"image": "u", **body}, headers=auth(sb)) as resp:
        return resp.status, await resp.json()


def test_rate_table_matches_the_sdk_pacing_table() -> None:
    """One reading of the units: the SDK's min interval is 1 / the sandbox's threshold."""
    assert set(DEFAULT_THRESHOLDS) == set(pacing.DEFAULT_MIN_INTERVALS)
    for route, threshold in DEFAULT_THRESHOLDS.items():
        assert pacing.DEFAULT_MIN_INTERVALS[route] == pytest.approx(1 / threshold), route


async def test_rate_limit_per_route_per_identity_with_real_bodies(
    http: aiohttp.ClientSession,
) -> None:
    """Too soon on one route is 429 (real body); other routes and a paced client are fine."""
    async with Sandbox(seed=4, offers=5, time_scale=0.2, ssh=False) as box:
        url = f"{box.url}/api/v0/users/current"  # 1 request/s -> 0.2 wall s at this scale
        async with http.get(url, headers=auth(box)) as resp:
            assert resp.status == 200
        bodies = set()
        for _ in range(6):
            async with http.get(url, headers=auth(box)) as resp:
                assert resp.status == 429
                bodies.add((resp.headers["Content-Type"], await resp.text()))
        assert ("text/plain", "API requests too frequent endpoint threshold=1.0") in bodies
        assert any(
            json.loads(b).get("error") == "rate_limit_exceeded" for t, b in bodies if "json" in t
        )
        async with http.get(f"{box.url}/api/v0/instances/1/", headers=auth(box)) as resp:
            assert resp.status == 200  # another route has its own window
        await asyncio.sleep(box.limiter.min_interval_s("GET /api/v0/users/current") * 0.2 * 0.95)
        async with http.get(url, headers=auth(box)) as resp:
            assert resp.status == 200  # within the 10% tolerance of the interval


@pytest.mark.parametrize("nth", [1, 2])
async def test_status_fault_fires_on_the_nth_request_only(
    sb: Sandbox, http: aiohttp.ClientSession, nth: int
) -> None:
    """A 500 on the Nth show call; the calls around it succeed."""
    fault = sb.add_fault(HTTPFault(kind="status", route="GET /api/v0/instances/{id}/", nth=nth))
    statuses = []
    for _ in range(3):
        async with http.get(f"{sb.url}/api/v0/instances/1/", headers=auth(sb)) as resp:
            statuses.append(resp.status)
            assert resp.headers["Content-Type"] == "application/json"
    expected = [200, 200, 200]
    expected[nth - 1] = 500
    assert statuses == expected
    assert fault.fired == 1


async def test_destroy_failing_transiently(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    """Two 503s on destroy, then it works; the instance lives until then."""
    (offer,) = await offer_ids(sb, http, 1)
    _, body = await create(sb, http, offer)
    iid = body["new_contract"]
    sb.add_fault(
        HTTPFault(kind="status", route="DELETE /api/v0/instances/{id}/", status=503, times=2)
    )
    url = f"{sb.url}/api/v0/instances/{iid}/"
    for expected in (503, 503, 200):
        async with http.delete(url, json={}, headers=auth(sb)) as resp:
            assert resp.status == expected
        assert (iid in sb.alive_instance_ids()) is (expected != 200)


async def test_html_and_malformed_answers(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    """An HTML 502 page, then a 200 whose JSON is cut short."""
    sb.add_fault(HTTPFault(kind="html", route="GET /api/v1/instances/"))
    sb.add_fault(HTTPFault(kind="malformed", route="GET /api/v1/instances/", nth=2))
    async with http.get(f"{sb.url}/api/v1/instances/", headers=auth(sb)) as resp:
        assert resp.status == 502
        assert resp.headers["Content-Type"] == "text/html"
        assert "<html>" in await resp.text()
    async with http.get(f"{sb.url}/api/v1/instances/", headers=auth(sb)) as resp:
        assert resp.status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(await resp.text())


async def test_connection_reset_sends_nothing(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    """A reset fault drops the connection before any answer (POST: aiohttp does not retry)."""
    sb.add_fault(HTTPFault(kind="reset", route="POST /api/v0/bundles/"))
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.post(f"{sb.url}/api/v0/bundles/", json={}) as resp:
            await resp.read()
    assert [r.status for r in sb.requests] == [None]


async def test_lost_create_answer_still_rents(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    """The instance is made but the answer is lost; the offer is then gone even to its renter.

    aiohttp 3.14 resends an idempotent method (PUT included) once after a dropped connection,
    so a plain client sees the resend's 404 no_such_ask although its first create rented the
    machine: only a label lookup finds the instance.
    """
    (offer,) = await offer_ids(sb, http, 1)
    sb.add_fault(HTTPFault(kind="lost_answer", route=CREATE))
    status, body = await create(sb, http, offer, label="lost-1", cancel_unavail=False)
    assert status == 404
    assert "no_such_ask" in body["msg"]
    assert [r.status for r in sb.requests if r.route == CREATE] == [None, 404]
    (row,) = sb.instances()
    assert row["label"] == "lost-1"


async def test_lost_answer_twice_raises_a_connection_error(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """With the resend dropped too, the client gets a connection error; one instance exists."""
    (offer,) = await offer_ids(sb, http, 1)
    sb.add_fault(HTTPFault(kind="lost_answer", route=CREATE, times=2))
    with pytest.raises(aiohttp.ClientConnectionError):
        await create(sb, http, offer, label="lost-2")
    assert len(sb.alive_instance_ids()) == 1


async def test_late_answer_lists_the_instance_before_its_create_answers(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """``late_answer``: carried out at once, answered later; a listing meanwhile shows it."""
    (offer,) = await offer_ids(sb, http, 1)
    sb.add_fault(HTTPFault(kind="late_answer", route=CREATE, delay_s=30.0))
    pending = asyncio.ensure_future(create(sb, http, offer, label="late-1"))
    async with asyncio.timeout(10):
        # The sandbox offers no hook for "handler done, answer held"; its state is polled.
        while not sb.instances():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert not pending.done()
    (row,) = sb.instances()
    assert row["label"] == "late-1"
    pending.cancel()  # the test does not wait out the delay
    with pytest.raises(asyncio.CancelledError):
        await pending


async def test_offer_taken_between_search_and_create(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """The create meets an offer someone else just rented: 404 no_such_ask, and it stays gone."""
    a, b = await offer_ids(sb, http, 2)
    sb.add_fault(HTTPFault(kind="taken", route=CREATE))
    status, body = await create(sb, http, a, cancel_unavail=False)
    assert status == 404
    assert "no_such_ask" in body["msg"]
    assert body["ask_id"] == a
    sb.take_offer(b)
    status, body = await create(sb, http, b, cancel_unavail=False)
    assert status == 404
    assert sb.alive_instance_ids() == set()


async def test_search_quota_has_a_reset_header(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    """429 search_quota_exceeded carries X-RateLimit-Reset in epoch seconds, in the future."""
    sb.add_fault(HTTPFault(kind="search_quota", route="POST /api/v0/bundles/", reset_in_s=600))
    async with http.post(f"{sb.url}/api/v0/bundles/", json={}) as resp:
        assert resp.status == 429
        assert (await resp.json())["error"] == "search_quota_exceeded"
        reset = int(resp.headers["X-RateLimit-Reset"])
    assert time.time() < reset <= time.time() + 600 * SCALE + 2


async def test_slow_answer_trips_a_client_timeout(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    """A slow fault delays the answer by real seconds (network time is not scaled)."""
    sb.add_fault(HTTPFault(kind="slow", route="GET /api/v0/users/current", delay_s=0.5))
    with pytest.raises(TimeoutError):
        async with http.get(
            f"{sb.url}/api/v0/users/current",
            headers=auth(sb),
            timeout=aiohttp.ClientTimeout(total=0.1),
        ) as resp:
            await resp.read()


async def test_probability_faults_are_seeded() -> None:
    """The same seed fires a probabilistic fault on the same requests."""
    fired = []
    for _ in range(2):
        async with Sandbox(seed=9, offers=3, ssh=False, rate_limits=False) as box:
            box.add_fault(HTTPFault(kind="status", times=None, probability=0.5))
            async with aiohttp.ClientSession() as http:
                got = []
                for _ in range(12):
                    async with http.post(f"{box.url}/api/v0/bundles/", json={}) as resp:
                        got.append(resp.status)
            fired.append(got)
    assert fired[0] == fired[1]
    assert 500 in fired[0]
    assert 200 in fired[0]


@pytest.mark.parametrize(
    ("fault", "bid", "status", "msg"),
    [
        (LifecycleFault(oci_error=True), False, "exited", OCI_ERROR),
        (LifecycleFault(offline_after_s=5), False, "offline", None),
        (LifecycleFault(outbid_after_s=5), True, "stopped", None),
    ],
)
async def test_lifecycle_faults(
    sb: Sandbox,
    http: aiohttp.ClientSession,
    fault: LifecycleFault,
    bid: bool,
    status: str,
    msg: str | None,
) -> None:
    """OCI error -> exited with the OCI message; offline; an interruptible outbid -> stopped."""
    (offer,) = await offer_ids(sb, http, 1)
    sb.set_boot_latency(offer, 10.0)
    sb.set_lifecycle_fault(offer, fault)
    price = {"price": 10.0} if bid else {}
    _, body = await create(sb, http, offer, **price)
    await sb.wait_status(body["new_contract"], status, within_s=5)
    (row,) = sb.instances()
    if msg is not None:
        assert row["status_msg"] == msg
        assert "OCI runtime create failed" in row["status_msg"]
    if status == "stopped":  # the outbid signature (docs/wire-notes.md)
        assert row["is_bid"] is True
        assert row["intended_status"] == "running"
        assert row["cur_state"] == row["next_state"] == "stopped"
    assert row["ports"] is None


async def test_stuck_in_loading_forever_and_fault_times(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """A stuck instance stays loading long past its boot latency; ``times=1`` hits one rental."""
    (offer,) = await offer_ids(sb, http, 1)
    sb.set_boot_latency(offer, 10.0)
    sb.set_lifecycle_fault(offer, LifecycleFault(stuck_loading=True, times=1))
    _, body = await create(sb, http, offer)
    iid = body["new_contract"]
    await sb.wait_status(iid, "loading", within_s=5)
    await asyncio.sleep(50 * SCALE)  # five boot latencies
    assert sb.instance(iid).actual_status == "loading"
    async with http.delete(f"{sb.url}/api/v0/instances/{iid}/", json={}, headers=auth(sb)) as r:
        assert r.status == 200
    _, body = await create(sb, http, offer)
    await sb.wait_status(body["new_contract"], "running", within_s=5)


async def test_fault_aimed_at_one_offer_spares_the_others(http: aiohttp.ClientSession) -> None:
    """A constructor fault with ``target`` hits creates on that offer only."""
    async with Sandbox(seed=21, offers=20, ssh=False, rate_limits=False) as probe:
        a, b = await offer_ids(probe, http, 2)
    fault = HTTPFault(kind="status", route=CREATE, target=a, status=502, times=None)
    async with Sandbox(seed=21, offers=20, ssh=False, rate_limits=False, faults=[fault]) as box:
        assert (await create(box, http, b))[0] == 200
        async with http.put(
            f"{box.url}/api/v0/asks/{a}/", json={"image": "u"}, headers=auth(box)
        ) as resp:
            assert resp.status == 502
    assert fault.fired == 1
