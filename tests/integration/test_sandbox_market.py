"""Offer search on the sandbox over real HTTP: operators, coercion, order, limit, type, renting."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from vastai_async.sandbox import Sandbox
from vastai_async.sandbox.market import HOURS_PER_MONTH


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=3, offers=60, time_scale=0.01, rate_limits=False, ssh=False) as box:
        yield box


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def search(
    sb: Sandbox, http: aiohttp.ClientSession, query: dict[str, Any], status: int = 200
) -> Any:
    async with http.post(f"{sb.url}/api/v0/bundles/", json=query) as resp:
        assert resp.status == status, await resp.text()
        assert resp.headers["Content-Type"] == "application/json"
        return await resp.json()


async def everything(sb: Sandbox, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
    return (await search(sb, http, {}))["offers"]  # type: ignore[no-any-return]


async def test_market_has_realistic_fields_and_units(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """Full GPU names, RAM in MB, several offers per machine, prices consistent with storage."""
    offers = await everything(sb, http)
    names = {o["gpu_name"] for o in offers}
    assert {"RTX 4090", "RTX 3090"} <= names
    for o in offers:
        if o["gpu_name"] == "RTX 4090":
            assert o["gpu_ram"] == 24564
        assert o["gpu_total_ram"] == o["gpu_ram"] * o["num_gpus"]
        assert o["id"] == o["ask_contract_id"]
        assert "," in o["geolocation"]
        assert o["min_bid"] < o["dph_base"]
        storage = o["storage_cost"] * 8.0 / HOURS_PER_MONTH  # the spec's default: 8 GB
        assert o["dph_total"] == pytest.approx(o["dph_base"] + storage, abs=1e-6)
    per_machine: dict[int, int] = {}
    for o in offers:
        per_machine[o["machine_id"]] = per_machine.get(o["machine_id"], 0) + 1
    assert max(per_machine.values()) >= 3


@pytest.mark.parametrize(
    ("op", "value", "check"),
    [
        ("eq", "1", lambda v: v == 1),
        ("neq", "1", lambda v: v != 1),
        ("gt", "2", lambda v: v > 2),
        ("gte", "2", lambda v: v >= 2),
        ("lt", 2, lambda v: v < 2),
        ("lte", "2", lambda v: v <= 2),
        ("in", ["1", "4"], lambda v: v in (1, 4)),
        ("notin", [1, "4"], lambda v: v not in (1, 4)),
    ],
)
async def test_each_operator_on_num_gpus_with_string_numbers(
    sb: Sandbox, http: aiohttp.ClientSession, op: str, value: Any, check: Any
) -> None:
    """Every operator filters exactly; numbers sent as strings are coerced."""
    offers = await everything(sb, http)
    expected = {o["id"] for o in offers if check(o["num_gpus"])}
    got = {o["id"] for o in (await search(sb, http, {"num_gpus": {op: value}}))["offers"]}
    assert got == expected
    assert 0 < len(got) < len(offers)


async def test_several_ops_on_one_field_and_string_in_list(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """A range (gte + lt) and an ``in`` over full GPU names both apply."""
    offers = await everything(sb, http)
    query = {"dph_total": {"gte": "0.3", "lt": 1.5}, "gpu_name": {"in": ["RTX 4090", "L40S"]}}
    got = {o["id"] for o in (await search(sb, http, query))["offers"]}
    expected = {
        o["id"]
        for o in offers
        if 0.3 <= o["dph_total"] < 1.5 and o["gpu_name"] in ("RTX 4090", "L40S")
    }
    assert got == expected
    assert got


async def test_memory_filters_are_in_mb_and_a_24_gb_card_passes_24000(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """``gpu_ram >= 24000`` (24 GB as the CLI sends it) keeps 4090s (24564 MB)."""
    got = (await search(sb, http, {"gpu_ram": {"gte": 24000}}))["offers"]
    assert any(o["gpu_name"] == "RTX 4090" for o in got)
    assert all(o["gpu_ram"] >= 24000 for o in got)


async def test_boolean_filters_and_official_default_filters(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """The clients' default filters drop unverified offers; booleans may come as strings."""
    offers = await everything(sb, http)
    assert any(o["verification"] != "verified" for o in offers)
    defaults = {
        "verified": {"eq": True},
        "external": {"eq": False},
        "rentable": {"eq": "true"},
        "rented": {"eq": False},
    }
    got = (await search(sb, http, defaults))["offers"]
    assert {o["id"] for o in got} == {o["id"] for o in offers if o["verification"] == "verified"}


async def test_order_on_several_keys_and_limit(sb: Sandbox, http: aiohttp.ClientSession) -> None:
    """``order`` sorts by each key in turn (desc then asc); ``limit`` cuts the sorted list."""
    order = [["num_gpus", "desc"], ["dph_total", "asc"]]
    full = (await search(sb, http, {"order": order}))["offers"]
    keys = [(-o["num_gpus"], o["dph_total"]) for o in full]
    assert keys == sorted(keys)
    limited = (await search(sb, http, {"order": order, "limit": 5}))["offers"]
    assert [o["id"] for o in limited] == [o["id"] for o in full[:5]]


async def test_type_bid_prices_at_min_bid_and_storage_is_priced(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """``type: bid`` prices at ``min_bid``; ``allocated_storage`` enters ``dph_total``."""
    got = (await search(sb, http, {"type": "bid", "allocated_storage": 100}))["offers"]
    for o in got:
        storage = o["storage_cost"] * 100 / HOURS_PER_MONTH
        assert o["dph_total"] == pytest.approx(o["min_bid"] + storage, abs=1e-6)
        assert o["is_bid"] is True
    reserved = (await search(sb, http, {"type": "reserved", "allocated_storage": 0}))["offers"]
    assert all(o["dph_total"] < o["dph_base"] for o in reserved)


@pytest.mark.parametrize(
    "query",
    [
        {"no_such_field": {"eq": 1}},
        {"num_gpus": {"like": 1}},
        {"num_gpus": {"eq": "one"}},
        {"num_gpus": {"in": 1}},
        {"order": [["no_such_field", "asc"]]},
        {"type": "spot"},
    ],
)
async def test_unreadable_queries_answer_invalid_request(
    sb: Sandbox, http: aiohttp.ClientSession, query: dict[str, Any]
) -> None:
    """Unknown fields, operators, types and unreadable values are 400 ``invalid_request``."""
    body = await search(sb, http, query, status=400)
    assert body["success"] is False
    assert body["error"] == "invalid_request"


async def test_a_body_that_is_not_json_is_invalid_request(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """The spec's 400 for search: ``{"error": "invalid_request", "msg": "Invalid json body"}``."""
    headers = {"Authorization": f"Bearer {sb.api_key}", "Content-Type": "application/json"}
    async with http.post(f"{sb.url}/api/v0/bundles/", data=b"{nope", headers=headers) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert (body["error"], body["msg"]) == ("invalid_request", "Invalid json body")


@pytest.mark.parametrize("kind", ["on-demand", "ondemand"])
async def test_type_takes_the_spec_enum_and_the_clients_spelling(
    sb: Sandbox, http: aiohttp.ClientSession, kind: str
) -> None:
    """The spec's enum says ``ondemand``; its example and the official client ``on-demand``."""
    body = await search(sb, http, {"type": kind, "limit": 3})
    assert len(body["offers"]) == 3
    assert not any(o["is_bid"] for o in body["offers"])


async def test_gpu_names_match_with_underscores_as_the_spec_example(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """``{"gpu_name": {"in": ["RTX_4090"]}}`` finds the ``RTX 4090`` offers (spaces work too)."""
    spaced = await search(sb, http, {"gpu_name": {"in": ["RTX 4090"]}})
    under = await search(sb, http, {"gpu_name": {"in": ["RTX_4090", "RTX_3090"]}})
    eq = await search(sb, http, {"gpu_name": {"eq": "RTX_4090"}})
    assert spaced["offers"]
    assert {o["id"] for o in eq["offers"]} == {o["id"] for o in spaced["offers"]}
    assert {o["gpu_name"] for o in under["offers"]} == {"RTX 4090", "RTX 3090"}


async def test_geolocation_filters_by_country_code(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """The spec's ``{"geolocation": {"in": ["US", "CA"]}}`` matches ``"Texas, US"``."""
    body = await search(sb, http, {"geolocation": {"in": ["US", "CA"]}})
    assert body["offers"]
    assert all(o["geolocation"].rsplit(", ", 1)[1] in ("US", "CA") for o in body["offers"])
    everything_else = await search(sb, http, {"geolocation": {"notin": ["US", "CA"]}})
    total = await search(sb, http, {})
    assert len(body["offers"]) + len(everything_else["offers"]) == len(total["offers"])
    place = body["offers"][0]["geolocation"]
    exact = await search(sb, http, {"geolocation": {"eq": place}})
    assert {o["geolocation"] for o in exact["offers"]} == {place}


async def test_rented_offer_and_its_machine_leave_the_market(
    sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """After a create, no offer of that machine is listed and creating on them is no_such_ask."""
    offers = await everything(sb, http)
    by_machine: dict[int, list[int]] = {}
    for o in offers:
        by_machine.setdefault(o["machine_id"], []).append(o["id"])
    machine, ids = next((m, i) for m, i in by_machine.items() if len(i) >= 2)
    headers = {"Authorization": f"Bearer {sb.api_key}"}
    async with http.put(
        f"{sb.url}/api/v0/asks/{ids[0]}/", json={"image": "ubuntu"}, headers=headers
    ) as resp:
        assert resp.status == 200
    left = await search(sb, http, {"machine_id": {"eq": machine}})
    assert left["offers"] == []
    async with http.put(
        f"{sb.url}/api/v0/asks/{ids[1]}/",
        json={"image": "ubuntu", "cancel_unavail": False},
        headers=headers,
    ) as resp:
        body = await resp.json()
        assert resp.status == 404
        assert body["ask_id"] == ids[1]
        assert "no_such_ask" in body["msg"]


async def test_search_is_open_and_fast_on_a_thousand_machines() -> None:
    """Search needs no key; a 1,000-machine market starts and answers (times printed only)."""
    t0 = time.perf_counter()
    async with Sandbox(seed=1, offers=1000, rate_limits=False, ssh=False) as box:
        started = time.perf_counter() - t0
        async with aiohttp.ClientSession() as http:
            t1 = time.perf_counter()
            body = await search(box, http, {"num_gpus": {"eq": 1}, "order": [["score", "desc"]]})
            searched = time.perf_counter() - t1
    print(f"1,000 machines: start {started:.3f} s, search {searched:.3f} s")
    assert len(box.market.machines) == 1000
    assert body["offers"]
