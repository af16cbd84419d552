"""The asyncio job runner: bounded concurrency, isolated failures, timeouts, zero leaks."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from vastai_async import VastAIService
from vastai_async.errors import SSHCommandError
from vastai_async.integrations import (
    JobCancelledError,
    JobResult,
    JobSpec,
    JobTimeoutError,
    run_job,
    run_jobs,
)
from vastai_async.sandbox import Sandbox


def _fast_boot(rng: random.Random) -> float:
    """Simulated boot latencies of 2-6 s (40-120 ms of wall time at time_scale 0.02)."""
    return rng.uniform(2.0, 6.0)


pytestmark = pytest.mark.vastai_sandbox(
    offers=40, time_scale=0.02, seed=21, boot_distribution=_fast_boot
)


def _creates(sandbox: Sandbox, job_id: str) -> int:
    """Create requests whose label names ``job_id`` (answered 200)."""
    return sum(
        1
        for r in sandbox.requests
        if r.route == "PUT /api/v0/asks/{id}/"
        and r.status == 200
        and f":{job_id}:" in (r.json() or {}).get("label", "")
    )


def _max_overlap(results: list[JobResult]) -> int:
    edges = sorted(
        [(r.times.started_at, 1) for r in results] + [(r.times.finished_at, -1) for r in results],
        key=lambda e: (e[0], e[1]),
    )
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


async def test_hundred_jobs_at_concurrency_ten_complete_with_outputs_and_leak_nothing(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    jobs = [
        JobSpec(job_id=f"batch-{i:03d}", commands=[f"echo out-{i}"], fan_out=2) for i in range(100)
    ]
    seen: list[str] = []
    results = await run_jobs(
        vastai_service, jobs, concurrency=10, on_result=lambda r: seen.append(r.job_id)
    )

    assert [r.job_id for r in results] == [j.job_id for j in jobs]
    assert all(r.ok for r in results), [str(r.error) for r in results if not r.ok]
    for i, result in enumerate(results):
        assert result.outputs[0].stdout == f"out-{i}\n"
        assert result.instance_id is not None
        assert result.estimated_spend_usd > 0
        assert result.times.provision_s is not None
    assert sorted(seen) == sorted(j.job_id for j in jobs)
    assert _max_overlap(results) <= 10
    assert len({r.instance_id for r in results}) == 100
    assert vastai_sandbox.alive_instance_ids() == set()
    assert vastai_sandbox.leak_report() == []


async def test_a_failing_job_is_reported_and_does_not_cancel_the_others(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    jobs = [
        JobSpec(job_id="bad", commands=["echo before", "false", "echo never"]),
        *(JobSpec(job_id=f"good-{i}", commands=["sleep 0.3", f"echo {i}"]) for i in range(4)),
    ]
    results = await run_jobs(vastai_service, jobs, concurrency=5)

    bad, *good = results
    assert not bad.ok
    assert isinstance(bad.error, SSHCommandError)
    assert bad.error.exit_status == 1
    assert [o.command for o in bad.outputs] == ["echo before", "false"]
    assert all(r.ok for r in good)
    assert [r.outputs[-1].stdout for r in good] == [f"{i}\n" for i in range(4)]
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_fail_fast_cancels_the_running_jobs_and_destroys_their_machines(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    jobs = [
        JobSpec(job_id="slow-0", commands=["sleep 30"]),
        JobSpec(job_id="fails", commands=["exit 7"]),
        JobSpec(job_id="slow-1", commands=["sleep 30"]),
        JobSpec(job_id="queued", commands=["echo never"]),
    ]
    started = time.monotonic()
    results = await run_jobs(vastai_service, jobs, concurrency=3, fail_fast=True)

    # The 30 s sleeps were cut short (they would take 30 s; any machine speed is below that).
    assert time.monotonic() - started < 29
    by_id = {r.job_id: r for r in results}
    assert isinstance(by_id["fails"].error, SSHCommandError)
    for job_id in ("slow-0", "slow-1", "queued"):
        assert isinstance(by_id[job_id].error, JobCancelledError), job_id
    assert _creates(vastai_sandbox, "queued") == 0
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_per_job_timeout_while_running_fails_that_job_only_and_leaks_nothing(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    jobs = [
        JobSpec(job_id="stuck", commands=["sleep 60"], timeout_s=1.5),
        JobSpec(job_id="fine", commands=["echo ok"], timeout_s=30),
    ]
    results = await run_jobs(vastai_service, jobs, concurrency=2)

    stuck, fine = results
    assert isinstance(stuck.error, JobTimeoutError)
    assert stuck.instance_id is not None  # it had a machine: the timeout hit while running
    assert stuck.times.total_s < 10
    assert fine.ok
    assert fine.outputs[0].stdout == "ok\n"
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_per_job_timeout_during_provisioning_leaks_nothing(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    for offer in await vastai_service.search_offers():
        vastai_sandbox.set_boot_latency(offer.id, 100_000.0)  # never boots
    result = await run_job(
        vastai_service, JobSpec(job_id="never-boots", commands=["true"], fan_out=3, timeout_s=1.0)
    )

    assert isinstance(result.error, JobTimeoutError)
    assert result.instance_id is None
    assert result.times.provisioned_at is None
    assert _creates(vastai_sandbox, "never-boots") >= 1  # candidates existed, then were destroyed
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_a_retry_adopts_the_machine_an_earlier_try_left_instead_of_renting(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, tmp_path: Path
) -> None:
    left = await vastai_service.provision_instance(job_id="retried", fan_out=1)
    assert _creates(vastai_sandbox, "retried") == 1

    (tmp_path / "in.txt").write_text("payload\n")
    spec = JobSpec(
        job_id="retried",
        commands=["cat in.txt"],
        uploads=[(str(tmp_path / "in.txt"), "in.txt")],
        downloads=[("in.txt", str(tmp_path / "back.txt"))],
    )
    result = await run_job(vastai_service, spec, adopt_previous=True)

    assert result.ok, result.error
    assert result.adopted
    assert result.instance_id == left.instance_id
    assert result.outputs[0].stdout == "payload\n"
    assert (tmp_path / "back.txt").read_text() == "payload\n"
    assert _creates(vastai_sandbox, "retried") == 1  # nothing new was rented
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_a_non_running_leftover_is_destroyed_before_a_new_machine_is_rented(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await vastai_service.search_offers()
    vastai_sandbox.set_boot_latency(offers[0].id, 100_000.0)
    first = await run_job(
        vastai_service, JobSpec(job_id="again", commands=["true"], timeout_s=0.5, fan_out=1)
    )
    assert isinstance(first.error, JobTimeoutError)
    # A crashed try would have left its loading candidate; recreate that situation by hand.
    await vastai_service.reap(job_id="again")
    left_id = await _create_labelled(
        vastai_sandbox, offers[0].id, "vastai-async:gone-1-abc:again:r1"
    )
    assert vastai_sandbox.alive_instance_ids() == {left_id}

    result = await run_job(
        vastai_service, JobSpec(job_id="again", commands=["echo fresh"]), adopt_previous=True
    )

    assert result.ok, result.error
    assert not result.adopted
    assert result.instance_id != left_id
    assert vastai_sandbox.alive_instance_ids() == set()


async def _create_labelled(sandbox: Sandbox, offer_id: int, label: str) -> int:
    import aiohttp

    headers = {"Authorization": f"Bearer {sandbox.api_key}"}
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{sandbox.url}/api/v0/asks/{offer_id}/",
            json={"client_id": "me", "image": "ubuntu", "disk": 10, "label": label},
            headers=headers,
        ) as resp,
    ):
        body = await resp.json()
    return int(body["new_contract"])
