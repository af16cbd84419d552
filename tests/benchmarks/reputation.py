"""Host reputation benchmark: does a warm history make race_k4 faster, cheaper, never worse?

``python -m tests.benchmarks.reputation --out bench-reputation.json --plot
docs/img/hosts-expected-vs-measured.png`` (``--quick`` for a smoke run).

For each seed, one scenario of tests/benchmarks/scenario.py (the same market, faults and
vanished offers as the main benchmark), then:

0. cold pairs, described in 4;
1. warm-up: ``--history`` provisions (race_k4, ranking on) recorded by the SDK itself into a
   fresh SQLite history; nothing is handed in;
2. warm: ``--trials`` measured provisions with that history, alternating with cold ones (the
   same race with ``host_history=False``: the caller's cheapest-first order) on the same market;
3. drift: the machines the history likes best get 8 times slower (the sandbox's
   ``BootModel.drift``), then warm and cold trials again;
4. cold (run first): the SDK's default with an empty store (ranking on, but nothing known) vs
   the same race with no store at all, trial by trial on the same market.

Besides: a burst of 100 rankings started together against a full SQLite store (its
default bound, 20,000 records over 1,000 machines) with a fresh ranker, in wall seconds: a
hundred provisions starting at once must not each read and fit the whole history.

Time to SSH is from the call to the winner's proven login, in simulated seconds. The
all-candidates oracle of a trial is the same race had it rented the best machine: its measured
time minus its winner's boot latency plus the lowest current typical boot latency among the
candidates that could work (healthy and not vanished). The ratio is about the choice of
machines, not about the SSH and polling overheads every strategy pays; its figure is the median
of the per-trial ratios (each trial against its own oracle, as the market drifts). Loser USD is
what the sandbox's ledger charged for every instance of the trial except the winner.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

from tests.benchmarks.scenario import Scenario, ScenarioSpec, open_scenario, percentile
from vastai_async.errors import VastAIError
from vastai_async.events import Event, WinnerChosen
from vastai_async.models import Offer
from vastai_async.reputation import (
    HostOutcome,
    OfferRanker,
    OffersRanked,
    OutcomeKind,
    SQLiteHostHistory,
)
from vastai_async.service import VastAIService

IMAGE = "vastai/pytorch:latest"


def _best_typical_s(sc: Scenario) -> float:
    boot = sc.sandbox.boot
    usable = [
        o
        for o in sc.candidates
        if o.machine_id is not None and o.machine_id not in sc.faults and o.id not in sc.vanished
    ]
    return min(boot.typical(o.machine_id) for o in usable if o.machine_id is not None)


def _ledger_total(sc: Scenario) -> dict[int, float]:
    return {e["instance_id"]: float(e["total_usd"]) for e in sc.sandbox.ledger()}


async def _trial(sc: Scenario, service: VastAIService, *, rank: bool, job: str) -> dict[str, Any]:
    events: list[Event] = []
    before = set(_ledger_total(sc))
    best = _best_typical_s(sc)
    t0 = time.time()
    out: dict[str, Any] = {"rank": rank, "ok": False, "best_typical_s": best}
    try:
        rental = await service.provision_instance(
            job_id=job,
            offers=sc.candidates,
            fan_out=4,
            image=IMAGE,
            on_event=events.append,
            rank=rank,
        )
    except VastAIError as err:
        out["error"] = f"{type(err).__name__}: {err}"
        return out
    won = next(e for e in events if isinstance(e, WinnerChosen))
    ranked = next((e for e in events if isinstance(e, OffersRanked)), None)
    winner_boot_s = sc.sandbox.cloud.instances[won.instance_id].boot_s
    await rental.terminate()
    ledger = _ledger_total(sc)
    scale = sc.spec.time_scale
    out.update(
        ok=True,
        time_to_ssh_s=(won.at - t0) / scale,
        winner_boot_s=winner_boot_s,
        # The same race had it rented the best machine: its overheads, the best boot.
        oracle_s=(won.at - t0) / scale - winner_boot_s + best,
        measured_login_s=won.elapsed_s / scale,
        loser_usd=sum(v for i, v in ledger.items() if i not in before and i != won.instance_id),
    )
    if ranked is not None:
        entry = next((e for e in ranked.entries if e.offer_id == won.offer_id), None)
        if entry is not None and entry.records > 0:
            out["expected_login_s"] = entry.expected_login_s / scale
    return out


async def run_seed(seed: int, *, history: int, trials: int, spec: ScenarioSpec) -> dict[str, Any]:
    """Cold pairs, warm-up, warm vs cold, drift, for one seed."""
    with tempfile.TemporaryDirectory(prefix="vastai-rep-") as tmp:
        sc = await open_scenario(seed, spec, Path(tmp))
        # "The same market": no natural drift while it is measured (a machine rented a hundred
        # times would drift twice on average and reshuffle the market under both strategies);
        # the drift scenario below changes machines on purpose.
        sc.sandbox.boot.drift_rate = 0.0
        result: dict[str, Any] = {"seed": seed}
        for name in ("cold_sdk", "cold_pair", "cold", "warm", "drift_warm", "drift_cold"):
            result[name] = []
        owner = sc.config.owner
        off = attrs.evolve(sc.config, owner=f"{owner}-off")
        try:
            # Cold: the SDK's default (an empty store, ranking on) vs no store at all.
            for i in range(trials):
                empty = SQLiteHostHistory(Path(tmp) / f"empty-{i}.sqlite3")
                async with VastAIService(config=sc.config, host_history=empty) as sdk:
                    result["cold_sdk"].append(await _trial(sc, sdk, rank=True, job=f"e-{i}"))
                async with VastAIService(config=off, host_history=False) as plain:
                    result["cold_pair"].append(await _trial(sc, plain, rank=False, job=f"c-{i}"))
            store = SQLiteHostHistory(Path(tmp) / "hosts.sqlite3")
            async with (
                VastAIService(config=sc.config, host_history=store) as warm,
                VastAIService(config=off, host_history=False) as cold,
            ):
                for i in range(history):
                    await _trial(sc, warm, rank=True, job=f"warmup-{i}")
                for i in range(trials):
                    result["warm"].append(await _trial(sc, warm, rank=True, job=f"w-{i}"))
                    result["cold"].append(await _trial(sc, cold, rank=False, job=f"k-{i}"))
                # Drift: the machines the history likes best turn 8 times slower.
                _, ranking = await warm._reputation.order(sc.candidates, True)
                assert ranking is not None
                drifted = [e.machine_id for e in ranking.entries[:3] if e.machine_id is not None]
                for machine_id in drifted:
                    sc.sandbox.boot.drift(machine_id, 8.0)
                result["drifted"] = drifted
                for i in range(trials):
                    result["drift_warm"].append(await _trial(sc, warm, rank=True, job=f"dw-{i}"))
                    result["drift_cold"].append(await _trial(sc, cold, rank=False, job=f"dc-{i}"))
        finally:
            await sc.sandbox.close()
    return result


def _p50(trials: list[dict[str, Any]], key: str) -> float | None:
    return percentile([t[key] for t in trials if t.get("ok") and key in t], 0.5)


def _mean(trials: list[dict[str, Any]], key: str) -> float | None:
    values = [t[key] for t in trials if t.get("ok") and key in t]
    return sum(values) / len(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


async def rank_burst(ranks: int, *, records: int = 20_000, machines: int = 1_000) -> float:
    """Wall seconds for ``ranks`` concurrent :meth:`OfferRanker.rank` on a full store."""
    rng = random.Random(0)
    now = time.time()
    kinds = [OutcomeKind.WON, OutcomeKind.LOST_LOADING, OutcomeKind.STUCK]
    rows = [
        HostOutcome(machine_id=rng.randrange(machines), offer_id=i, kind=rng.choice(kinds),
                    login_s=rng.uniform(10, 600), elapsed_s=rng.uniform(10, 600), at=now - i)
        for i in range(records)
    ]  # fmt: skip
    offers = [
        Offer(id=m, machine_id=m, dph_total=rng.uniform(0.2, 3.0), reliability=0.98,
              gpu_name="RTX 4090", num_gpus=1)
        for m in rng.sample(range(machines), 60)
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vastai-rank-burst-") as tmp:
        store = SQLiteHostHistory(
            Path(tmp) / "hosts.sqlite3", max_records=records, max_per_machine=records
        )
        await store.record(rows)
        ranker = OfferRanker(store)  # fresh: nothing cached
        started = time.perf_counter()
        await asyncio.gather(*(ranker.rank(offers) for _ in range(ranks)))
        return time.perf_counter() - started


def figures(seeds: list[dict[str, Any]], burst_s: float | None = None) -> list[dict[str, Any]]:
    """The issue's ``reputation.*`` figures, pooled over seeds (and the ranking burst's)."""

    def pool(name: str) -> list[dict[str, Any]]:
        return [t for s in seeds for t in s[name]]

    warm, cold = pool("warm"), pool("cold")
    cold_sdk, cold_pair = pool("cold_sdk"), pool("cold_pair")
    dwarm, dcold = pool("drift_warm"), pool("drift_cold")
    rows = [
        ("reputation.warm.race_k4_vs_all_candidates_oracle.p50_ratio",
         percentile([t["time_to_ssh_s"] / t["oracle_s"] for t in warm if t.get("ok")], 0.5),
         1.15),
        ("reputation.warm.race_k4_vs_cold_race_k4.p50_ratio",
         _ratio(_p50(warm, "time_to_ssh_s"), _p50(cold, "time_to_ssh_s")), 0.80),
        ("reputation.warm.loser_usd_vs_cold_k4",
         _ratio(_mean(warm, "loser_usd"), _mean(cold, "loser_usd")), 1.0),
        ("reputation.drift.race_k4_vs_cold_race_k4.p50_ratio",
         _ratio(_p50(dwarm, "time_to_ssh_s"), _p50(dcold, "time_to_ssh_s")), 1.0),
        ("reputation.cold.race_k4_vs_cold_race_k4.p50_ratio",
         _ratio(_p50(cold_sdk, "time_to_ssh_s"), _p50(cold_pair, "time_to_ssh_s")), 1.05),
        ("reputation.rank.burst100_full_store_s", burst_s, 1.0),
    ]  # fmt: skip
    return [
        {
            "figure": name,
            "value": value,
            "target": f"<= {limit:g}",
            "met": None if value is None else value <= limit,
            "note": "",
        }
        for name, value, limit in rows
    ]


def plot(seeds: list[dict[str, Any]], path: Path) -> None:
    """Expected (the ranker, before the race) vs measured time to SSH of each warm winner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        (t["expected_login_s"], t["measured_login_s"])
        for s in seeds
        for name in ("warm", "drift_warm")
        for t in s[name]
        if t.get("ok") and "expected_login_s" in t
    ]
    drift = [
        (t["expected_login_s"], t["measured_login_s"])
        for s in seeds
        for t in s["drift_warm"]
        if t.get("ok") and "expected_login_s" in t
    ]
    fig, ax = plt.subplots(figsize=(6, 5))
    steady = [p for p in points if p not in drift]
    ax.scatter([p[0] for p in steady], [p[1] for p in steady], s=18, label="warm history")
    ax.scatter([p[0] for p in drift], [p[1] for p in drift], s=18, marker="x",
               label="after drift")  # fmt: skip
    top = max([max(p) for p in points], default=100.0) * 1.1
    ax.plot([0, top], [0, top], color="grey", linewidth=1, label="expected = measured")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("expected time to SSH login of the winner (simulated s)")
    ax.set_ylabel("measured time to SSH login (simulated s)")
    ax.set_title("Host history: expected vs measured, race_k4 on the sandbox")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-reputation.json"))
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument(
        "--merge-into",
        type=Path,
        default=None,
        help="also write the figures into this bench-results.json (its figures and reputation)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--quick", action="store_true", help="1 seed, 8 warm-ups, 3 trials")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.history, args.trials = args.seeds[:1], 8, 3
    spec = ScenarioSpec(time_scale=args.time_scale)
    started = time.time()
    seeds = [
        asyncio.run(run_seed(seed, history=args.history, trials=args.trials, spec=spec))
        for seed in args.seeds
    ]
    burst_s = asyncio.run(rank_burst(100))
    figs = figures(seeds, burst_s)
    doc = {
        "figures": figs,
        "settings": {
            "seeds": args.seeds,
            "history": args.history,
            "trials": args.trials,
            "time_scale": args.time_scale,
            "scenario": {"machines": spec.machines, "candidates": spec.candidates},
            "wall_s": time.time() - started,
        },
        "seeds": seeds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    if args.merge_into is not None and args.merge_into.exists():
        results = json.loads(args.merge_into.read_text())
        results.setdefault("figures", {}).update({f["figure"]: f["value"] for f in figs})
        results["reputation"] = {
            "source": "python -m tests.benchmarks.reputation",
            "figures": figs,
            "settings": doc["settings"],
        }
        args.merge_into.write_text(json.dumps(results, indent=2) + "\n")
    if args.plot is not None:
        plot(seeds, args.plot)
    for fig in figs:
        print(f"{fig['figure']}: {fig['value']} (target {fig['target']}, met {fig['met']})")


if __name__ == "__main__":
    main()
