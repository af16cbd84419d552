"""Contract tests: the client's requests and the sandbox's answers fit the spec's schemas.

Both sides are checked with ``jsonschema`` against ``schemas.OPERATIONS`` (written from the
published spec's facts): every request the client sends and every answer the sandbox gives
while :func:`exercise` calls every endpoint, plus the sandbox's documented error answers.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from jsonschema import Draft202012Validator

from tests.contract.exercise import CLIENT_ENDPOINTS, NOT_ENDPOINTS, PUBKEY, exercise
from tests.contract.schemas import OPERATIONS
from tests.contract.validate import request_problems, response_problems, route_of
from vastai_async.client import VastAIClient
from vastai_async.config import generate_ssh_keypair, get_vastai_config
from vastai_async.errors import APIStatusError
from vastai_async.sandbox import Sandbox
from vastai_async.session import Exchange


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(
        seed=13, offers=80, time_scale=0.01, rate_limits=False, ssh=False, api_key="k-contract"
    ) as box:
        yield box


@pytest.fixture
async def client(sb: Sandbox, tmp_path: Path) -> AsyncIterator[VastAIClient]:
    generate_ssh_keypair(tmp_path / "id_ed25519")
    config = get_vastai_config(
        api_key=sb.api_key,
        api_base_url=sb.url,
        ssh_key_path=tmp_path / "id_ed25519",
        state_dir=tmp_path,
    ).scaled(sb.time_scale)
    async with VastAIClient.from_config(config) as vast:
        yield vast


def test_every_schema_is_a_valid_json_schema() -> None:
    for route, op in OPERATIONS.items():
        for schema in (op["request"], op["query"], *op["responses"].values()):
            if schema is not None:
                Draft202012Validator.check_schema(schema)
        assert 200 in op["responses"], route


def test_every_client_endpoint_is_exercised_and_every_route_has_a_contract() -> None:
    """A new client endpoint fails here until the exercise calls it (and so checks it)."""
    public = {
        name
        for name, fn in inspect.getmembers(VastAIClient, inspect.iscoroutinefunction)
        if not name.startswith("_")
    }
    assert public - NOT_ENDPOINTS == CLIENT_ENDPOINTS
    import vastai_async.client as client_module

    templates = {
        value
        for name, value in vars(client_module).items()
        if name.startswith("_") and isinstance(value, str) and value.startswith("/api/")
    }
    contracted = {route.split(" ", 1)[1] for route in OPERATIONS}
    assert templates <= contracted, f"paths without a contract: {templates - contracted}"


async def test_client_requests_and_sandbox_answers_fit_their_contracts(
    client: VastAIClient, sb: Sandbox
) -> None:
    exchanges: list[Exchange] = []
    client.session.observers.append(exchanges.append)
    called = await exercise(client, sb)
    assert called == CLIENT_ENDPOINTS
    routes = {f"{e.method} {e.template}" for e in exchanges}
    assert routes == set(OPERATIONS), f"not exercised: {set(OPERATIONS) - routes}"
    problems: list[str] = []
    for e in exchanges:
        route = f"{e.method} {e.template}"
        problems += request_problems(route, e.params, e.body, method=e.method)
        problems += response_problems(route, e.status, e.response)
    assert not problems, "\n".join(problems)
    statuses = {(f"{e.method} {e.template}", e.status) for e in exchanges}
    # the documented "gone" answers were met and read as such
    assert ("DELETE /api/v0/instances/{id}/", 404) in statuses
    assert ("GET /api/v0/ssh/", 404) in statuses
    assert ("DELETE /api/v0/ssh/{id}/", 400) in statuses


#: (method, path, JSON body or raw bytes, expected status) provoking documented answers.
ERROR_CASES: list[tuple[str, str, Any, int]] = [
    ("POST", "/api/v0/bundles/", b"{not json", 400),
    ("POST", "/api/v0/bundles/", {"no_such_field": {"eq": 1}}, 400),
    ("PUT", "/api/v0/asks/17/", {"image": "u", "cancel_unavail": False}, 404),
    ("PUT", "/api/v0/asks/17/", {"image": "u"}, 410),
    ("PUT", "/api/v0/asks/{offer}/", {"image": "u", "price": 500.0}, 400),
    ("GET", "/api/v1/instances/?select_filters=" + quote('{"dph_total":{"gt":0}}'), None, 400),
    ("GET", "/api/v1/instances/?after_token=%21%21", None, 400),
    ("GET", "/api/v0/instances/5/", None, 200),
    ("DELETE", "/api/v0/instances/5/", {}, 404),
    ("DELETE", "/api/v0/instances/abc/", {}, 400),
    ("PUT", "/api/v0/instances/bid_price/5/", {"client_id": "me", "price": 1.0}, 404),
    ("PUT", "/api/v0/instances/bid_price/{iid}/", {"client_id": "me", "price": 0}, 400),
    ("PUT", "/api/v0/instances/reboot/5/", {}, 400),
    ("PUT", "/api/v0/instances/request_logs/5/", {}, 404),
    ("POST", "/api/v0/instances/5/ssh/", {"ssh_key": PUBKEY}, 404),
    ("GET", "/api/v0/ssh/", None, 404),
    ("POST", "/api/v0/ssh/", {}, 400),
    ("DELETE", "/api/v0/ssh/5/", {}, 400),
]  # fmt: skip


async def test_sandbox_error_answers_fit_their_contracts(sb: Sandbox) -> None:
    headers = {"Authorization": f"Bearer {sb.api_key}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(f"{sb.url}/api/v0/bundles/", json={"limit": 40}) as resp:
            offers = (await resp.json())["offers"]
        rented = offers[0]
        offer = next(o for o in offers if o["machine_id"] != rented["machine_id"])
        body = {"image": "u", "price": rented["min_bid"] * 2}
        async with http.put(f"{sb.url}/api/v0/asks/{rented['id']}/", json=body) as resp:
            iid = (await resp.json())["new_contract"]
        problems: list[str] = []
        for method, path, payload, status in ERROR_CASES:
            url = sb.url + path.format(offer=offer["id"], iid=iid)
            kwargs: dict[str, Any] = (
                {"data": payload} if isinstance(payload, bytes) else {"json": payload}
            )
            async with http.request(method, url, **kwargs) as resp:
                raw = await resp.read()
                assert resp.status == status, (method, path, raw)
            route = _route(method, path)
            problems += response_problems(route, status, raw)
        async with http.get(f"{sb.url}/api/v0/users/current", headers={"Authorization": "x"}) as r:
            problems += response_problems("GET /api/v0/users/current", r.status, await r.read())
    assert not problems, "\n".join(problems)


def _route(method: str, path: str) -> str:
    route = route_of(method, path)
    assert route is not None, f"no contract for {method} {path}"
    return route


def test_a_request_off_its_contract_is_reported() -> None:
    """The checker is not blind: a label over 1024 characters and an empty body both fail."""
    route = "PUT /api/v0/instances/{id}/"
    assert request_problems(route, None, {"label": "x" * 1025}, method="PUT")
    assert request_problems(route, None, {}, method="PUT")
    assert request_problems(
        "PUT /api/v0/asks/{id}/", None, {"image": "u", "price": 0}, method="PUT"
    )
    assert not request_problems(route, None, {"state": "stopped"}, method="PUT")


@pytest.mark.contract_violation_expected
async def test_the_suite_wide_hook_catches_a_client_request_off_contract(
    client: VastAIClient, contract_requests: list[str]
) -> None:
    """Every client session in the suite is hooked: a bad body sent through it is recorded."""
    with pytest.raises(APIStatusError):
        await client.session.request(
            "PUT", "/api/v0/instances/{id}/", path_params={"id": 5}, json={"nope": 1}
        )
    assert any("PUT /api/v0/instances/{id}/ body" in p for p in contract_requests)
    assert json.dumps(contract_requests)  # plain strings, printable in a failure
