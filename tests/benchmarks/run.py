"""Run every benchmark once and write the JSON, the Markdown table and the plot.

``python -m tests.benchmarks.run --out bench-results.json --markdown docs/benchmarks.md
--plot docs/img/benchmarks.png`` (what ``nox -s bench`` runs). Sizes are chosen so the whole run
takes about 15 minutes on 2 cores; ``--quick`` shrinks them for a smoke run. Method and
sizes: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs

from tests.benchmarks import report
from tests.benchmarks.micro import import_times, structuring
from tests.benchmarks.official import ensure_venv, run_official
from tests.benchmarks.scenario import ADVERSE, DEFAULT, ScenarioSpec, open_scenario
from tests.benchmarks.strategies import history_from, run_race, run_sequential
from vastai_async.hedging import HedgePolicy

Trial = Callable[[Any], Awaitable[dict[str, Any]]]
#: (strategy name, seed, scenario spec as a dict, official venv python or None, boot history)
Job = tuple[str, int, dict[str, Any], str | None, list[float] | None]

MARKETS: dict[str, ScenarioSpec] = {"default": DEFAULT, "adverse": ADVERSE}

#: The hedged policy measured (declared here, the same on both markets): start 3 of at most
#: 8 candidates; one more whenever a candidate in flight is not running past the 75th
#: percentile of the boot times seen in earlier provisions of the same market.
HEDGE = HedgePolicy(start=3, quantile=0.75)
HEDGE_FAN_OUT = 8

#: Strategies by market and seed group: ``main`` runs ``--seeds`` seeds, ``plot`` runs
#: ``--plot-seeds`` (curves of the fan-out plot only), ``aux`` runs ``--aux-seeds``.
PLAN: dict[str, dict[str, tuple[str, ...]]] = {
    "default": {
        "main": (
            "sequential_10s",
            "dstack_5s_600s",
            "race_k2",
            "race_k4",
            "race_k8",
            "race_k4_show",
            "race_all",
            "hedged",
        ),
        "plot": ("race_k1",),
        "aux": ("official_10s", "race_k4_realpacing"),
    },
    "adverse": {
        "main": ("sequential_10s", "dstack_5s_600s", "race_k4", "race_all", "hedged"),
        "plot": ("race_k1", "race_k2", "race_k8"),
        "aux": (),
    },
}


def _trial_fn(name: str, official_python: str | None, history: list[float] | None) -> Trial:
    if name.startswith("sequential_"):
        poll = float(name.removeprefix("sequential_").removesuffix("s"))
        return lambda sc: run_sequential(sc, poll_s=poll)
    if name == "dstack_5s_600s":
        return lambda sc: run_sequential(sc, poll_s=5.0, instance_deadline_s=600.0, name=name)
    if name.startswith("official_"):
        assert official_python is not None
        poll = float(name.removeprefix("official_").removesuffix("s"))
        return lambda sc: run_official(sc, python=Path(official_python), poll_s=poll)
    if name == "race_all":
        return lambda sc: run_race(sc, fan_out=len(sc.candidates), name=name)
    if name == "hedged":
        assert history is not None

        def hedged(sc: Any) -> Awaitable[dict[str, Any]]:
            policy = attrs.evolve(HEDGE, history=history_from(history))
            policy = policy.scaled(sc.spec.time_scale)
            return run_race(sc, fan_out=HEDGE_FAN_OUT, hedge=policy, name=name)

        return hedged
    k = int(name.removeprefix("race_k").split("_")[0])
    return lambda sc: run_race(
        sc,
        fan_out=k,
        per_instance_polling=name.endswith("_show"),
        real_pacing=name.endswith("_realpacing"),
    )


async def _trial(job: Job) -> dict[str, Any]:
    name, seed, spec_fields, official_python, history = job
    spec = ScenarioSpec(**spec_fields)
    with tempfile.TemporaryDirectory(prefix="vastai-bench-") as tmp:
        sc = await open_scenario(seed, spec, Path(tmp))
        try:
            result = await _trial_fn(name, official_python, history)(sc)
        except Exception as err:  # a crash is a result too: recorded, never hidden
            result = {
                "strategy": name,
                "seed": seed,
                "ok": False,
                "error": f"benchmark crashed: {type(err).__name__}: {err}",
            }
        finally:
            await sc.sandbox.close()
        result.update(
            market=spec.market, faults=sorted(sc.faults.values()), vanished=len(sc.vanished)
        )
        return result


def run_job(job: Job) -> dict[str, Any]:
    """One trial in a fresh event loop (called in a worker process)."""
    return asyncio.run(_trial(job))


def run_trials(jobs: list[Job], workers: int) -> list[dict[str, Any]]:
    """Every job, one scenario per worker process at a time.

    One scenario per process keeps the sandbox and the SDK of one trial alone on their event
    loop: network time (TCP, SSH handshakes) is real and would be inflated 1/time_scale times
    in simulated seconds if several scenarios competed for one loop.
    """
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return list(pool.imap_unordered(run_job, jobs, chunksize=1))


def _histories(trials: list[dict[str, Any]]) -> dict[tuple[str, int], list[float]]:
    """Per (market, seed): boot times (wall s) seen by race k=4 on the market's *other* seeds.

    A hedged race derives its delay from provisions it has seen before; here those are the
    k=4 races of the same market on every other seed (leave one out: never its own scenario).
    """
    by_market: dict[str, list[tuple[int, list[float]]]] = {}
    for t in trials:
        if t["strategy"] == "race_k4":
            by_market.setdefault(t["market"], []).append((t["seed"], t.get("boot_wall_s", [])))
    out: dict[tuple[str, int], list[float]] = {}
    for market, rows in by_market.items():
        for seed, _ in rows:
            out[(market, seed)] = [b for s, boots in rows if s != seed for b in boots]
    return out


def plan_jobs(args: argparse.Namespace, official_python: Path | None) -> list[Job]:
    """Every non-hedged trial: slow strategies first, so their tails overlap the races."""
    py = None if official_python is None else str(official_python)
    groups = {"main": args.seeds, "plot": args.plot_seeds, "aux": args.aux_seeds}
    jobs: list[Job] = []
    for market, plan in PLAN.items():
        spec = attrs.evolve(MARKETS[market], time_scale=args.time_scale)
        fields = attrs.asdict(spec)
        for group, names in plan.items():
            for name in names:
                if name == "hedged" or ("official" in name and official_python is None):
                    continue
                jobs += [(name, seed, fields, py, None) for seed in range(groups[group])]
    slow = ("sequential", "dstack", "official", "race_k1")
    jobs.sort(key=lambda j: (not j[0].startswith(slow), j[1]))
    return jobs


def hedged_jobs(args: argparse.Namespace, trials: list[dict[str, Any]]) -> list[Job]:
    """The hedged trials, each with the boot times of the market's other seeds."""
    histories = _histories(trials)
    jobs: list[Job] = []
    for market, plan in PLAN.items():
        if "hedged" not in plan["main"]:
            continue
        spec = attrs.evolve(MARKETS[market], time_scale=args.time_scale)
        fields = attrs.asdict(spec)
        for seed in range(args.seeds):
            jobs.append(("hedged", seed, fields, None, histories.get((market, seed), [])))
    return jobs


def _scale(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "tests.benchmarks.scale",
        "--provisions",
        str(args.scale_provisions),
        "--machines",
        str(args.scale_machines),
        "--time-scale",
        str(args.scale_time_scale),
        "--fan-out",
        "2",
        "--per-race",
        "4",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # noqa: S603 -- our own interpreter and arguments
    if done.returncode != 0:
        return {"error": done.stderr[-800:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--markdown", type=Path, default=None, help="docs page to update")
    parser.add_argument("--plot", type=Path, default=None, help="PNG to write")
    parser.add_argument("--seeds", type=int, default=64, help="seeds of the main strategies")
    parser.add_argument("--plot-seeds", type=int, default=32, help="seeds of plot-only curves")
    parser.add_argument("--aux-seeds", type=int, default=16, help="official client, real pacing")
    parser.add_argument("--workers", type=int, default=6, help="trial processes")
    parser.add_argument("--time-scale", type=float, default=0.05)
    parser.add_argument("--scale-provisions", type=int, default=500)
    parser.add_argument("--scale-machines", type=int, default=2000)
    parser.add_argument("--scale-time-scale", type=float, default=0.1)
    parser.add_argument("--structure-offers", type=int, default=10_000)
    parser.add_argument("--no-official", action="store_true", help="skip the official client")
    parser.add_argument("--no-scale", action="store_true", help="skip the load test")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.plot_seeds, args.aux_seeds = 3, 2, 2
        args.scale_provisions, args.scale_machines = 20, 150
        args.structure_offers = 2000
    # Keys and pins of the benchmark's sandboxes stay in a throwaway state folder.
    os.environ["VASTAI_STATE_DIR"] = tempfile.mkdtemp(prefix="vastai-bench-state-")
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg(),
        },
        "sizes": {},
    }
    official_python: Path | None = None
    if args.no_official:
        results["official"] = {"skipped": "--no-official given"}
    else:
        official_python, info = ensure_venv()
        key = "version" if official_python is not None else "skipped"
        results["official"] = {key: info}
    results["sizes"] = {
        "seeds": args.seeds,
        "plot_seeds": args.plot_seeds,
        "aux_seeds": args.aux_seeds,
        "markets": {
            m: attrs.asdict(attrs.evolve(spec, time_scale=args.time_scale))
            for m, spec in MARKETS.items()
        },
        "plan": PLAN,
        "hedge": {
            **attrs.asdict(HEDGE, filter=lambda a, v: a.name != "history"),
            "fan_out": HEDGE_FAN_OUT,
        },
        "workers": args.workers,
    }
    t = time.monotonic()
    trials = run_trials(plan_jobs(args, official_python), args.workers)
    trials += run_trials(hedged_jobs(args, trials), args.workers)
    results["trials"] = trials
    results["trials_wall_s"] = time.monotonic() - t
    t = time.monotonic()
    results["scale"] = {"skipped": "--no-scale given"} if args.no_scale else _scale(args)
    results["scale_wall_s"] = time.monotonic() - t
    with tempfile.TemporaryDirectory() as tmp:
        results["structuring"] = structuring(
            Path(tmp), count=args.structure_offers, repeat=5, official_python=official_python
        )
    results["import"] = import_times()
    results["total_wall_s"] = time.monotonic() - started
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    summary = report.summarize(results)
    results["figures"] = summary.pop("figures")
    results["figure_ci95"] = summary.pop("figure_ci95")
    results["summary"] = summary
    args.out.write_text(json.dumps(results, indent=1, default=str))
    if args.plot is not None:
        report.plot(results, args.plot)
    if args.markdown is not None:
        report.update_markdown(results, args.markdown)
    print(report.table(results))
    print(f"total {results['total_wall_s']:.0f} s wall; results in {args.out}")


if __name__ == "__main__":
    main()
