"""Chaos run: hundreds of seeded fault combinations and cancellation cuts, one summary table.

    python -m tests.reliability.chaos --runs 300 --seed 0

Every other run is cut by a cancellation at a seeded API request count (again 2 and 5 requests
later, inside the teardown). Every ``--storm-every``-th run is instead a load storm
(:mod:`tests.reliability.storm`): 100-150 concurrent provisions in one service with slow and
lost creates, a third of them cancelled, sometimes the service closed in flight; its own table
counts storms, provisions, leaks, unnamed leaks and untyped errors. The main table counts runs,
faults injected, successes, typed failures, cancellations, untyped failures, leaks, unhandled
loop errors and pacing excess. The exit status is 1 when any run leaked, failed untyped, left an
unhandled task error or exceeded pacing (or a storm left an unnamed leak or failed untyped), and
3 when a run hung (every task's stack is printed first).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from tests.reliability._harness import Outcome, Scenario, draw_scenario, run_scenario
from tests.reliability.storm import StormOutcome, run_storm
from vastai_async.config import generate_ssh_keypair

__all__ = ["main", "run_chaos", "storm_table", "summary_table"]

T = TypeVar("T")


async def run_chaos(
    runs: int,
    seed: int,
    *,
    verbose: bool = False,
    run_timeout_s: float = 120.0,
    storm_every: int = 0,
    storms: list[StormOutcome] | None = None,
) -> list[Outcome]:
    """Run ``runs`` scenarios from ``seed`` on; half of them with cancellation cuts.

    With ``storm_every`` > 0, every ``storm_every``-th run is a load storm instead, whose
    outcome goes to ``storms``. A run lasting over ``run_timeout_s`` is a hang: every task's
    stack goes to stderr and the process exits with status 3.
    """
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="vastai-chaos-") as tmp:
        key = Path(tmp) / "id_ed25519"
        generate_ssh_keypair(key)
        for n in range(runs):
            if storm_every and n % storm_every == storm_every - 1 and storms is not None:
                storm = await _watched(
                    run_storm(seed + n, key, Path(tmp) / "state"),
                    Scenario(seed=seed + n, faults=("storm",), fan_out=3, candidates=3),
                    run_timeout_s * 3,
                )
                storms.append(storm)
                if verbose or not storm.ok:
                    print(f"{'ok ' if storm.ok else 'BAD'} storm {storm}", file=sys.stderr)
                continue
            scenario = draw_scenario(seed + n, cancel=n % 2 == 1)
            outcome = await _watched(
                run_scenario(scenario, key, Path(tmp) / "state"), scenario, run_timeout_s
            )
            outcomes.append(outcome)
            if verbose or not outcome.ok:
                print(_line(outcome), file=sys.stderr, flush=True)
    return outcomes


async def _watched(run: Coroutine[Any, Any, T], scenario: Scenario, timeout_s: float) -> T:
    task = asyncio.ensure_future(run)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if task in done:
        return task.result()
    print(f"HANG {scenario}: stacks of every task follow", file=sys.stderr)
    for other in asyncio.all_tasks():
        other.print_stack(file=sys.stderr)
    sys.stderr.flush()
    os._exit(3)


def _line(outcome: Outcome) -> str:
    s = outcome.scenario
    flag = "ok " if outcome.ok else "BAD"
    cut = f" cut@{s.cancel_at_request}" if s.cancel_at_request is not None else ""
    detail = ""
    if not outcome.ok:
        detail = (
            f" leaked={list(outcome.leaked)} loop={list(outcome.loop_errors)}"
            f" pacing_excess={outcome.pacing_excess} error={outcome.error}"
        )
    return f"{flag} seed={s.seed} faults={','.join(s.faults)}{cut} -> {outcome.kind}{detail}"


def summary_table(outcomes: list[Outcome], wall_s: float) -> str:
    """The summary as a Markdown table (pasted as is into docs/reliability.md)."""
    kinds = Counter(o.kind for o in outcomes)
    per_fault = Counter(name for o in outcomes for name in o.scenario.faults)
    cut = sum(o.scenario.cancel_at_request is not None for o in outcomes)
    rows = [
        ("runs", len(outcomes)),
        ("runs with a cancellation cut", cut),
        ("faults injected", sum(len(o.scenario.faults) for o in outcomes)),
        ("distinct fault kinds", len(per_fault)),
        ("successes (`true` ran on the rental)", kinds["success"]),
        ("typed failures (VastAIError)", kinds["typed_failure"]),
        ("cancelled (CancelledError reached the caller)", kinds["cancelled"]),
        ("untyped failures", kinds["untyped_failure"]),
        ("leaks (instances alive after the run)", sum(len(o.leaked) for o in outcomes)),
        ("unhandled loop errors", sum(len(o.loop_errors) for o in outcomes)),
        ("pacing excess (requests over the paced rate)", sum(o.pacing_excess for o in outcomes)),
        ("429s from the sandbox's own limiter (retried)", sum(o.unexpected_429 for o in outcomes)),
        ("wall seconds", f"{wall_s:.0f}"),
    ]  # fmt: skip
    lines = ["| measure | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def storm_table(storms: list[StormOutcome]) -> str:
    """The load storms' summary as a Markdown table."""
    rows = [
        ("storms", len(storms)),
        ("storms closed with races in flight", sum(s.closed_in_flight for s in storms)),
        ("concurrent provisions", sum(s.provisions for s in storms)),
        ("successes", sum(s.success for s in storms)),
        ("typed failures (VastAIError)", sum(s.typed for s in storms)),
        ("cancelled", sum(s.cancelled for s in storms)),
        ("untyped failures", sum(len(s.untyped) for s in storms)),
        ("instances alive after close", sum(len(s.leaked) for s in storms)),
        (
            "of them named by a TeardownError's labels only (create in flight)",
            sum(len(s.by_label) for s in storms),
        ),
        (
            "of them named only by custody's WARNING (label + reap command)",
            sum(len(s.warned) for s in storms),
        ),
        ("of them named by nothing", sum(len(s.unnamed) for s in storms)),
        (
            "instances a label sweep saw before their create's answer (not taken for lost ones)",
            sum(s.reclaimed for s in storms),
        ),
    ]
    lines = ["| storm measure | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.chaos")
    parser.add_argument("--runs", type=int, default=200, help="scenarios to run")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--verbose", action="store_true", help="one line per run on stderr")
    parser.add_argument(
        "--run-timeout", type=float, default=120.0, help="seconds before a run counts as hung"
    )
    parser.add_argument(
        "--storm-every", type=int, default=10, help="every Nth run is a load storm (0: none)"
    )
    args = parser.parse_args(argv)
    # The SDK logs retried failures at WARNING; here only errors are worth a line.
    handler = logging.StreamHandler()
    handler.setLevel(logging.ERROR)
    logging.getLogger("vastai_async").addHandler(handler)
    started = time.monotonic()
    storms: list[StormOutcome] = []
    outcomes = asyncio.run(
        run_chaos(
            args.runs,
            args.seed,
            verbose=args.verbose,
            run_timeout_s=args.run_timeout,
            storm_every=args.storm_every,
            storms=storms,
        )
    )
    print(summary_table(outcomes, time.monotonic() - started))
    if storms:
        print()
        print(storm_table(storms))
    bad = [o for o in outcomes if not o.ok]
    bad_storms = [s.seed for s in storms if not s.ok]
    if bad_storms:
        print(f"\n{len(bad_storms)} bad storm(s): seeds {bad_storms}", file=sys.stderr)
    if bad or bad_storms:
        print(f"\n{len(bad)} bad run(s): seeds {[o.scenario.seed for o in bad]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
