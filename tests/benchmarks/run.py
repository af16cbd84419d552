"""Run every benchmark once and write the JSON, the Markdown table and the plot.

``python -m tests.benchmarks.run --out bench-results.json --markdown docs/benchmarks.md
--plot docs/img/benchmarks.png`` (what ``nox -s bench`` runs). Sizes are chosen so the whole run
takes well under 10 minutes on 2 cores; ``--quick`` shrinks them for a smoke run. Method and
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
from tests.benchmarks.scenario import ScenarioSpec, open_scenario
from tests.benchmarks.strategies import run_race, run_sequential

Trial = Callable[[Any], Awaitable[dict[str, Any]]]
#: (strategy name, seed, scenario spec as a dict, the official venv's python or None)
Job = tuple[str, int, dict[str, Any], str | None]

STRATEGIES = (
    "sequential_10s",
    "sequential_5s",
    "official_10s",
    "race_k1",
    "race_k2",
    "race_k4",
    "race_k8",
    "race_k4_show",
    "race_k4_realpacing",
)


def _trial_fn(name: str, official_python: str | None) -> Trial:
    if name.startswith("sequential_"):
        poll = float(name.removeprefix("sequential_").removesuffix("s"))
        return lambda sc: run_sequential(sc, poll_s=poll)
    if name.startswith("official_"):
        assert official_python is not None
        poll = float(name.removeprefix("official_").removesuffix("s"))
        return lambda sc: run_official(sc, python=Path(official_python), poll_s=poll)
    k = int(name.removeprefix("race_k").split("_")[0])
    return lambda sc: run_race(
        sc,
        fan_out=k,
        per_instance_polling=name.endswith("_show"),
        real_pacing=name.endswith("_realpacing"),
    )


async def _trial(job: Job) -> dict[str, Any]:
    name, seed, spec_fields, official_python = job
    spec = ScenarioSpec(**spec_fields)
    with tempfile.TemporaryDirectory(prefix="vastai-bench-") as tmp:
        sc = await open_scenario(seed, spec, Path(tmp))
        try:
            result = await _trial_fn(name, official_python)(sc)
        except Exception as err:  # a crash is a result too: recorded, never hidden
            result = {
                "strategy": name,
                "seed": seed,
                "ok": False,
                "error": f"benchmark crashed: {type(err).__name__}: {err}",
            }
        finally:
            await sc.sandbox.close()
        result.update(faults=sorted(sc.faults.values()), vanished=len(sc.vanished))
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
        return list(pool.imap_unordered(run_job, jobs))


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
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400)  # noqa: S603 -- our own interpreter and arguments
    if done.returncode != 0:
        return {"error": done.stderr[-800:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"))
    parser.add_argument("--markdown", type=Path, default=None, help="docs page to update")
    parser.add_argument("--plot", type=Path, default=None, help="PNG to write")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--workers", type=int, default=3, help="trial processes")
    parser.add_argument("--time-scale", type=float, default=0.05)
    parser.add_argument("--scale-provisions", type=int, default=200)
    parser.add_argument("--scale-machines", type=int, default=1000)
    parser.add_argument("--scale-time-scale", type=float, default=0.1)
    parser.add_argument("--structure-offers", type=int, default=10_000)
    parser.add_argument("--no-official", action="store_true", help="skip the official client")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.scale_provisions, args.scale_machines = 3, 20, 150
        args.structure_offers = 2000
    # Keys and pins of the benchmark's sandboxes stay in a throwaway state folder.
    os.environ["VASTAI_STATE_DIR"] = tempfile.mkdtemp(prefix="vastai-bench-state-")
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
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
    spec = ScenarioSpec(time_scale=args.time_scale)
    seeds = list(range(args.seeds))
    names = [n for n in STRATEGIES if official_python is not None or "official" not in n]
    # Slow strategies (sequential, official) first, so their tails overlap with the races.
    spec_fields = attrs.asdict(spec)
    py = None if official_python is None else str(official_python)
    jobs: list[Job] = [(n, s, spec_fields, py) for n in names for s in seeds]
    results["sizes"] = {
        "seeds": seeds,
        "scenario": attrs.asdict(spec),
        "workers": args.workers,
        "strategies": names,
    }
    t = time.monotonic()
    results["trials"] = run_trials(jobs, args.workers)
    results["trials_wall_s"] = time.monotonic() - t
    t = time.monotonic()
    results["scale"] = _scale(args)
    results["scale_wall_s"] = time.monotonic() - t
    with tempfile.TemporaryDirectory() as tmp:
        results["structuring"] = structuring(
            Path(tmp), count=args.structure_offers, repeat=5, official_python=official_python
        )
    results["import"] = import_times()
    results["total_wall_s"] = time.monotonic() - started
    results["summary"] = report.summarize(results)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    if args.plot is not None:
        report.plot(results, args.plot)
    if args.markdown is not None:
        report.update_markdown(results, args.markdown)
    print(report.table(results))
    print(f"total {results['total_wall_s']:.0f} s wall; results in {args.out}")


if __name__ == "__main__":
    main()
