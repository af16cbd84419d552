"""Turn raw benchmark results into figures against the issue's targets, tables and a plot.

Every ratio comes with a 95% bootstrap confidence interval: seeds resampled with replacement
(paired: both strategies of a ratio keep the same resampled seeds, since they met the same
scenarios), 2,000 resamples from a fixed seed, percentile interval.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.benchmarks.scenario import percentile

__all__ = ["TARGETS", "plot", "summarize", "table", "update_markdown"]

#: The overall deadline (simulated s): a failed provision counts as taking this long.
CENSOR_S = 1800.0
START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"
RESAMPLES = 2000
BOOT_SEED = 15

#: The issue's targets: figure key -> (operator, limit).
TARGETS: dict[str, tuple[str, float]] = {
    "default.seeds": (">=", 64),
    "default.race_k4_vs_seq10.median_ratio": ("<=", 0.70),
    "default.race_k4_vs_seq10.p95_ratio": ("<=", 0.15),
    "default.race_k4_vs_dstack600.p95_ratio": ("<=", 0.20),
    "default.race_k4_minus_oracle.p50_s": ("<=", 1.5),
    "adverse.race_k4_vs_seq10.median_ratio": ("<=", 0.45),
    "adverse.race_k4_vs_seq10.p95_ratio": ("<=", 0.20),
    "default.requests_per_provision.race_k4": ("<=", 12),
    "default.hedged.loser_usd_vs_k4": ("<=", 0.75),
    "default.hedged.p50_vs_k4": ("<=", 1.2),
    "default.hedged.p95_vs_k4": ("<=", 1.5),
    "adverse.hedged.p95_vs_k4": ("<=", 1.0),
    "adverse.hedged.loser_usd_vs_k4": ("<=", 1.0),
    "scale500.succeeded_or_typed": ("==", 500),
    "scale500.unnamed_leaks": ("==", 0),
    "scale500.server_429": ("==", 0),
    "scale500.loop_lag_p99_ms": ("<=", 20),
    "scale500.time_to_ssh_p95_sim_s": ("<=", 300),
    "structuring.ours_vs_official": ("<=", 1.0),
}


def _time(t: dict[str, Any], field: str = "time_to_ssh_s") -> float:
    # A loop with no teardown to wait for (the official client's) returns at its login.
    value = t.get(field, t.get("time_to_ssh_s")) if t.get("ok") else None
    return CENSOR_S if value is None else float(value)


def _per_provision_requests(t: dict[str, Any]) -> float:
    return float(t.get("requests", 0) - t.get("requests_key_setup", 0))


def _status_requests(t: dict[str, Any]) -> float:
    routes = t.get("requests_by_route", {})
    return float(
        routes.get("GET /api/v1/instances/", 0) + routes.get("GET /api/v0/instances/{id}/", 0)
    )


def _strategy(trials: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in trials if t.get("ok")]
    times = [_time(t) for t in trials]
    returned = [_time(t, "returned_s") for t in trials]
    minus = [t["minus_oracle_s"] for t in ok if t.get("minus_oracle_s") is not None]
    oracle = [t["oracle_s"] for t in trials if t.get("oracle_s") is not None]
    teardown = [t["teardown_wall_s"] for t in ok if t.get("teardown_wall_s") is not None]
    n = len(trials)
    return {
        "trials": n,
        "succeeded": len(ok),
        "errors": sorted({str(t.get("error"))[:120] for t in trials if not t.get("ok")}),
        "time_to_ssh_p50_s": percentile(times, 0.5),
        "time_to_ssh_p95_s": percentile(times, 0.95),
        "returned_p50_s": percentile(returned, 0.5),
        "returned_p95_s": percentile(returned, 0.95),
        "requests_per_success": sum(t.get("requests", 0) for t in trials) / len(ok) if ok else None,
        "requests_per_provision_no_key_setup": sum(_per_provision_requests(t) for t in trials) / n,
        "status_requests_per_provision": sum(_status_requests(t) for t in trials) / n,
        "loser_usd_per_provision": sum(t.get("loser_usd", 0.0) for t in trials) / n,
        "instances_per_provision": sum(t.get("instances_created", 0) for t in trials) / n,
        "hedges_per_provision": sum(len(t.get("hedges", [])) for t in trials) / n,
        "leaked": sum(len(t.get("leaked", [])) for t in trials),
        "oracle_p50_s": percentile(oracle, 0.5),
        "minus_oracle_p50_s": percentile(minus, 0.5),
        "minus_oracle_p95_s": percentile(minus, 0.95),
        "teardown_wall_p50_s": percentile(teardown, 0.5),
        "teardown_wall_p99_s": percentile(teardown, 0.99),
    }


Stat = Callable[[Sequence[float]], float | None]


def _q(q: float) -> Stat:
    return lambda xs: percentile(list(xs), q)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _paired(
    a: dict[int, float], b: dict[int, float], stat: Stat, rng: random.Random
) -> tuple[float | None, list[float] | None]:
    """stat(a) / stat(b) over the seeds both have, and its bootstrap 95% interval."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None, None
    value = _ratio(stat([a[s] for s in seeds]), stat([b[s] for s in seeds]))
    draws: list[float] = []
    for _ in range(RESAMPLES):
        pick = [seeds[rng.randrange(len(seeds))] for _ in seeds]
        r = _ratio(stat([a[s] for s in pick]), stat([b[s] for s in pick]))
        if r is not None:
            draws.append(r)
    ci = [percentile(draws, 0.025), percentile(draws, 0.975)] if draws else None
    return value, ci  # type: ignore[return-value]


def _single(values: list[float], stat: Stat, rng: random.Random) -> tuple[Any, Any]:
    if not values:
        return None, None
    draws = []
    for _ in range(RESAMPLES):
        v = stat([values[rng.randrange(len(values))] for _ in values])
        if v is not None:
            draws.append(v)
    return stat(values), [percentile(draws, 0.025), percentile(draws, 0.975)]


def _by_seed(
    trials: list[dict[str, Any]], fn: Callable[[dict[str, Any]], float]
) -> dict[int, float]:
    return {int(t["seed"]): fn(t) for t in trials}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per-strategy statistics, the issue's figures (numbers) and their 95% intervals."""
    rng = random.Random(BOOT_SEED)
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in results.get("trials", []):
        groups.setdefault(f"{t.get('market', 'default')}/{t['strategy']}", []).append(t)
    st = {name: _strategy(trials) for name, trials in sorted(groups.items())}
    figs: dict[str, float] = {}
    cis: dict[str, list[float]] = {}

    def put(key: str, value: Any, ci: Any = None) -> None:
        if value is not None:
            figs[key] = float(value)
            if ci is not None and None not in ci:
                cis[key] = [float(c) for c in ci]

    def tt(name: str, field: str = "time_to_ssh_s") -> dict[int, float]:
        return _by_seed(groups.get(name, []), lambda t: _time(t, field))

    main = (results.get("sizes", {}).get("plan", {}).get("default", {}) or {}).get("main", [])
    counts = [len(groups.get(f"default/{n}", [])) for n in main]
    put("default.seeds", min(counts) if counts else 0)
    for m in ("default", "adverse"):
        k4 = f"{m}/race_k4"
        for base, tag in (("sequential_10s", "seq10"), ("dstack_5s_600s", "dstack600")):
            for field, suffix in (("time_to_ssh_s", ""), ("returned_s", "_returned")):
                for q, qn in ((0.5, "median"), (0.95, "p95")):
                    put(
                        f"{m}.race_k4_vs_{tag}.{qn}_ratio{suffix}",
                        *_paired(tt(k4, field), tt(f"{m}/{base}", field), _q(q), rng),
                    )
            for q, qn in ((0.5, "median"), (0.95, "p95")):
                put(
                    f"{m}.oracle_all_vs_{tag}.{qn}_ratio",
                    *_paired(
                        _by_seed(
                            groups.get(f"{m}/race_all", []), lambda t: t.get("oracle_s") or CENSOR_S
                        ),
                        tt(f"{m}/{base}"),
                        _q(q),
                        rng,
                    ),
                )
        minus = [
            t["minus_oracle_s"] for t in groups.get(k4, []) if t.get("minus_oracle_s") is not None
        ]
        put(f"{m}.race_k4_minus_oracle.p50_s", *_single(minus, _q(0.5), rng))
        put(f"{m}.race_k4_minus_oracle.p95_s", *_single(minus, _q(0.95), rng))
        for q, qn in ((0.5, "median"), (0.95, "p95")):
            put(
                f"{m}.race_k4_vs_oracle_all.{qn}_ratio",
                *_paired(
                    tt(k4),
                    _by_seed(
                        groups.get(f"{m}/race_all", []), lambda t: t.get("oracle_s") or CENSOR_S
                    ),
                    _q(q),
                    rng,
                ),
            )
        hedged = f"{m}/hedged"
        put(f"{m}.hedged.p50_vs_k4", *_paired(tt(hedged), tt(k4), _q(0.5), rng))
        put(f"{m}.hedged.p95_vs_k4", *_paired(tt(hedged), tt(k4), _q(0.95), rng))
        loser = lambda t: float(t.get("loser_usd", 0.0))  # noqa: E731
        put(
            f"{m}.hedged.loser_usd_vs_k4",
            *_paired(
                _by_seed(groups.get(hedged, []), loser),
                _by_seed(groups.get(k4, []), loser),
                _mean,
                rng,
            ),
        )
    k4 = groups.get("default/race_k4", [])
    per = [_per_provision_requests(t) for t in k4]
    put("default.requests_per_provision.race_k4", *_single(per, _mean, rng))
    put(
        "default.requests_per_provision.race_k4_incl_key_setup",
        *_single([float(t.get("requests", 0)) for t in k4], _mean, rng),
    )
    put(
        "default.status_requests.race_k4_vs_show",
        *_paired(
            _by_seed(k4, _status_requests),
            _by_seed(groups.get("default/race_k4_show", []), _status_requests),
            _mean,
            rng,
        ),
    )
    put(
        "default.requests_per_provision.race_k4_vs_seq10",
        *_paired(
            _by_seed(k4, _per_provision_requests),
            _by_seed(groups.get("default/sequential_10s", []), _per_provision_requests),
            _mean,
            rng,
        ),
    )
    real = st.get("default/race_k4_realpacing", {})
    put("default.teardown_wall_p99_s.race_k4_realpacing", real.get("teardown_wall_p99_s"))
    sc = results.get("scale", {})
    if sc and "error" not in sc and "skipped" not in sc:
        n = sc["provisions"]
        pre = f"scale{n}"
        put(
            f"{pre}.succeeded_or_typed",
            sc["succeeded"] + sc["failed_typed"] if sc["untyped_count"] == 0 else sc["succeeded"],
        )
        put(f"{pre}.unnamed_leaks", len(sc["left_unnamed_by_errors"]))
        put(f"{pre}.leaked_after_reap", len(sc["leaked_after_reap"]))
        put(f"{pre}.server_429", sc["rate_limited_429"])
        put(f"{pre}.requests_over_pacing", sum(sc["requests_over_pacing"].values()))
        put(f"{pre}.loop_lag_p99_ms", sc["loop_lag_ms"]["p99"])
        put(f"{pre}.time_to_ssh_p50_sim_s", sc["time_to_ssh_sim_s"]["p50"])
        put(f"{pre}.time_to_ssh_p95_sim_s", sc["time_to_ssh_sim_s"]["p95"])
        put(f"{pre}.peak_rss_mb", sc["peak_rss_mb"])
    stc = results.get("structuring", {})
    put("structuring.ours_vs_official", stc.get("ratio"))
    imp = results.get("import", {})
    put("import.wall_s", imp.get("import_wall_s"))
    put("cli_help.wall_s", imp.get("cli_help_wall_s"))
    return {"strategies": st, "figures": figs, "figure_ci95": cis}


def _met(key: str, value: float | None) -> bool | None:
    if key not in TARGETS or value is None:
        return None
    op, limit = TARGETS[key]
    return {"<=": value <= limit, ">=": value >= limit, "==": value == limit}[op]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if value == int(value) and abs(value) >= 1:
            return f"{value:.0f}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    """Markdown: the figures with intervals against targets, then per-strategy statistics."""
    figs: dict[str, float] = results["figures"]
    cis: dict[str, list[float]] = results.get("figure_ci95", {})
    lines = ["| figure | value | 95% CI | target | met |", "|---|---|---|---|---|"]
    keys = [k for k in TARGETS if k in figs] + [k for k in TARGETS if k not in figs]
    keys += sorted(k for k in figs if k not in TARGETS)
    for key in keys:
        value = figs.get(key)
        ci = cis.get(key)
        ci_text = f"{_fmt(ci[0])} - {_fmt(ci[1])}" if ci else ""
        target = " ".join(str(x) for x in TARGETS[key]) if key in TARGETS else "reported"
        met = {True: "yes", False: "**no**", None: "-" if key not in TARGETS else "**not run**"}[
            _met(key, value)
        ]
        lines.append(f"| `{key}` | {_fmt(value)} | {ci_text} | {target} | {met} |")
    lines += [
        "",
        "| market / strategy | ok / trials | to SSH p50 / p95 (sim s) | returned p50 / p95 "
        "| requests per provision (no key setup) | status requests | loser USD per provision "
        "| instances | hedges | minus oracle p50 | oracle p50 | leaked |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results["summary"]["strategies"].items():
        lines.append(
            f"| {name} | {s['succeeded']} / {s['trials']} "
            f"| {_fmt(s['time_to_ssh_p50_s'])} / {_fmt(s['time_to_ssh_p95_s'])} "
            f"| {_fmt(s['returned_p50_s'])} / {_fmt(s['returned_p95_s'])} "
            f"| {_fmt(s['requests_per_provision_no_key_setup'])} "
            f"| {_fmt(s['status_requests_per_provision'])} "
            f"| {_fmt(s['loser_usd_per_provision'])} | {_fmt(s['instances_per_provision'])} "
            f"| {_fmt(s['hedges_per_provision'])} | {_fmt(s['minus_oracle_p50_s'])} "
            f"| {_fmt(s['oracle_p50_s'])} | {s['leaked']} |"
        )
    return "\n".join(lines)


def update_markdown(results: dict[str, Any], page: Path) -> None:
    """Replace the results block of ``page`` (between the bench markers) with fresh tables."""
    text = page.read_text()
    sizes = results["sizes"]
    sc = results.get("scale", {})
    official = results.get("official", {})
    official_text = (
        f"vastai {official['version']}" if "version" in official else f"skipped: {official}"
    )
    machine = results["machine"]
    head = (
        f"Run of this commit: {sizes['seeds']} seeds per main strategy, {sizes['plot_seeds']} "
        f"for plot-only curves, {sizes['aux_seeds']} for the official client and real pacing; "
        f"markets {', '.join(sizes['markets'])}; {sizes['workers']} worker processes; load "
        f"test {sc.get('provisions')} provisions on {sc.get('machines')} machines at time_scale "
        f"{sc.get('time_scale')}; official client {official_text}; {machine['cpus']} CPUs "
        f"(load average {_fmt(machine.get('loadavg_at_start', [None])[0])} at start, "
        f"{_fmt(machine.get('loadavg_at_end', [None])[0])} at end: the machine was shared), "
        f"Python {machine['python']}; whole run {results['total_wall_s']:.0f} s wall "
        f"(trials {results.get('trials_wall_s', 0):.0f} s, load test "
        f"{results.get('scale_wall_s', 0):.0f} s)."
    )
    block = f"{START}\n{head}\n\n{table(results)}\n\n![benchmarks](img/benchmarks.png)\n{END}"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if pattern.search(text) is None:
        raise ValueError(f"{page} has no {START} ... {END} block")
    page.write_text(pattern.sub(lambda _: block, text))


def plot(results: dict[str, Any], path: Path) -> None:
    """Time to SSH per strategy on both markets, and time against loser spend (k=1..8, hedged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = results["summary"]["strategies"]
    order = [
        "sequential_10s",
        "dstack_5s_600s",
        "official_10s",
        "race_k1",
        "race_k2",
        "race_k4",
        "race_k8",
        "hedged",
        "race_all",
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    names = [n for n in order if f"default/{n}" in st or f"adverse/{n}" in st]
    xs = range(len(names))
    for i, (m, color) in enumerate((("default", "tab:blue"), ("adverse", "tab:red"))):
        off = -0.2 + 0.4 * i
        p50 = [st.get(f"{m}/{n}", {}).get("time_to_ssh_p50_s") or 0 for n in names]
        p95 = [st.get(f"{m}/{n}", {}).get("time_to_ssh_p95_s") or 0 for n in names]
        left.bar([x + off for x in xs], p95, 0.38, color=color, alpha=0.35, label=f"{m} p95")
        left.bar([x + off for x in xs], p50, 0.38, color=color, label=f"{m} median")
    left.set_xticks(list(xs), names, rotation=35, ha="right")
    left.set_yscale("log")
    left.set_ylabel("time to working SSH (simulated s, log)")
    left.set_title("Time to a working machine (failures count as 1800 s)")
    left.legend(fontsize=8)
    for m, color in (("default", "tab:blue"), ("adverse", "tab:red")):
        ks = [k for k in (1, 2, 4, 8) if f"{m}/race_k{k}" in st]
        pts = [
            (
                st[f"{m}/race_k{k}"]["loser_usd_per_provision"],
                st[f"{m}/race_k{k}"]["time_to_ssh_p50_s"],
                st[f"{m}/race_k{k}"]["time_to_ssh_p95_s"],
            )
            for k in ks
        ]
        if pts:
            right.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                "o-",
                color=color,
                label=f"{m}: race k (median)",
            )
            right.plot(
                [p[0] for p in pts],
                [p[2] for p in pts],
                "o:",
                color=color,
                alpha=0.5,
                label=f"{m}: race k (p95)",
            )
            for k, p in zip(ks, pts, strict=True):
                right.annotate(
                    f"k={k}", (p[0], p[1]), fontsize=8, xytext=(3, 3), textcoords="offset points"
                )
        h = st.get(f"{m}/hedged")
        if h:
            right.plot(
                [h["loser_usd_per_provision"]],
                [h["time_to_ssh_p50_s"]],
                "*",
                color=color,
                markersize=14,
                label=f"{m}: hedged (median)",
            )
            right.plot(
                [h["loser_usd_per_provision"]],
                [h["time_to_ssh_p95_s"]],
                "*",
                color=color,
                markersize=14,
                alpha=0.4,
                label=f"{m}: hedged (p95)",
            )
    right.set_xlabel("USD spent on losers per provision")
    right.set_ylabel("time to working SSH (simulated s, log)")
    right.set_yscale("log")
    right.set_title("Time to SSH against loser spend: k=1..8 and hedged")
    right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Re-render the figures, tables and plot from a results file, without running anything."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    summary = summarize(results)
    results["figures"] = summary.pop("figures")
    results["figure_ci95"] = summary.pop("figure_ci95")
    results["summary"] = summary
    args.results.write_text(json.dumps(results, indent=1, default=str))
    if args.plot is not None:
        plot(results, args.plot)
    if args.markdown is not None:
        update_markdown(results, args.markdown)
    print(table(results))


if __name__ == "__main__":
    main()
