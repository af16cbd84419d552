"""Chaos run: hundreds of seeded fault combinations and cancellation cuts, one summary table.

    python -m tests.reliability.chaos --runs 300 --seed 0

Every other run is cut by a cancellation at a seeded API request count (again 2 and 5 requests
later, inside the teardown). The table counts runs, faults injected, successes, typed failures,
cancellations, untyped failures, leaks, unhandled loop errors and pacing excess. The exit status
is 1 when any run leaked, failed untyped, left an unhandled task error or exceeded pacing, and
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
from typing import Any

from tests.reliability._harness import Outcome, Scenario, draw_scenario, run_scenario
from vastai_async.config import generate_ssh_keypair

__all__ = ["main", "run_chaos", "summary_table"]


async def run_chaos(
    runs: int, seed: int, *, verbose: bool = False, run_timeout_s: float = 120.0
) -> list[Outcome]:
    """Run ``runs`` scenarios from ``seed`` on; half of them with cancellation cuts.

    A run lasting over ``run_timeout_s`` is a hang: every task's stack goes to stderr and the
    process exits with status 3 (a hang may sit in a teardown no cancellation can stop).
    """
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="vastai-chaos-") as tmp:
        key = Path(tmp) / "id_ed25519"
        generate_ssh_keypair(key)
        for n in range(runs):
            scenario = draw_scenario(seed + n, cancel=n % 2 == 1)
            outcome = await _watched(
                run_scenario(scenario, key, Path(tmp) / "state"), scenario, run_timeout_s
            )
            outcomes.append(outcome)
            if verbose or not outcome.ok:
                print(_line(outcome), file=sys.stderr, flush=True)
    return outcomes


async def _watched(
    run: Coroutine[Any, Any, Outcome], scenario: Scenario, timeout_s: float
) -> Outcome:
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


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.chaos")
    parser.add_argument("--runs", type=int, default=200, help="scenarios to run")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--verbose", action="store_true", help="one line per run on stderr")
    parser.add_argument(
        "--run-timeout", type=float, default=120.0, help="seconds before a run counts as hung"
    )
    args = parser.parse_args(argv)
    # The SDK logs retried failures at WARNING; here only errors are worth a line.
    handler = logging.StreamHandler()
    handler.setLevel(logging.ERROR)
    logging.getLogger("vastai_async").addHandler(handler)
    started = time.monotonic()
    outcomes = asyncio.run(
        run_chaos(args.runs, args.seed, verbose=args.verbose, run_timeout_s=args.run_timeout)
    )
    print(summary_table(outcomes, time.monotonic() - started))
    bad = [o for o in outcomes if not o.ok]
    if bad:
        print(f"\n{len(bad)} bad run(s): seeds {[o.scenario.seed for o in bad]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
