"""Every fault the sandbox can inject, alone and in seeded combinations.

Each run must end in a working rental (``true`` ran on it) or a typed ``VastAIError`` (a
``ProvisioningError`` with a reason per offer); afterwards the sandbox has nothing alive, the
loop reported no unhandled task exception or destroyed pending task, and no route was hit
faster than the client's pacing table allows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability._harness import (
    FAULTS,
    Outcome,
    Scenario,
    draw_scenario,
    pick_offers,
    run_scenario,
)
from vastai_async import VastAIService
from vastai_async.errors import SSHError
from vastai_async.events import Event, WinnerChosen
from vastai_async.sandbox import Sandbox

#: Seeds of the default run; ``python -m tests.reliability.chaos`` runs hundreds.
DEFAULT_SEEDS = range(12)
CANCEL_SEEDS = range(1000, 1008)

#: With a single candidate, these faults cannot be survived: the race must say why, per offer.
FATAL_ALONE: dict[str, str] = {
    "stuck_loading": "loading deadline",
    "oci_error": "OCI runtime create failed",
    "offer_vanished": "unavailable",
    "offer_taken_at_create": "unavailable",
    "ssh_refuse": "no SSH login",
    "ssh_hang_before_banner": "no SSH login",
    "offline": "status offline",
    "outbid": "stopped",
}

#: Faults a lone candidate may or may not survive: a 500 is not retried by the session (only
#: 502/503/504 are), so a 500 on the key attach ends that candidate with a typed reason.
MAY_FAIL_ALONE = frozenset({"server_500"})


def assert_clean(outcome: Outcome) -> None:
    """The four promises of the fault matrix, with the scenario in every message."""
    where = f"{outcome.scenario} -> {outcome.kind}: {outcome.error}"
    assert outcome.kind != "untyped_failure", where
    assert outcome.leaked == (), f"leaked {outcome.leaked}: {where}"
    assert outcome.loop_errors == (), f"loop errors {outcome.loop_errors}: {where}"
    assert outcome.pacing_excess == 0, f"pacing exceeded: {where}"
    assert outcome.attempts_without_reason == 0, f"attempt without reason: {where}"


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_each_fault_among_three_candidates_gives_a_working_rental_and_no_leak(
    fault: str, vastai_ssh_key: Path, tmp_path: Path
) -> None:
    # The fault hits the first candidate (or every route); two healthy ones can still win.
    scenario = Scenario(seed=5, faults=(fault,), fan_out=2, candidates=3, boots=(10, 20, 30))
    outcome = await run_scenario(scenario, vastai_ssh_key, tmp_path)
    assert_clean(outcome)
    assert outcome.kind == "success", outcome.error


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_each_fault_on_a_lone_candidate_gives_a_rental_or_a_reasoned_error(
    fault: str, vastai_ssh_key: Path, tmp_path: Path
) -> None:
    scenario = Scenario(seed=6, faults=(fault,), fan_out=1, candidates=1, boots=(10.0,))
    outcome = await run_scenario(scenario, vastai_ssh_key, tmp_path)
    assert_clean(outcome)
    if fault in FATAL_ALONE:
        assert outcome.kind == "typed_failure", outcome
        assert outcome.error is not None
        assert outcome.error.startswith("ProvisioningError"), outcome.error
        assert any(FATAL_ALONE[fault] in r for r in outcome.reasons), outcome.reasons
    elif fault not in MAY_FAIL_ALONE:
        assert outcome.kind == "success", outcome.error


@pytest.mark.parametrize("seed", DEFAULT_SEEDS)
async def test_seeded_fault_combinations_end_typed_and_leak_nothing(
    seed: int, vastai_ssh_key: Path, tmp_path: Path
) -> None:
    outcome = await run_scenario(draw_scenario(seed), vastai_ssh_key, tmp_path)
    assert_clean(outcome)
    assert outcome.kind in ("success", "typed_failure")


@pytest.mark.parametrize("seed", CANCEL_SEEDS)
async def test_seeded_fault_combinations_cancelled_at_a_request_count_leak_nothing(
    seed: int, vastai_ssh_key: Path, tmp_path: Path
) -> None:
    outcome = await run_scenario(draw_scenario(seed, cancel=True), vastai_ssh_key, tmp_path)
    assert_clean(outcome)
    assert outcome.kind in ("success", "typed_failure", "cancelled")


async def test_winner_whose_host_drops_after_the_win_fails_typed_naming_it_and_leaks_nothing(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    """A login proves readiness when it happens; a host lost later is a typed error, no leak.

    The drop is triggered by the ``WinnerChosen`` event, not by a delay, so the outcome does
    not depend on the machine's speed.
    """
    offers = pick_offers(await vastai_service.search_offers(), 2)
    for offer, boot in zip(offers, (10.0, 40.0), strict=True):
        vastai_sandbox.set_boot_latency(offer.id, boot)

    async def drop_winner(event: Event) -> None:
        if isinstance(event, WinnerChosen):
            await vastai_sandbox.host_offline(event.instance_id)

    rental = await vastai_service.provision_instance(
        job_id="drop", offers=offers, fan_out=2, on_event=drop_winner
    )
    async with rental:
        with pytest.raises(SSHError) as info:
            await rental.run("true")
        assert info.value.instance_id == rental.instance_id
    assert vastai_sandbox.alive_instance_ids() == set()
