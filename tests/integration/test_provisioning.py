"""The race against the sandbox: first proven login wins, losers are destroyed, nothing leaks."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from tests.integration._market import distinct_machines
from vastai_async import (
    InvalidRequestError,
    OfferUnavailableError,
    ProvisioningError,
    SSHError,
    VastAIService,
)
from vastai_async.events import (
    CandidateFailed,
    Event,
    InstanceCreated,
    InstanceDestroyed,
    ProbeAttempt,
    WinnerChosen,
)
from vastai_async.models import Offer
from vastai_async.sandbox import HTTPFault, LifecycleFault, Sandbox

pytestmark = pytest.mark.vastai_sandbox(offers=30, time_scale=0.02, seed=7)


async def candidates(service: VastAIService, n: int) -> list[Offer]:
    return distinct_machines(await service.search_offers(), n)


async def test_fastest_booting_candidate_wins_and_losers_are_destroyed(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 3)
    # Seeded, spaced far apart (in simulated seconds): the middle offer must win.
    for offer, boot_s in zip(offers, (400.0, 40.0, 200.0), strict=True):
        vastai_sandbox.set_boot_latency(offer.id, boot_s)
    events: list[Event] = []
    rental = await vastai_service.provision_instance(
        job_id="race-1", offers=offers, fan_out=3, on_event=events.append
    )
    assert rental.info.offer is not None
    assert rental.info.offer.id == offers[1].id
    # Only the winner is alive (billing), confirmed by the sandbox itself.
    assert vastai_sandbox.alive_instance_ids() == {rental.instance_id}
    server = vastai_sandbox.ssh_server(rental.instance_id)
    assert server is not None
    assert server.ready_at is not None
    assert rental.info.ready_at is not None
    assert rental.info.ready_at >= server.ready_at
    # A real login with the pinned host key works.
    result = await rental.run("nvidia-smi -L")
    assert result.exit_status == 0
    assert result.stdout.startswith("GPU 0: ")
    winners = [e for e in events if isinstance(e, WinnerChosen)]
    assert [w.instance_id for w in winners] == [rental.instance_id]
    destroyed = {e.instance_id for e in events if isinstance(e, InstanceDestroyed)}
    created = {e.instance_id for e in events if isinstance(e, InstanceCreated)}
    assert destroyed == created - {rental.instance_id}
    # Losers cost one bulk destroy, not one destroy each.
    counts = vastai_sandbox.request_counts()
    assert counts["DELETE /api/v0/instances/"] == 1
    assert counts["DELETE /api/v0/instances/{id}/"] == 0
    await rental.terminate()
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_rental_context_manager_terminates_and_detach_keeps(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 2)
    async with await vastai_service.provision_instance(
        job_id="ctx", offers=offers[:1], fan_out=1
    ) as rental:
        assert vastai_sandbox.alive_instance_ids() == {rental.instance_id}
    assert vastai_sandbox.alive_instance_ids() == set()

    kept = await vastai_service.provision_instance(job_id="keep", offers=offers[1:], fan_out=1)
    async with kept:
        await kept.detach("notebook")
    assert vastai_sandbox.alive_instance_ids() == {kept.instance_id}
    assert vastai_sandbox.instance(kept.instance_id).label == "vastai-async:kept:keep:notebook"
    report = await vastai_service.reap(owner=vastai_service.owner)
    assert kept.instance_id in {i for i, _ in report.spared}
    assert await vastai_service.terminate_instance(kept.instance_id) is True
    assert await vastai_service.terminate_instance(kept.instance_id) is False


async def test_api_economy_one_list_call_per_tick_for_many_candidates(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 8)
    for offer in offers:
        vastai_sandbox.set_boot_latency(offer.id, 120.0)
    rental = await vastai_service.provision_instance(job_id="eco", offers=offers, fan_out=8)
    poller = vastai_service._poller
    assert poller is not None
    counts = vastai_sandbox.request_counts()
    # Eight candidates fit one 25-row page: each tick is one list call (teardown adds a few).
    list_calls = counts["GET /api/v1/instances/"]
    assert poller.ticks >= 3
    assert list_calls <= poller.ticks + 4
    assert counts["GET /api/v0/instances/{id}/"] == 0
    await rental.terminate()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (LifecycleFault(oci_error=True), "OCI runtime create failed"),
        (LifecycleFault(offline_after_s=1.0), "offline"),
    ],
)
async def test_fatal_candidates_are_dropped_destroyed_and_replaced(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, fault: LifecycleFault, reason: str
) -> None:
    offers = await candidates(vastai_service, 3)
    vastai_sandbox.set_lifecycle_fault(offers[0].id, fault)
    vastai_sandbox.set_boot_latency(offers[0].id, 10.0)
    vastai_sandbox.set_boot_latency(offers[1].id, 300.0)
    vastai_sandbox.set_boot_latency(offers[2].id, 60.0)
    if fault.offline_after_s is not None:
        # Keep the faulty machine unreachable over SSH so it cannot win before going offline.
        vastai_sandbox.set_boot_latency(offers[0].id, 10.0)
    events: list[Event] = []
    rental = await vastai_service.provision_instance(
        job_id="fatal", offers=offers, fan_out=2, on_event=events.append, timings=None
    )
    failed = [e for e in events if isinstance(e, CandidateFailed)]
    if fault.oci_error:
        assert any(reason in e.reason for e in failed)
        assert rental.info.offer is not None
        assert rental.info.offer.id != offers[0].id
    assert vastai_sandbox.alive_instance_ids() == {rental.instance_id}
    await rental.terminate()


async def test_every_candidate_failing_raises_provisioning_error_with_reasons(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 3)
    vastai_sandbox.set_lifecycle_fault(offers[0].id, LifecycleFault(oci_error=True))
    vastai_sandbox.set_lifecycle_fault(offers[1].id, LifecycleFault(stuck_loading=True))
    vastai_sandbox.take_offer(offers[2].id)
    timings = vastai_service.timings.replace(loading_s=3.0)
    with pytest.raises(ProvisioningError) as info:
        await vastai_service.provision_instance(
            job_id="allfail", offers=offers, fan_out=3, timings=timings
        )
    reasons = {a.offer_id: a.reason for a in info.value.attempts}
    assert "OCI runtime create failed" in reasons[offers[0].id]
    assert "loading deadline" in reasons[offers[1].id]
    assert "unavailable" in reasons[offers[2].id]
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_offer_vanishing_is_replaced_by_the_next_reserve(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 3)
    vastai_sandbox.take_offer(offers[0].id)
    rental = await vastai_service.provision_instance(job_id="vanish", offers=offers, fan_out=1)
    assert rental.info.offer is not None
    assert rental.info.offer.id == offers[1].id
    assert vastai_sandbox.alive_instance_ids() == {rental.instance_id}
    await rental.terminate()


async def test_lost_create_answer_is_found_by_label(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 2)
    vastai_sandbox.add_fault(HTTPFault(kind="lost_answer", route="PUT /api/v0/asks/{id}/"))
    events: list[Event] = []
    rental = await vastai_service.provision_instance(
        job_id="lost", offers=offers[:1], fan_out=1, on_event=events.append
    )
    adopted = [e for e in events if isinstance(e, InstanceCreated) and e.adopted]
    assert [e.instance_id for e in adopted] == [rental.instance_id]
    assert vastai_sandbox.alive_instance_ids() == {rental.instance_id}
    await rental.terminate()


async def test_rate_limit_storm_and_server_errors_are_survived(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 2)
    vastai_sandbox.add_fault(HTTPFault(kind="rate_limit", route="GET /api/v1/instances/", times=5))
    vastai_sandbox.add_fault(HTTPFault(kind="status", status=503, times=3))
    rental = await vastai_service.provision_instance(job_id="storm", offers=offers, fan_out=2)
    assert vastai_sandbox.alive_instance_ids() == {rental.instance_id}
    await rental.terminate()
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_direct_port_firewalled_proxy_wins(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 1)
    events: list[Event] = []

    def firewall(event: Event) -> None:
        events.append(event)
        if isinstance(event, InstanceCreated):
            server = vastai_sandbox.ssh_server(event.instance_id)
            assert server is not None
            server.faults.firewall_direct = True

    rental = await vastai_service.provision_instance(
        job_id="fw", offers=offers, fan_out=1, on_event=firewall
    )
    assert rental.info.ssh.kind == "proxy"
    await rental.terminate()


async def test_late_key_permission_denied_is_retried(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 1)
    vastai_sandbox.set_boot_latency(offers[0].id, 10.0)  # running after ~0.2 s wall
    events: list[Event] = []

    def refuse_auth(event: Event) -> None:
        events.append(event)
        if isinstance(event, InstanceCreated):
            server = vastai_sandbox.ssh_server(event.instance_id)
            assert server is not None
            # The key "reaches the machine" 1.5 s after creation: well after it runs.
            server.faults.refuse_auth_until = time.time() + 1.5

    rental = await vastai_service.provision_instance(
        job_id="latekey", offers=offers, fan_out=1, on_event=refuse_auth
    )
    denied = [
        e
        for e in events
        if isinstance(e, ProbeAttempt) and not e.ok and "permission" in (e.reason or "")
    ]
    assert denied, "the race should have met 'permission denied' and retried"
    await rental.terminate()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"job_id": "bad job"}, "job_id"),
        ({"job_id": "j", "fan_out": 0}, "fan_out"),
        ({"job_id": "j", "bid_usd_per_hour": 99.0}, "ceiling"),
        ({"job_id": "j", "bid_usd_per_hour": -1.0}, "bid_usd_per_hour"),
        ({"job_id": "j", "disk_gb": -5.0}, "disk"),
        ({"job_id": "j", "extra_env": {"-p 8080:8080": "1"}}, "variable name"),
        ({"job_id": "j", "onstart_cmd": "x" * 5000}, "onstart"),
        ({"job_id": "j", "max_spend_usd": 0.0}, "max_spend_usd"),
    ],
)
async def test_bad_arguments_raise_before_anything_is_rented(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, kwargs: dict[str, object], match: str
) -> None:
    offers = await candidates(vastai_service, 1)
    with pytest.raises(InvalidRequestError, match=match):
        await vastai_service.provision_instance(offers=offers, **kwargs)  # type: ignore[arg-type]
    assert vastai_sandbox.request_counts()["PUT /api/v0/asks/{id}/"] == 0
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_api_key_never_written_to_the_machine(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 1)
    with pytest.raises(InvalidRequestError, match="API key"):
        await vastai_service.provision_instance(
            job_id="leak", offers=offers, extra_env={"TOKEN": vastai_sandbox.api_key}
        )
    rental = await vastai_service.provision_instance(
        job_id="noleak", offers=offers, extra_env={"A": "1"}
    )
    for req in vastai_sandbox.requests:
        if req.route == "PUT /api/v0/asks/{id}/":
            assert vastai_sandbox.api_key not in str(req.body)
    await rental.terminate()


async def test_unknown_offer_id_is_refused_before_renting(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    with pytest.raises(OfferUnavailableError):
        await vastai_service.provision_instance(job_id="nope", offer_id=123456789)
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_changed_host_key_is_refused_on_an_established_rental(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 1)
    rental = await vastai_service.provision_instance(job_id="hk", offers=offers)
    import attrs

    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDsaTJ5HxcP1QwO4nOMsoo0Ni4mHUn/BM0V3E4wAd7gR"
    forged = type(rental)(
        info=attrs.evolve(rental.info, host_key=other),
        owner=rental._owner,
        client_key=rental._client_key,
        key_path=rental._key_path,
    )
    with pytest.raises(SSHError):
        await forged.run("true")
    await rental.terminate()


async def test_a_rental_reuses_one_ssh_connection_and_refuses_use_after_terminate(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 1)
    rental = await vastai_service.provision_instance(job_id="one-conn", offers=offers)
    assert (await rental.run("true")).exit_status == 0
    runner = rental._ssh
    assert runner is not None
    first = runner._conn
    for _ in range(2):
        assert (await rental.run("true")).exit_status == 0
    assert rental._ssh is runner
    assert runner._conn is first, "one handshake serves every command"
    await rental.terminate()
    with pytest.raises(SSHError, match="terminated"):
        await rental.run("true")


async def test_max_spend_stops_the_race(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await candidates(vastai_service, 2)
    for offer in offers:
        vastai_sandbox.set_lifecycle_fault(offer.id, LifecycleFault(stuck_loading=True))
    with pytest.raises(ProvisioningError, match="spend limit"):
        await vastai_service.provision_instance(
            job_id="spend", offers=offers, fan_out=2, max_spend_usd=1e-7
        )
    assert vastai_sandbox.alive_instance_ids() == set()
    assert math.isfinite(vastai_sandbox.balance())


async def test_poller_lists_26_instances_in_two_calls_per_tick(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    from vastai_async._poller import InstancePoller
    from vastai_async.models import CreateInstanceRequest

    offers = distinct_machines(await vastai_service.search_offers(), 26)
    for offer in offers:
        vastai_sandbox.set_boot_latency(offer.id, 100_000.0)
    request = CreateInstanceRequest(image="ubuntu", disk_gb=10, label="vastai-async:t:eco:r1")
    ids = [
        (await vastai_service.client.create_instance(offer.id, request)).new_contract
        for offer in offers
    ]
    poller = InstancePoller(
        lambda ids: vastai_service.client.list_instances(ids=ids), interval_s=60.0
    )
    before = vastai_sandbox.request_counts()["GET /api/v1/instances/"]
    for instance_id in ids:
        poller.watch(instance_id)
    generation, snap = await poller.wait(ids[0], 0)
    assert snap is not None
    assert snap.id == ids[0]
    assert generation == 1
    # ceil(26 / 25) = 2 list calls for one tick, never 26.
    assert vastai_sandbox.request_counts()["GET /api/v1/instances/"] - before == 2
    await poller.close()
    await vastai_service.client.destroy_instances(ids)
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_rental_put_get_files_over_sftp(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, tmp_path: Path
) -> None:
    offers = await candidates(vastai_service, 1)
    async with await vastai_service.provision_instance(job_id="files", offers=offers) as rental:
        local = tmp_path / "in.txt"
        local.write_text("hello gpu\n")
        await rental.put(local, "in.txt")
        result = await rental.run("cat in.txt", check=True)
        assert result.stdout == "hello gpu\n"
        await rental.get("in.txt", tmp_path / "out.txt")
        assert (tmp_path / "out.txt").read_text() == "hello gpu\n"
        assert rental.ssh_command().startswith("ssh -i ")
    assert vastai_sandbox.alive_instance_ids() == set()
