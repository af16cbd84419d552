"""Against the sandbox: the SSH key on the account (issue #13 item 10) and outbid (item 11)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.reliability._harness import pick_offers
from vastai_async import OutbidError, VastAIService
from vastai_async.account_keys import register_account_key
from vastai_async.client import VastAIClient
from vastai_async.config import VastAIConfig, generate_ssh_keypair, get_vastai_config
from vastai_async.events import Event, Outbid, SSHKeyPath
from vastai_async.models import CreateInstanceRequest, Instance, Offer
from vastai_async.query import OfferQuery
from vastai_async.sandbox import Sandbox
from vastai_async.ssh import load_client_key, probe, public_key_line

FOREIGN = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx0cGV4YW1wbGVrZXlmb3J0ZXN0c29ubHkxMjM0NTY3 other"


@pytest.fixture
async def sb() -> AsyncIterator[Sandbox]:
    async with Sandbox(seed=31, offers=40, time_scale=0.02, rate_limits=False) as box:
        yield box


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    generate_ssh_keypair(path)
    return path


@pytest.fixture
async def client(sb: Sandbox, key_path: Path, tmp_path: Path) -> AsyncIterator[VastAIClient]:
    config = get_vastai_config(
        api_key=sb.api_key, api_base_url=sb.url, ssh_key_path=key_path, state_dir=tmp_path
    ).scaled(sb.time_scale)
    async with VastAIClient.from_config(config) as vast:
        yield vast


async def _offers(client: VastAIClient, n: int) -> list[Offer]:
    seen: dict[int | None, Offer] = {}
    for offer in await client.search_offers(OfferQuery(limit=60).to_wire()):
        seen.setdefault(offer.machine_id, offer)
    return list(seen.values())[:n]


async def _login(inst: Instance, key_path: Path) -> bool:
    key = load_client_key(key_path)
    for endpoint in inst.ssh_endpoints():
        result = await probe(
            endpoint.host, endpoint.port, client_key=key, connect_timeout=2, login_timeout=5
        )
        if not result.ok:
            return False
    return bool(inst.ssh_endpoints())


async def test_key_on_the_account_logs_into_instances_without_any_attach(
    sb: Sandbox, client: VastAIClient, key_path: Path
) -> None:
    """Registered once (idempotent, foreign keys kept); old and new instances take the login."""
    await client.add_ssh_key(FOREIGN)
    before, after = await _offers(client, 2)
    request = CreateInstanceRequest(image="ubuntu:22.04", label="keys-1")
    old = (await client.create_instance(before.id, request)).new_contract
    await sb.wait_status(old, "running", within_s=20)
    assert not await _login(await client.show_instance(old), key_path)  # not registered yet

    public = public_key_line(load_client_key(key_path))
    first = await register_account_key(client, public)
    again = await register_account_key(client, public + " renamed-comment")
    assert (first.path, first.added) == ("account", True)
    assert (again.path, again.added, again.key_id) == ("account", False, first.key_id)
    assert sorted(k.key.split()[1] for k in await client.list_ssh_keys()) == sorted(
        [FOREIGN.split()[1], public.split()[1]]
    )

    new = (await client.create_instance(after.id, request)).new_contract
    for iid in (old, new):
        await sb.wait_status(iid, "running", within_s=20)
        assert await _login(await client.show_instance(iid), key_path), iid
    attaches = [r for r in sb.requests if r.route == "POST /api/v0/instances/{id}/ssh/"]
    assert attaches == []
    await client.destroy_instances([old, new])


async def test_outbid_has_the_documented_signature_and_a_stop_on_request_does_not(
    sb: Sandbox, client: VastAIClient
) -> None:
    """The sandbox produces exactly the signature ``Instance.is_outbid`` reads; a bid rental is
    verified against its bid right after create."""
    a, b = await _offers(client, 2)
    assert a.min_bid is not None
    assert b.min_bid is not None
    bids = {a.id: round(a.min_bid * 1.5, 4), b.id: round(b.min_bid * 1.5, 4)}
    ids = {}
    for offer in (a, b):
        request = CreateInstanceRequest(image="ubuntu:22.04", price=bids[offer.id])
        ids[offer.id] = (await client.create_instance(offer.id, request)).new_contract
    for offer_id, iid in ids.items():
        inst = await client.show_instance(iid)
        assert inst.is_bid is True
        assert inst.interruptible_mismatch(bids[offer_id]) is None
        assert inst.interruptible_mismatch(bids[offer_id] / 2) is not None  # billed above it
        await sb.wait_status(iid, "running", within_s=20)

    await sb.outbid(ids[a.id])
    outbid = await client.show_instance(ids[a.id])
    assert outbid.is_outbid()
    assert "outbid" in (outbid.fatal_reason() or "")
    error = outbid.outbid_error()
    assert error is not None
    assert (error.instance_id, error.bid) == (ids[a.id], bids[a.id])

    await client.stop_instance(ids[b.id])
    stopped = await client.show_instance(ids[b.id])
    assert stopped.actual_status == "stopped"
    assert not stopped.is_outbid()
    assert stopped.fatal_reason() is None

    [listed] = await client.list_instances(ids=[ids[a.id]])
    assert listed.is_outbid()  # the v1 list row carries the same signature
    await client.destroy_instances(list(ids.values()))
    assert sb.alive_instance_ids() == set()


# -- the service's wiring: one account registration, no attaches, outbid on a held rental --


@pytest.mark.vastai_sandbox(offers=12, time_scale=0.02, seed=13)
async def test_the_service_registers_the_key_once_and_races_attach_nothing(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    events: list[Event] = []
    offers = pick_offers(await vastai_service.search_offers(), 4)
    for offer in offers:
        vastai_sandbox.set_boot_latency(offer.id, 5.0)
    for job, pair in (("k1", offers[:2]), ("k2", offers[2:])):
        rental = await vastai_service.provision_instance(
            job_id=job, offers=pair, fan_out=2, on_event=events.append
        )
        assert (await rental.run("true")).exit_status == 0
        await rental.terminate()
    counts = vastai_sandbox.request_counts()
    assert counts["POST /api/v0/ssh/"] == 1, "registered once for the whole service"
    assert counts["POST /api/v0/instances/{id}/ssh/"] == 0, "no per-instance attach"
    paths = [e for e in events if isinstance(e, SSHKeyPath)]
    assert [p.path for p in paths] == ["account", "account"]
    assert vastai_sandbox.alive_instance_ids() == set()


@pytest.mark.vastai_sandbox(offers=12, time_scale=0.02, seed=14)
async def test_a_held_interruptible_rental_that_is_outbid_raises_outbid_error_and_emits(
    vastai_config: VastAIConfig, vastai_sandbox: Sandbox
) -> None:
    events: list[Event] = []
    async with VastAIService(config=vastai_config, on_event=events.append) as vast:
        offers = pick_offers(await vast.search_offers(), 1)
        vastai_sandbox.set_boot_latency(offers[0].id, 5.0)
        bid = max(1.0, (offers[0].min_bid or 0.5) * 2)
        rental = await vast.provision_instance(
            job_id="bid", offers=offers, fan_out=1, bid_usd_per_hour=bid
        )
        assert rental.info.bid_usd_per_hour == bid
        await vastai_sandbox.outbid(rental.instance_id)
        with pytest.raises(OutbidError) as info:
            await rental.run("true")
        assert info.value.instance_id == rental.instance_id
        assert any(isinstance(e, Outbid) and e.instance_id == rental.instance_id for e in events)
        await rental.terminate()
    assert vastai_sandbox.alive_instance_ids() == set()
