"""The client against a server answering in the published spec's exact shapes (issue #13 items).

Each test names the spec's lines it relies on (``vast-openapi-facts.md``). The server records
what the client sent, so the tests also prove what goes out.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.schemas import OPERATIONS
from tests.contract.spec_server import SPEC_INSTANCE, SPEC_OFFER, SpecServer, spec_server
from tests.contract.validate import response_problems
from vastai_async.account_keys import (
    AccountKeyRegistrar,
    ensure_account_key,
    key_identity,
    register_account_key,
)
from vastai_async.client import VastAIClient
from vastai_async.config import generate_ssh_keypair, get_vastai_config
from vastai_async.errors import AuthenticationError, InvalidRequestError, NotFoundError
from vastai_async.models import CreateInstanceRequest
from vastai_async.pacing import Pacing
from vastai_async.query import OfferQuery
from vastai_async.session import RetryPolicy

DESTROY = "DELETE /api/v0/instances/{id}/"
BULK = "DELETE /api/v0/instances/"
SSH = "GET /api/v0/ssh/"
ADD = "POST /api/v0/ssh/"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAImine me@laptop"


@pytest.fixture
async def spec() -> AsyncIterator[SpecServer]:
    async with spec_server() as server:
        yield server


@pytest.fixture
async def client(spec: SpecServer, tmp_path: Path) -> AsyncIterator[VastAIClient]:
    generate_ssh_keypair(tmp_path / "id_ed25519")
    config = get_vastai_config(
        api_key="k-spec",
        api_base_url=spec.url,
        ssh_key_path=tmp_path / "id_ed25519",
        state_dir=tmp_path,
    )
    no_pacing = Pacing(min_intervals={}, default_interval_s=0.0)
    retry = RetryPolicy(attempts=2, initial_s=0.0)
    async with VastAIClient.from_config(config, pacing=no_pacing, retry=retry) as vast:
        yield vast


async def test_every_default_answer_of_the_spec_server_fits_its_contract(spec: SpecServer) -> None:
    from tests.contract.spec_server import _DEFAULTS

    assert set(_DEFAULTS) <= set(OPERATIONS)
    for route, (status, body) in _DEFAULTS.items():
        assert not response_problems(route, status, json.dumps(body).encode()), route


# --- item 1: destroy of a missing instance ----------------------------------------------------


@pytest.mark.parametrize("code", ["not_found", "no_such_instance"])
async def test_destroy_of_a_missing_instance_is_gone_not_an_error(
    client: VastAIClient, spec: SpecServer, code: str
) -> None:
    """L3758-3773: 404 ``not_found`` "Instance not found" means gone: False, one request."""
    spec.answer(DESTROY, 404, {"success": False, "error": code, "msg": "Instance not found"})
    assert await client.destroy_instance(42) is False
    assert len(spec.sent(DESTROY)) == 1
    assert await client.destroy_instance(42) is True


async def test_destroy_404_without_a_gone_code_still_raises(
    client: VastAIClient, spec: SpecServer
) -> None:
    spec.answer(DESTROY, 404, {"success": False, "error": "other", "msg": "?"})
    with pytest.raises(NotFoundError):
        await client.destroy_instance(42)


async def test_bulk_destroy_404_falls_back_to_one_destroy_each(
    client: VastAIClient, spec: SpecServer
) -> None:
    """The bulk route is not in the spec: a 404 there destroys each id, a gone one included."""
    spec.answer(BULK, 404, {"success": False, "error": "not_found", "msg": "Instance not found"})
    spec.answer(DESTROY, 404, {"success": False, "error": "not_found", "msg": "Instance not found"})
    await client.destroy_instances([1, 2])
    assert [r.body for r in spec.sent(BULK)] == [{"instance_ids": [1, 2]}]
    assert [r.path for r in spec.sent(DESTROY)] == ["/api/v0/instances/1/", "/api/v0/instances/2/"]


# --- item 2: show's ports and extra_env as the spec's Instance has them -----------------------


async def test_show_reads_the_spec_instance_with_integer_ports_and_string_env(
    client: VastAIClient,
) -> None:
    inst = await client.show_instance(SPEC_INSTANCE["id"])
    assert inst.ports == {"8080/tcp": (), "8081/tcp": ()}
    assert inst.extra_env == {"HELLO": "world", "EMPTY": ""}
    # no host mapping is invented: only the proxy endpoint is known
    assert [e.kind for e in inst.ssh_endpoints()] == ["proxy"]


# --- item 3: account keys ---------------------------------------------------------------------


async def test_account_keys_in_the_spec_shapes(client: VastAIClient, spec: SpecServer) -> None:
    """POST answers ``key.public_key`` (L1929-1947); GET dates are date-times (L2006-2034)."""
    added = await client.add_ssh_key(KEY)
    assert added is not None
    assert (added.id, added.user_id) == (8, 123)
    assert added.key.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAInew")
    assert added.created_at == pytest.approx(1714651200.0)
    [listed] = await client.list_ssh_keys()
    assert listed.created_at == pytest.approx(1714564800.0)
    assert listed.deleted_at is None


async def test_no_account_keys_is_an_empty_list(client: VastAIClient, spec: SpecServer) -> None:
    """L2038-2039: 404 "No SSH keys found for the user" means none."""
    spec.answer(SSH, 404, {"success": False, "error": "not_found", "msg": "No SSH keys found"})
    assert await client.list_ssh_keys() == []


async def test_deleting_a_missing_key_is_false(client: VastAIClient, spec: SpecServer) -> None:
    """L3450-3475: a missing key is 400 ``no_ssh_key``; a retried delete must not raise."""
    route = "DELETE /api/v0/ssh/{id}/"
    spec.answer(route, 400, {"success": False, "error": "no_ssh_key", "msg": "No ssh key provided"})
    assert await client.delete_ssh_key(9) is False
    assert await client.delete_ssh_key(9) is True


# --- item 4: reliability ----------------------------------------------------------------------


async def test_search_filters_on_reliability_and_reads_an_offer_carrying_only_it(
    client: VastAIClient, spec: SpecServer
) -> None:
    """L6520-6523 names the filter ``reliability``; an offer without ``reliability2`` passes."""
    offer = {k: v for k, v in SPEC_OFFER.items() if k != "reliability2"}
    spec.answer("POST /api/v0/bundles/", 200, {"offers": [offer]})
    query = OfferQuery(min_reliability=0.95)
    [found] = await client.search_offers(query.to_wire())
    assert found.reliability == 0.9876
    assert query.matches(found)
    [sent] = spec.sent("POST /api/v0/bundles/")
    assert sent.body["reliability"] == {"gte": 0.95}
    assert "reliability2" not in sent.body


# --- items 5 and 7: limits and cancel_unavail ------------------------------------------------


@pytest.mark.parametrize(
    ("price", "ok"), [(0.001, True), (32.0, True), (0.0009, False), (32.01, False)]
)
async def test_change_bid_range_is_checked_before_sending(
    client: VastAIClient, spec: SpecServer, price: float, ok: bool
) -> None:
    """L530-531: 0.001..32; outside it nothing is sent."""
    route = "PUT /api/v0/instances/bid_price/{id}/"
    if ok:
        await client.change_bid(5, price)
        assert [r.body for r in spec.sent(route)] == [{"client_id": "me", "price": price}]
    else:
        with pytest.raises(InvalidRequestError, match=r"between 0\.001 and 32"):
            await client.change_bid(5, price)
        assert spec.sent(route) == []


async def test_create_at_the_limits_goes_out_without_cancel_unavail(
    client: VastAIClient, spec: SpecServer
) -> None:
    """Price 128 and a 4,048-character onstart are sent; ``cancel_unavail`` only when asked."""
    request = CreateInstanceRequest(image="ubuntu:22.04", price=128, onstart="x" * 4048)
    answer = await client.create_instance(7, request)
    assert answer.new_contract == 1234567
    [sent] = spec.sent("PUT /api/v0/asks/{id}/")
    assert sent.body["price"] == 128
    assert len(sent.body["onstart"]) == 4048
    assert "cancel_unavail" not in sent.body


# --- item 11: interruptible verification -----------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "bid", "reason"),
    [
        ({"is_bid": True, "dph_base": 0.3}, 0.3, None),
        ({"is_bid": True, "dph_base": 0.25}, 0.3, None),
        ({"is_bid": False, "dph_base": 0.3}, 0.3, "is_bid false"),
        ({"is_bid": True, "dph_base": 1.0}, 0.3, "above the bid"),
    ],
)
async def test_an_interruptible_rental_is_checked_against_its_bid(
    client: VastAIClient, spec: SpecServer, fields: dict[str, Any], bid: float, reason: str | None
) -> None:
    spec.answer("GET /api/v0/instances/{id}/", 200, {"instances": {**SPEC_INSTANCE, **fields}})
    inst = await client.show_instance(SPEC_INSTANCE["id"])
    found = inst.interruptible_mismatch(bid)
    assert found is None if reason is None else reason in (found or "")


async def test_templates_in_the_spec_shape_need_no_hash_id(client: VastAIClient) -> None:
    [template] = await client.templates()
    assert (template.id, template.hash_id, template.image) == (1, None, "i")


# --- item 10: the key on the account ----------------------------------------------------------


async def test_an_existing_account_key_is_found_not_added(
    client: VastAIClient, spec: SpecServer
) -> None:
    """Compared by type and base64 only: another comment is the same key; nothing is added."""
    same = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIspec other-comment"
    outcome = await register_account_key(client, same)
    assert (outcome.path, outcome.key_id, outcome.added) == ("account", 7, False)
    assert spec.sent(ADD) == []
    assert not [r for r in spec.requests if r.method == "DELETE"]


async def test_a_missing_account_key_is_added_once(client: VastAIClient, spec: SpecServer) -> None:
    spec.answer(SSH, 404, {"success": False, "error": "not_found", "msg": "No SSH keys found"})
    assert await ensure_account_key(client, KEY) == "account"
    assert [r.body for r in spec.sent(ADD)] == [{"ssh_key": KEY}]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (403, {"success": False, "error": "not_authorized", "msg": "scoped key"}),
        (400, {"success": False, "error": "invalid_args", "msg": "bad key"}),
    ],
)
async def test_a_refused_account_key_falls_back_to_each_instance(
    client: VastAIClient, spec: SpecServer, status: int, body: dict[str, Any]
) -> None:
    spec.answer(SSH, 404, {"success": False, "error": "not_found", "msg": "No SSH keys found"})
    spec.answer(ADD, status, body)
    spec.answer(SSH, 404, {"success": False, "error": "not_found", "msg": "No SSH keys found"})
    outcome = await register_account_key(client, KEY)
    assert outcome.path == "instance"
    assert outcome.reason is not None
    assert str(status) in outcome.reason


async def test_a_lost_add_answer_is_resolved_by_listing_again(
    client: VastAIClient, spec: SpecServer
) -> None:
    """A 500 after the add may hide a landed key: the second listing finds it, no second add."""
    spec.answer(SSH, 404, {"success": False, "error": "not_found", "msg": "No SSH keys found"})
    spec.answer(ADD, 500, {"success": False, "error": "server_error", "msg": "oops"})
    row = {"id": 9, "user_id": 1, "key": KEY, "created_at": "2024-01-01T00:00:00Z"}
    spec.answer(SSH, 200, [row])
    outcome = await register_account_key(client, KEY)
    assert (outcome.path, outcome.key_id, outcome.added) == ("account", 9, True)
    assert len(spec.sent(ADD)) == 1


async def test_a_wrong_api_key_is_raised_not_hidden(client: VastAIClient, spec: SpecServer) -> None:
    spec.answer(SSH, 401, {"success": False, "error": "auth_error", "msg": "Invalid user key"})
    with pytest.raises(AuthenticationError):
        await ensure_account_key(client, KEY)


async def test_not_a_public_key_is_refused_before_any_request(
    client: VastAIClient, spec: SpecServer
) -> None:
    with pytest.raises(InvalidRequestError):
        await ensure_account_key(client, "not a key")
    assert spec.requests == []
    assert key_identity("ssh-rsa AAAAB3Nza x") == ("ssh-rsa", "AAAAB3Nza")
    assert key_identity("ssh-rsa") is None


async def test_the_registrar_registers_once_for_concurrent_races(
    client: VastAIClient, spec: SpecServer
) -> None:
    import asyncio

    spec.answer(SSH, 404, {"success": False, "error": "not_found", "msg": "No SSH keys found"})
    registrar = AccountKeyRegistrar(client, KEY)
    outcomes = await asyncio.gather(*(registrar.ensure() for _ in range(5)))
    assert {o.path for o in outcomes} == {"account"}
    assert len(spec.sent(ADD)) == 1
    assert len(spec.sent(SSH)) == 1
    assert registrar.outcome is outcomes[0]
