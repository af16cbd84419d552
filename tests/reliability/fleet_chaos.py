"""Fleet chaos: arq worker processes killed and robbed of their Redis data; one summary table.

    python -m tests.reliability.fleet_chaos --runs 8 --seed 0

Each run starts one sandbox, a throwaway ``redis-server`` (no persistence) and three worker
processes (heartbeat TTL 2 s, reaper tick 1 s), enqueues jobs that sleep 0.5-3 s, and at a
seeded moment plays one scenario (they rotate):

- ``kill``: SIGKILL a busy worker; no worker starts: its peers must reap its machines.
- ``kill+replace``: SIGKILL a busy worker and start another one.
- ``redis-loss+kill``: restart Redis without its data mid-jobs (the queue is lost too), then
  SIGKILL a busy worker once the survivors registered again.
- ``retry-race``: workers with a heartbeat TTL of 20 s and a job timeout of 9 s: the dead
  worker's machines become reapable about when arq retries its jobs (after the job timeout plus
  10 s), and each adoption's first look at the machine is slowed by 1.5 s, so retries adopt
  while peers reap.

The table counts runs, jobs enqueued, completed, lost with Redis's data, double rentals (two
machines of one job alive in the same 20 ms sample), late reaps (a dead worker's machine alive
past its bound: 2 x TTL + one tick after the kill) and leaked machines (alive once every worker
stopped), and how often the adopt-vs-reap protocol came into play (a retry adopted, a reap
spared a machine being adopted, a retry waited for a reaper). The exit status is 1 when any run
double-rented, reaped late or leaked.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job

from tests.integrations._arq_workers import ThrowawayRedis, Workers
from vastai_async.integrations import JobSpec
from vastai_async.integrations.arq import enqueue_gpu_job
from vastai_async.labels import parse_label
from vastai_async.sandbox import HTTPFault, Sandbox

__all__ = ["SCENARIOS", "FleetOutcome", "main", "run_fleet_chaos", "summary_table"]

SCENARIOS = ("kill", "kill+replace", "redis-loss+kill", "retry-race")
JOBS = 12
WORKERS = 3
TICK = 1.0
SHOW_ROUTE = "GET /api/v0/instances/{id}/"


@attrs.frozen(kw_only=True)
class FleetOutcome:
    """What one run saw."""

    seed: int
    scenario: str
    jobs: int = 0
    completed: int = 0
    lost: int = 0
    failed: int = 0
    double: tuple[str, ...] = ()
    late: tuple[int, ...] = ()
    reap_s: float | None = None
    bound_s: float = 0.0
    leaked: tuple[int, ...] = ()
    adopted: int = 0
    spared: int = 0
    waited: int = 0
    failures: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.double or self.late or self.leaked or self.error)


def _fast_boot(rng: random.Random) -> float:
    return rng.uniform(2.0, 6.0)  # simulated seconds: 40-120 ms at time_scale 0.02


class _Sampler:
    """Samples the sandbox every 20 ms: which jobs ever had two machines alive at once."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.double: set[str] = set()

    async def run(self) -> None:
        while True:
            seen: dict[str, int] = {}
            for inst in self.sandbox.instances():
                parsed = parse_label(inst.get("label"))
                if parsed is not None and parsed.owner is not None:
                    seen[parsed.job_id] = seen.get(parsed.job_id, 0) + 1
            self.double.update(job for job, n in seen.items() if n > 1)
            await asyncio.sleep(0.02)


async def _poll(check: Callable[[], Awaitable[bool]], within_s: float) -> bool:
    """Poll ``check`` until true (``True``) or ``within_s`` passed (``False``)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while loop.time() < end:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


def _owned_by(sandbox: Sandbox, owner: str) -> list[int]:
    return [
        inst["id"]
        for inst in sandbox.instances()
        if (p := parse_label(inst.get("label"))) is not None and p.owner == owner
    ]


async def run_one(seed: int, scenario: str, tmp: Path) -> FleetOutcome:
    """One run of ``scenario`` from ``seed`` (see the module doc)."""
    rng = random.Random(seed)
    ttl, job_timeout = (20.0, 9.0) if scenario == "retry-race" else (2.0, 8.0)
    bound = 2 * ttl + TICK
    dep = f"c{seed}{rng.randrange(16**4):04x}"
    redis = ThrowawayRedis(tmp / "redis")
    await redis.start()
    async with Sandbox(
        seed=seed, offers=150, time_scale=0.02, boot_distribution=_fast_boot
    ) as sandbox:
        workers = Workers(
            sandbox, tmp, deployment=dep, queue=f"arq:chaos:{dep}", redis_url=redis.url
        )
        sampler = _Sampler(sandbox)
        sampling = asyncio.create_task(sampler.run())
        pool: ArqRedis | None = None
        try:
            for _ in range(WORKERS):
                await workers.start(ttl=ttl, tick=TICK, job_timeout=job_timeout, max_jobs=4)
            pool = await create_pool(RedisSettings.from_dsn(redis.url))
            specs = [
                JobSpec(
                    job_id=f"{dep}-j{n:02d}",
                    commands=[f"sleep {rng.uniform(0.5, 3.0):.2f}", f"echo {n}"],
                    fan_out=1,
                )
                for n in range(JOBS)
            ]
            for spec in specs:
                await enqueue_gpu_job(pool, spec, _queue_name=workers.queue)
            # The chaos moment, in wall time: the workers are other processes.
            await asyncio.sleep(rng.uniform(0.8, 2.0))
            lost_data = scenario == "redis-loss+kill"
            if lost_data:
                await pool.aclose()
                await redis.restart_empty()
                pool = await create_pool(RedisSettings.from_dsn(redis.url))
                await asyncio.sleep(ttl / 2)  # two heartbeat intervals: everyone registered
            busy = [i for i in range(WORKERS) if _owned_by(sandbox, workers.owner(i))]
            victim = rng.choice(busy or list(range(WORKERS)))
            machines = _owned_by(sandbox, workers.owner(victim))
            await workers.stop(victim, signal.SIGKILL)
            killed_at = asyncio.get_running_loop().time()
            if scenario == "kill+replace":
                await workers.start(ttl=ttl, tick=TICK, job_timeout=job_timeout, max_jobs=4)
            if scenario == "retry-race":
                slow = HTTPFault(kind="slow", route=SHOW_ROUTE, delay_s=1.5, times=None)
                sandbox.add_fault(slow)

            async def reaped() -> bool:
                return not set(machines) & sandbox.alive_instance_ids()

            await _poll(reaped, 3 * bound)
            reap_s = asyncio.get_running_loop().time() - killed_at
            late = tuple(sorted(set(machines) & sandbox.alive_instance_ids())) or (
                tuple(machines) if reap_s > bound else ()
            )
            completed, failures, lost = await _results(pool, workers, specs, job_timeout)
            for index in range(len(workers.procs)):
                if workers.alive(index):
                    await workers.stop(index)
            sampling.cancel()
            logs = "".join(workers.log(i) for i in range(len(workers.procs)))
            return FleetOutcome(
                seed=seed,
                scenario=scenario,
                jobs=len(specs),
                completed=completed,
                lost=lost if lost_data else 0,
                failed=len(failures) + (0 if lost_data else lost),
                failures=failures,
                double=tuple(sorted(sampler.double)),
                late=late,
                reap_s=reap_s if machines else None,
                bound_s=bound,
                leaked=tuple(sorted(sandbox.alive_instance_ids())),
                adopted=logs.count(": adopted instance"),
                spared=logs.count("is leased: spared"),
                waited=logs.count("waiting for the reaper"),
            )
        except Exception as err:  # reported in the table, never hidden
            return FleetOutcome(seed=seed, scenario=scenario, error=f"{type(err).__name__}: {err}")
        finally:
            sampling.cancel()
            await workers.close()
            if pool is not None:
                await pool.aclose()
            await redis.stop()


async def _results(
    pool: ArqRedis, workers: Workers, specs: list[JobSpec], job_timeout: float
) -> tuple[int, tuple[str, ...], int]:
    """Wait until every job has a result, or nothing is queued, running or due for a retry.

    Returns:
        (completed ok, "job: error" of each failed one, how many have no result).
    """
    ids = [s.job_id for s in specs]

    async def settled() -> bool:
        results = [await pool.get(f"arq:result:{i}") for i in ids]
        if all(results):
            return True
        queued = await pool.zcard(workers.queue)
        running = [k async for k in pool.scan_iter("arq:in-progress:*")]
        return queued == 0 and not running

    # A killed worker's job is retried once arq's in-progress key expires (job timeout + 10 s).
    await _poll(settled, job_timeout + 10 + 30)
    ok = missing = 0
    failures: list[str] = []
    for job_id in ids:
        info = await Job(job_id, pool).result_info()
        if info is None:
            missing += 1
        elif info.success and isinstance(info.result, dict) and info.result.get("ok"):
            ok += 1
        else:
            error = info.result.get("error") if isinstance(info.result, dict) else info.result
            failures.append(f"{job_id}: {error}")
    return ok, tuple(failures), missing


async def run_fleet_chaos(
    runs: int, seed: int, *, scenarios: tuple[str, ...] = SCENARIOS, verbose: bool = False
) -> list[FleetOutcome]:
    """``runs`` runs from ``seed`` on, the ``scenarios`` in rotation."""
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="vastai-fleet-chaos-") as tmp:
        for n in range(runs):
            scenario = scenarios[n % len(scenarios)]
            started = time.monotonic()
            outcome = await run_one(seed + n, scenario, Path(tmp) / f"run-{n}")
            outcomes.append(outcome)
            if verbose or not outcome.ok:
                print(f"{_line(outcome)} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return outcomes


def _line(o: FleetOutcome) -> str:
    flag = "ok " if o.ok else "BAD"
    reap = "-" if o.reap_s is None else f"{o.reap_s:.1f}/{o.bound_s:.0f}s"
    text = (
        f"{flag} seed={o.seed} {o.scenario}: jobs={o.jobs} completed={o.completed} "
        f"lost={o.lost} failed={o.failed} reap={reap} double={list(o.double)} "
        f"late={list(o.late)} leaked={list(o.leaked)} adopted={o.adopted} "
        f"reaper-spared-adoption={o.spared} retry-waited-for-reaper={o.waited}"
    )
    text += "".join(f"\n    failed {f}" for f in o.failures)
    return text + (f" error={o.error}" if o.error else "")


def summary_table(outcomes: list[FleetOutcome]) -> str:
    """The markdown table of a chaos run."""
    rows = [
        ("runs", len(outcomes)),
        ("jobs enqueued", sum(o.jobs for o in outcomes)),
        ("jobs completed", sum(o.completed for o in outcomes)),
        ("jobs lost with Redis's data", sum(o.lost for o in outcomes)),
        ("jobs failed or missing otherwise", sum(o.failed for o in outcomes)),
        ("double rentals", sum(len(o.double) for o in outcomes)),
        ("late reaps (machines)", sum(len(o.late) for o in outcomes)),
        ("leaked machines", sum(len(o.leaked) for o in outcomes)),
        ("runs with an error", sum(o.error is not None for o in outcomes)),
        ("retries that adopted a dead worker's machine", sum(o.adopted for o in outcomes)),
        ("reaps that spared a machine being adopted", sum(o.spared for o in outcomes)),
        ("retry listings that waited for a reaper", sum(o.waited for o in outcomes)),
    ]
    reaps = [o.reap_s / o.bound_s for o in outcomes if o.reap_s is not None and o.bound_s]
    if reaps:
        rows.append(("slowest reap (share of its bound)", f"{max(reaps):.0%}"))
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry: run, print the table; 1 when anything double-rented, leaked or late."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated, in rotation (default: {','.join(SCENARIOS)})",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    scenarios = tuple(args.scenarios.split(","))
    if unknown := set(scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    if not ThrowawayRedis.available():
        print("redis-server is not installed", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", "Call to deprecated close", DeprecationWarning)
    logging.basicConfig(level=logging.ERROR)
    outcomes = asyncio.run(
        run_fleet_chaos(args.runs, args.seed, scenarios=scenarios, verbose=args.verbose)
    )
    print(summary_table(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
