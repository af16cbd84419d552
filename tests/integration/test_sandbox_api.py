"""The sandbox's REST surface over real HTTP: auth, wire manners, errors, paging, keys, logs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from vastai_async.sandbox import Sandbox
from vastai_async.sandbox.views import INSTANCE_FIELDS

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx0cGV4YW1wbGVrZXlmb3J0ZXN0c29ubHkxMjM0NTY3 t@x"
OFFICIAL_CREATE_BODY: dict[str, Any] = {
    "client_id": "me",
    "image": "ubuntu:22.04",
    "env": {"FOO": "bar", "-p 8080:8080": "1"},
    "price": None,
    "disk": 12.0,
    "label": "job-1",
    "extra": None,
    "onstart": "echo hello",
    "image_login": None,
    "python_utf8": False,
    "lang_utf8": False,
    "use_jupyter_lab": False,
    "jupyter_dir": None,
    "force": False,
    "cancel_unavail": False,
    "template_hash_id": None,
    "user": None,
    "runtype": "ssh_direc ssh_proxy",
}


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(
        seed=5, offers=40, time_scale=0.01, rate_limits=False, ssh=False, api_key="k-test"
    ) as box:
        yield box


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Api:
    """Authenticated calls to a sandbox with plain aiohttp (not our SDK)."""

    def __init__(self, sb: Sandbox, http: aiohttp.ClientSession) -> None:
        self.sb, self.http = sb, http
        self.headers = {"Authorization": f"Bearer {sb.api_key}"}

    async def call(
        self, method: str, path: str, *, status: int = 200, **kw: Any
    ) -> tuple[Any, aiohttp.ClientResponse]:
        kw.setdefault("headers", self.headers)
        async with self.http.request(method, self.sb.url + path, **kw) as resp:
            text = await resp.text()
            assert resp.status == status, text
            assert resp.headers["Content-Type"] == "application/json"
            return json.loads(text), resp

    async def offers(self, n: int) -> list[int]:
        """Ids of n offers on distinct machines."""
        body, _ = await self.call("POST", "/api/v0/bundles/", json={"order": [["id", "asc"]]})
        seen: dict[int, int] = {}
        for o in body["offers"]:
            seen.setdefault(o["machine_id"], o["id"])
        return list(seen.values())[:n]

    async def create(self, offer_id: int, **extra: Any) -> int:
        body, _ = await self.call(
            "PUT", f"/api/v0/asks/{offer_id}/", json={"image": "ubuntu", **extra}
        )
        assert set(body) == {"success", "new_contract"}  # the spec's answer, nothing more
        assert body["success"] is True
        return int(body["new_contract"])


@pytest.fixture
def api(sb: Sandbox, http: aiohttp.ClientSession) -> Api:
    return Api(sb, http)


async def test_url_is_the_server_root_and_logs_are_another_origin(sb: Sandbox) -> None:
    """``url`` has no /api/v0 suffix; the log origin differs from the API's."""
    assert sb.url.startswith("http://127.0.0.1:")
    assert sb.url.count("/") == 2
    assert sb.logs_url != sb.url
    assert sb.logs_url.startswith("http://127.0.0.1:")


async def test_bearer_and_query_key_are_both_accepted(api: Api, sb: Sandbox) -> None:
    """The Authorization header and the legacy ``?api_key=`` both authenticate."""
    await api.call("GET", "/api/v0/users/current")
    await api.call("GET", "/api/v0/users/current", headers={}, params={"api_key": sb.api_key})


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_wrong_or_missing_key_is_401_auth_error(api: Api, headers: dict[str, str]) -> None:
    """Everything but search needs the key: 401 with the real body."""
    body, _ = await api.call("GET", "/api/v1/instances/", headers=headers, status=401)
    assert body == {"success": False, "error": "auth_error", "msg": "Invalid user key"}


async def test_current_user_with_and_without_slash_has_a_balance(api: Api) -> None:
    """``/users/current`` answers both spellings, with a positive balance and no api_key."""
    a, _ = await api.call("GET", "/api/v0/users/current")
    b, _ = await api.call("GET", "/api/v0/users/current/")
    assert a["id"] == b["id"]
    assert a["balance"] == pytest.approx(1000.0)
    assert "api_key" not in a


async def test_content_type_is_exactly_application_json_everywhere(api: Api) -> None:
    """Success, 404 and 400 answers all carry exactly ``application/json`` (no charset)."""
    _, ok = await api.call("GET", "/api/v0/users/current")
    _, missing = await api.call("GET", "/api/v0/nowhere/", status=404)
    _, bad = await api.call("PUT", "/api/v0/asks/1/", data=b"{not json", status=400)
    for resp in (ok, missing, bad):
        assert resp.headers["Content-Type"] == "application/json"


async def test_create_accepts_the_official_full_body_and_a_minimal_one(api: Api) -> None:
    """The CLI's full create body and a body with only ``image`` both rent."""
    a, b = await api.offers(2)
    full = await api.create(a, **{k: v for k, v in OFFICIAL_CREATE_BODY.items() if k != "image"})
    small = await api.create(b)
    row, _ = await api.call("GET", f"/api/v0/instances/{full}/", params={"owner": "me"})
    inst = row["instances"]
    assert inst["label"] == "job-1"
    assert inst["image_runtype"] == "ssh_direc ssh_proxy"
    assert ["FOO", "bar"] in inst["extra_env"]
    assert ["-p 8080:8080", "1"] in inst["extra_env"]
    assert inst["disk_space"] == 12.0
    assert inst["onstart"] == "echo hello"
    assert isinstance(inst["ssh_port"], int)
    assert inst["ports"] is None
    row, _ = await api.call("GET", f"/api/v0/instances/{small}/")
    assert row["instances"]["image_runtype"] == "ssh"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_args"),
        ({"image": "u", "label": "x" * 1025}, "invalid_args"),
        ({"image": "u", "onstart": "x" * 4049}, "invalid_args"),
        ({"image": "u", "env": ["A=1"]}, "invalid_args"),
        ({"image": "u", "disk": -1}, "invalid_args"),
        ({"image": "u", "price": 0.00001}, "invalid_price"),
    ],
)
async def test_bad_create_bodies_are_400(api: Api, body: dict[str, Any], code: str) -> None:
    """Missing image, overlong label/onstart, bad env, disk or a bid under min_bid: 400."""
    (offer,) = await api.offers(1)
    got, _ = await api.call("PUT", f"/api/v0/asks/{offer}/", json=body, status=400)
    assert got["success"] is False
    assert got["error"] == code


@pytest.mark.parametrize(
    ("extra", "status", "code"),
    [
        ({"cancel_unavail": False}, 404, "invalid_args"),
        ({"cancel_unavail": True}, 410, "no_such_ask"),
        ({}, 410, "no_such_ask"),  # the spec: cancel_unavail defaults to true on demand
        ({"price": 0.5}, 404, "invalid_args"),  # ... and to false for interruptibles
    ],
)
async def test_unknown_offer_is_no_such_ask_404_or_410_with_cancel_unavail(
    api: Api, extra: dict[str, Any], status: int, code: str
) -> None:
    """An offer that does not exist answers the spec's no_such_ask bodies."""
    body = {"image": "u", **extra}
    got, _ = await api.call("PUT", "/api/v0/asks/17/", json=body, status=status)
    assert got["error"] == code
    assert got["ask_id"] == 17
    assert "no_such_ask" in got["msg"]


async def test_no_credit_is_missing_billing() -> None:
    """An account without balance cannot rent: 400 missing_billing."""
    async with (
        Sandbox(seed=1, offers=5, credit=0.0, ssh=False) as box,
        aiohttp.ClientSession() as http,
    ):
        api = Api(box, http)
        (offer,) = await api.offers(1)
        got, _ = await api.call("PUT", f"/api/v0/asks/{offer}/", json={"image": "u"}, status=400)
    assert got["error"] == "missing_billing"


async def test_unknown_instance_answers(api: Api) -> None:
    """Each route answers a missing instance as the spec documents it (GET one: vast-api.md)."""
    got, _ = await api.call("GET", "/api/v0/instances/123/")
    assert got == {"instances": None}
    for method, path, body, status, code, msg in [
        ("DELETE", "/api/v0/instances/123/", {}, 404, "not_found", "Instance not found"),
        ("DELETE", "/api/v0/instances/abc/", {}, 400, "invalid_args", "invalid instance_id"),
        ("PUT", "/api/v0/instances/123/", {"label": "x"}, 404, "no_such_instance", None),
        ("PUT", "/api/v0/instances/reboot/123/", {}, 400, "invalid_args", "invalid instance_id"),
        ("PUT", "/api/v0/instances/request_logs/123/", {}, 404, "invalid_id", None),
        ("POST", "/api/v0/instances/123/ssh/", {"ssh_key": PUBKEY}, 404, "no_such_instance", None),
        (
            "PUT",
            "/api/v0/instances/bid_price/123/",
            {"client_id": "me", "price": 0.5},
            404,
            "no_such_instance",
            "Instance with that ID does not exist.",
        ),
    ]:
        got, _ = await api.call(method, path, json=body, status=status)
        assert got["success"] is False
        assert got["error"] == code, path
        if msg is not None:
            assert got["msg"] == msg


async def test_v1_paging_returns_every_instance_once_in_order(api: Api) -> None:
    """``limit`` <= 25 and ``after_token`` walk all rows in ``order_by`` order, no repeats."""
    ids = [await api.create(o, label=f"page-{i % 3}") for i, o in enumerate(await api.offers(30))]
    assert len(ids) == 30
    for order, limit in (([{"col": "id", "dir": "asc"}], 25), ([{"col": "id", "dir": "desc"}], 7)):
        seen: list[int] = []
        token = None
        pages = 0
        while True:
            params = {"select_filters": "{}", "order_by": json.dumps(order), "limit": str(limit)}
            if token:
                params["after_token"] = token
            body, _ = await api.call("GET", "/api/v1/instances/", params=params)
            assert len(body["instances"]) <= limit
            assert body["total_instances"] == 30
            seen += [row["id"] for row in body["instances"]]
            pages += 1
            token = body["next_token"]
            if token is None:
                break
        assert seen == sorted(ids, reverse=order[0]["dir"] == "desc")
        assert pages == -(-30 // limit)
    body, _ = await api.call("GET", "/api/v1/instances/", params={"limit": "100"})
    assert len(body["instances"]) == 25
    assert body["next_token"]


async def test_v1_select_filters_on_label_and_id(api: Api) -> None:
    """Label and id filters use the offer operators; instances_found counts matches."""
    ids = [
        await api.create(o, label="keep" if i < 2 else "other")
        for i, o in enumerate(await api.offers(4))
    ]
    params = {"select_filters": json.dumps({"label": {"eq": "keep"}})}
    body, _ = await api.call("GET", "/api/v1/instances/", params=params)
    assert sorted(r["id"] for r in body["instances"]) == sorted(ids[:2])
    assert body["instances_found"] == 2
    params = {"select_filters": json.dumps({"id": {"in": ids[1:3]}, "label": {"neq": "keep"}})}
    body, _ = await api.call("GET", "/api/v1/instances/", params=params)
    assert [r["id"] for r in body["instances"]] == [ids[2]]
    legacy, _ = await api.call("GET", "/api/v0/instances/", params={"owner": "me"})
    assert sorted(r["id"] for r in legacy["instances"]) == sorted(ids)


async def test_label_change_and_bulk_destroy(api: Api, sb: Sandbox) -> None:
    """PUT label shows in listings; a bulk destroy removes every id given, unknown ids ignored."""
    ids = [await api.create(o) for o in await api.offers(3)]
    await api.call("PUT", f"/api/v0/instances/{ids[0]}/", json={"label": "renamed"})
    row, _ = await api.call("GET", f"/api/v0/instances/{ids[0]}/")
    assert row["instances"]["label"] == "renamed"
    _, _ = await api.call(
        "PUT", f"/api/v0/instances/{ids[0]}/", json={"label": "x" * 1025}, status=400
    )
    await api.call("DELETE", "/api/v0/instances/", json={"instance_ids": [*ids[:2], 5]})
    assert sb.alive_instance_ids() == {ids[2]}


async def test_account_keys_and_instance_key_attach(api: Api, sb: Sandbox) -> None:
    """Account keys list/add/delete; attaching a key to an instance makes it authorized."""
    none, _ = await api.call("GET", "/api/v0/ssh/", status=404)  # the spec: none -> 404
    assert none["msg"] == "No SSH keys found for the user"
    added, _ = await api.call("POST", "/api/v0/ssh/", json={"ssh_key": PUBKEY})
    assert set(added["key"]) == {"id", "user_id", "public_key", "created_at", "deleted_at"}
    assert added["key"]["public_key"] == PUBKEY
    assert added["key"]["created_at"].endswith("Z")  # a date-time, as the spec shows
    listed, _ = await api.call("GET", "/api/v0/ssh/")
    assert [k["key"] for k in listed] == [PUBKEY]
    assert set(listed[0]) == {"id", "user_id", "key", "created_at", "deleted_at"}
    await api.call("DELETE", f"/api/v0/ssh/{added['key']['id']}/")
    gone, _ = await api.call("DELETE", f"/api/v0/ssh/{added['key']['id']}/", status=400)
    assert gone["error"] == "no_ssh_key"
    await api.call("GET", "/api/v0/ssh/", status=404)
    empty, _ = await api.call("POST", "/api/v0/ssh/", json={}, status=400)
    assert (empty["error"], empty["msg"]) == ("no_ssh_key", "No ssh key provided")
    await api.call("POST", "/api/v0/ssh/", json={"ssh_key": "not a key"}, status=400)
    (offer,) = await api.offers(1)
    iid = await api.create(offer)
    await api.call("POST", f"/api/v0/instances/{iid}/ssh/", json={"ssh_key": PUBKEY})
    await api.call("POST", f"/api/v0/instances/{iid}/ssh/", json={"ssh_key": PUBKEY})
    assert [k for k, _ in sb.cloud.authorized_keys(iid)] == [PUBKEY]


async def test_templates_search(api: Api) -> None:
    """``GET /template/`` filters templates with select_filters."""
    body, _ = await api.call("GET", "/api/v0/template/")
    assert body["success"] is True
    assert len(body["templates"]) >= 2
    params = {"select_filters": json.dumps({"image": {"eq": "nvidia/cuda"}})}
    body, _ = await api.call("GET", "/api/v0/template/", params=params)
    assert [t["image"] for t in body["templates"]] == ["nvidia/cuda"]


async def test_request_logs_served_later_from_second_origin_without_auth(
    api: Api, sb: Sandbox, http: aiohttp.ClientSession
) -> None:
    """``result_url`` is on the log origin, 404 until ready, then the log; leaks are visible."""
    (offer,) = await api.offers(1)
    iid = await api.create(offer)
    body, _ = await api.call("PUT", f"/api/v0/instances/request_logs/{iid}/", json={"tail": "1000"})
    url = body["result_url"]
    assert url.startswith(sb.logs_url + "/")
    async with http.get(url) as resp:
        assert resp.status == 404
    async with asyncio.timeout(5):
        while True:
            async with http.get(url) as resp:
                if resp.status == 200:
                    text = await resp.text()
                    break
            await asyncio.sleep(0.3 * sb.time_scale)
    assert f"created from offer {offer}" in text
    assert all("Authorization" not in r.headers for r in sb.log_requests)
    async with http.get(url, headers=api.headers) as resp:
        assert resp.status == 200
    assert "Authorization" in sb.log_requests[-1].headers


async def test_requests_are_recorded_with_route_templates_and_no_access_log(
    api: Api, sb: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Each request is recorded (route template, body, headers); nothing logs the key."""
    caplog.set_level(logging.DEBUG)
    await api.call("GET", "/api/v0/users/current", headers={}, params={"api_key": sb.api_key})
    await api.call("GET", "/api/v0/instances/55/")
    await api.call("DELETE", "/api/v0/instances/55/", json={}, status=404)
    counts = sb.request_counts()
    assert counts["GET /api/v0/users/current"] == 1
    assert counts["GET /api/v0/instances/{id}/"] == 1
    last = sb.requests[-1]
    assert last.route == "DELETE /api/v0/instances/{id}/"
    assert last.json() == {}
    assert last.status == 404
    assert last.headers["Authorization"] == f"Bearer {sb.api_key}"
    assert sb.api_key not in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("aiohttp.access")]


async def test_legacy_list_can_answer_410_gone(http: aiohttp.ClientSession) -> None:
    """``legacy_list=False`` makes the deprecated list answer 410, as for newer accounts."""
    async with Sandbox(seed=1, offers=3, ssh=False, legacy_list=False) as box:
        got, _ = await Api(box, http).call("GET", "/api/v0/instances/", status=410)
    assert got["success"] is False


async def test_instance_rows_carry_exactly_the_filterable_fields(api: Api) -> None:
    """Rows and the v1 filter vocabulary agree; a filter on an unknown column is 400."""
    (offer,) = await api.offers(1)
    iid = await api.create(offer)
    row, _ = await api.call("GET", f"/api/v0/instances/{iid}/")
    assert set(row["instances"]) == INSTANCE_FIELDS
    params = {"select_filters": json.dumps({"nope": {"eq": 1}})}
    got, _ = await api.call("GET", "/api/v1/instances/", params=params, status=400)
    assert got["error"] == "invalid_request"


async def test_v1_counts_the_page_and_the_matches_with_label_counts(api: Api) -> None:
    """``instances_found`` counts this page, ``total_instances`` every match (the spec)."""
    offers = await api.offers(7)
    for i, offer in enumerate(offers):
        await api.create(offer, **({"label": "a"} if i < 4 else {"label": "b"} if i < 6 else {}))
    got, _ = await api.call("GET", "/api/v1/instances/", params={"limit": "3"})
    assert (got["instances_found"], got["total_instances"]) == (3, 7)
    assert got["label_counts"] == {"a": 4, "b": 2, "": 1}
    params = {"limit": "3", "select_filters": json.dumps({"label": {"eq": "a"}})}
    got, _ = await api.call("GET", "/api/v1/instances/", params=params)
    assert (got["instances_found"], got["total_instances"]) == (3, 4)
    assert got["label_counts"] == {"a": 4}
    params["after_token"] = got["next_token"]
    got, _ = await api.call("GET", "/api/v1/instances/", params=params)
    assert (got["instances_found"], got["total_instances"], got["next_token"]) == (1, 4, None)


@pytest.mark.parametrize(("limit", "page"), [("0", 5), ("-3", 5), ("2", 2), ("99", 7)])
async def test_v1_limit_at_most_25_and_non_positive_means_5(
    api: Api, limit: str, page: int
) -> None:
    for offer in await api.offers(7):
        await api.create(offer)
    got, _ = await api.call("GET", "/api/v1/instances/", params={"limit": limit})
    assert len(got["instances"]) == got["instances_found"] == page


@pytest.mark.parametrize("column", ["dph_total", "num_gpus"])
async def test_v1_refuses_filters_on_computed_columns(api: Api, column: str) -> None:
    """The spec: computed fields are not filterable and return 400 invalid_request."""
    params = {"select_filters": json.dumps({column: {"gt": 0}})}
    got, _ = await api.call("GET", "/api/v1/instances/", params=params, status=400)
    assert got["error"] == "invalid_request"
    assert column in got["msg"]


async def test_v1_bad_token_is_invalid_token(api: Api) -> None:
    got, _ = await api.call(
        "GET", "/api/v1/instances/", params={"after_token": "!!not-a-token"}, status=400
    )
    assert got["error"] == "invalid_token"


async def test_templates_answer_counts_them(api: Api) -> None:
    got, _ = await api.call("GET", "/api/v0/template/")
    assert got["templates_found"] == len(got["templates"]) > 0


async def test_change_bid_limits_answer_invalid_args(api: Api) -> None:
    """The spec's change-bid range is 0.001..32; outside it, 400 ``invalid_args``."""
    (offer,) = await api.offers(1)
    iid = await api.create(offer, price=5.0)
    for price in (0.0, 0.0005, 32.5):
        got, _ = await api.call(
            "PUT",
            f"/api/v0/instances/bid_price/{iid}/",
            json={"client_id": "me", "price": price},
            status=400,
        )
        assert got["error"] == "invalid_args"
    await api.call(
        "PUT", f"/api/v0/instances/bid_price/{iid}/", json={"client_id": "me", "price": 32}
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"FOO": "bar", "-p 8080:8080": "1"}, {"FOO": "bar", "-p 8080:8080": "1"}),
        ("-e FOO=bar -p 8080:8080", {"FOO": "bar", "-p 8080:8080": "1"}),
        ("-e 'A=x y' -e B= -p 53:53/udp", {"A": "x y", "B": "", "-p 53:53/udp": "1"}),
    ],
)
async def test_create_takes_env_as_the_spec_string_or_the_clients_dict(
    api: Api, sb: Sandbox, env: Any, expected: dict[str, str]
) -> None:
    (offer,) = await api.offers(1)
    iid = await api.create(offer, env=env)
    row, _ = await api.call("GET", f"/api/v0/instances/{iid}/")
    assert dict(row["instances"]["extra_env"]) == expected


@pytest.mark.parametrize("env", ["-x FOO", "-e NOEQUALS", "-p notaport", "-e 'unbalanced"])
async def test_create_refuses_an_unreadable_env_string(api: Api, env: str) -> None:
    (offer,) = await api.offers(1)
    got, _ = await api.call(
        "PUT", f"/api/v0/asks/{offer}/", json={"image": "u", "env": env}, status=400
    )
    assert got["error"] == "invalid_args"


@pytest.mark.parametrize(("price", "ok"), [(0.0009, False), (128.5, False), (128, True)])
async def test_create_price_range_per_the_spec(api: Api, price: float, ok: bool) -> None:
    (offer,) = await api.offers(1)
    status = 200 if ok else 400
    got, _ = await api.call(
        "PUT", f"/api/v0/asks/{offer}/", json={"image": "u", "price": price}, status=status
    )
    assert got["success"] is ok
    if not ok:
        assert got["error"] == "invalid_price"


async def test_a_vm_needs_a_key_on_the_account_first(api: Api) -> None:
    """The spec: VMs take no key after create, so create answers 400 ``no_ssh_key_for_vm``."""
    first, second = await api.offers(2)
    got, _ = await api.call(
        "PUT", f"/api/v0/asks/{first}/", json={"image": "u", "vm": True}, status=400
    )
    assert got["error"] == "no_ssh_key_for_vm"
    await api.call("POST", "/api/v0/ssh/", json={"ssh_key": PUBKEY})
    await api.create(second, vm=True)
