"""Turn raw benchmark results into figures against the issue's targets, a table and a plot."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from tests.benchmarks.scenario import percentile

__all__ = ["plot", "summarize", "table", "update_markdown"]

#: The overall deadline (simulated s): a failed provision counts as taking this long.
CENSOR_S = 1800.0
PROBE_INTERVAL_S = 1.0  # Timings.probe_interval_s default (simulated)
START = "<!-- bench:results:start -->"
END = "<!-- bench:results:end -->"


def _strategy(trials: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [t for t in trials if t.get("ok")]
    times = [t["time_to_ssh_s"] if t.get("ok") else CENSOR_S for t in trials]
    minus = [t["minus_oracle_s"] for t in ok if t.get("minus_oracle_s") is not None]
    teardown = [t["teardown_wall_s"] for t in ok if t.get("teardown_wall_s") is not None]
    requests = sum(t.get("requests", 0) for t in trials)
    return {
        "trials": len(trials),
        "succeeded": len(ok),
        "errors": sorted({str(t.get("error"))[:120] for t in trials if not t.get("ok")}),
        "time_to_ssh_p50_s": percentile(times, 0.5),
        "time_to_ssh_p95_s": percentile(times, 0.95),
        "requests_per_success": requests / len(ok) if ok else None,
        "loser_usd_per_provision": sum(t.get("loser_usd", 0.0) for t in trials) / len(trials),
        "instances_per_provision": sum(t.get("instances_created", 0) for t in trials) / len(trials),
        "leaked": sum(len(t.get("leaked", [])) for t in trials),
        "minus_oracle_p50_s": percentile(minus, 0.5),
        "minus_oracle_p95_s": percentile(minus, 0.95),
        "teardown_wall_p50_s": percentile(teardown, 0.5),
        "teardown_wall_p99_s": percentile(teardown, 0.99),
    }


def _status_requests(trials: list[dict[str, Any]]) -> float | None:
    ok = [t for t in trials if t.get("ok")]
    if not ok:
        return None
    routes = ("GET /api/v1/instances/", "GET /api/v0/instances/{id}/")
    total = sum(int(t.get("requests_by_route", {}).get(r, 0)) for t in trials for r in routes)
    return total / len(ok)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _fig(name: str, value: Any, target: str, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"figure": name, "value": value, "target": target, "met": met, "note": note}


def _le(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per-strategy statistics and every figure of the issue with its target."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for t in results.get("trials", []):
        by_name.setdefault(t["strategy"], []).append(t)
    st = {name: _strategy(trials) for name, trials in sorted(by_name.items())}
    figs: list[dict[str, Any]] = []
    race = st.get("race_k4", {})
    for base in ("sequential_10s", "sequential_5s", "official_10s"):
        if base not in st:
            continue
        b = st[base]
        r50 = _ratio(race.get("time_to_ssh_p50_s"), b["time_to_ssh_p50_s"])
        r95 = _ratio(race.get("time_to_ssh_p95_s"), b["time_to_ssh_p95_s"])
        figs.append(_fig(f"median time to SSH, race k=4 / {base}", r50, "<= 0.4", _le(r50, 0.4)))
        figs.append(_fig(f"p95 time to SSH, race k=4 / {base}", r95, "<= 0.3", _le(r95, 0.3)))
    if "official_10s" not in st:
        figs.append(_fig("official client", None, "run", None, str(results.get("official", {}))))
    limit = PROBE_INTERVAL_S + 0.5
    m = race.get("minus_oracle_p50_s")
    figs.append(_fig("race k=4 minus oracle, median (sim s)", m, f"<= {limit:g}", _le(m, limit)))
    figs.append(
        _fig("race k=4 minus oracle, p95 (sim s)", race.get("minus_oracle_p95_s"), "reported", None)
    )
    show = st.get("race_k4_show", {})
    rr = _ratio(race.get("requests_per_success"), show.get("requests_per_success"))
    figs.append(
        _fig(
            "API requests per provision, race k=4 / same race polling each instance",
            rr,
            "<= 0.35",
            _le(rr, 0.35),
        )
    )
    polls = [_status_requests(by_name.get(n, [])) for n in ("race_k4", "race_k4_show")]
    rp = _ratio(*polls)
    figs.append(
        _fig(
            "status requests only (list / show), race k=4 / same race polling each instance",
            rp,
            "reported",
            None,
        )
    )
    if "sequential_10s" in st:
        rs = _ratio(race.get("requests_per_success"), st["sequential_10s"]["requests_per_success"])
        figs.append(
            _fig("API requests per provision, race k=4 / sequential 10 s", rs, "reported", None)
        )
    real = st.get("race_k4_realpacing", {})
    td = real.get("teardown_wall_p99_s")
    figs.append(
        _fig(
            "winner login -> last loser confirmed destroyed, p99 (wall s, real pacing)",
            td,
            "<= 1",
            _le(td, 1.0),
        )
    )
    for k in (1, 2, 4, 8):
        s = st.get(f"race_k{k}")
        if s:
            figs.append(
                _fig(
                    f"money on losers per provision, k={k} (USD)",
                    s["loser_usd_per_provision"],
                    "reported",
                    None,
                )
            )
    sc = results.get("scale", {})
    if "error" in sc or not sc:
        figs.append(_fig("scale test", None, "runs", False, str(sc.get("error"))[:300]))
    else:
        n = sc["provisions"]
        accounted = sc["succeeded"] + sc["failed_typed"] == n and sc["untyped_count"] == 0
        figs.append(
            _fig(
                f"{n} concurrent provisions: succeeded / failed typed / untyped",
                f"{sc['succeeded']} / {sc['failed_typed']} / {sc['untyped_count']}",
                "all succeed or fail typed",
                accounted,
            )
        )
        left = len(sc["left_after_provisions"])
        unnamed = len(sc["left_unnamed_by_errors"])
        figs.append(
            _fig(
                "instances left alive by the load test's provisions",
                left,
                "0",
                left == 0,
                f"{unnamed} of them not named by a TeardownError",
            )
        )
        leaked = len(sc["leaked_after_reap"])
        figs.append(
            _fig("leaked after the documented recovery (reap by owner)", leaked, "0", leaked == 0)
        )
        over = sum(sc["requests_over_pacing"].values())
        figs.append(
            _fig(
                "requests sent sooner than the pacing table allows",
                over,
                "0",
                over == 0,
                f"sandbox answered 429 to {sc['rate_limited_429']}",
            )
        )
        lag = sc["loop_lag_ms"]["p99"]
        figs.append(
            _fig("event-loop lag p99 during the load test (ms)", lag, "<= 50", _le(lag, 50.0))
        )
        figs.append(_fig("peak RSS of the SDK process (MB)", sc["peak_rss_mb"], "reported", None))
    stc = results.get("structuring", {})
    ratio = stc.get("ratio")
    figs.append(
        _fig(
            f"structuring {stc.get('offers')} offers, ours / official from_dict",
            ratio,
            "<= 1.0",
            _le(ratio, 1.0),
            f"ours {_fmt(stc.get('ours_s'))} s, official {_fmt(stc.get('official_s'))} s",
        )
    )
    imp = results.get("import", {})
    figs.append(_fig("import vastai_async (wall s)", imp.get("import_wall_s"), "reported", None))
    figs.append(_fig("vastai-async --help (wall s)", imp.get("cli_help_wall_s"), "reported", None))
    return {"strategies": st, "figures": figs}


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    """Two Markdown tables: the figures against targets, and the per-strategy statistics."""
    summary = results["summary"]
    lines = ["| figure | value | target | met |", "|---|---|---|---|"]
    for f in summary["figures"]:
        met = {True: "yes", False: "**no**", None: "-"}[f["met"]]
        note = f" ({f['note']})" if f["note"] else ""
        lines.append(f"| {f['figure']}{note} | {_fmt(f['value'])} | {f['target']} | {met} |")
    lines += [
        "",
        "| strategy | ok / trials | time to SSH p50 / p95 (sim s) | requests per success "
        "| loser USD per provision | instances per provision | minus oracle p50 (sim s) "
        "| teardown p50 / p99 (wall s) | leaked |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary["strategies"].items():
        lines.append(
            f"| {name} | {s['succeeded']} / {s['trials']} "
            f"| {_fmt(s['time_to_ssh_p50_s'])} / {_fmt(s['time_to_ssh_p95_s'])} "
            f"| {_fmt(s['requests_per_success'])} | {_fmt(s['loser_usd_per_provision'])} "
            f"| {_fmt(s['instances_per_provision'])} | {_fmt(s['minus_oracle_p50_s'])} "
            f"| {_fmt(s['teardown_wall_p50_s'])} / {_fmt(s['teardown_wall_p99_s'])} "
            f"| {s['leaked']} |"
        )
    return "\n".join(lines)


def update_markdown(results: dict[str, Any], page: Path) -> None:
    """Replace the results block of ``page`` (between the bench markers) with fresh tables."""
    text = page.read_text()
    sizes = results["sizes"]
    sc = results.get("scale", {})
    scen = sizes["scenario"]
    official = results.get("official", {})
    official_text = (
        f"vastai {official['version']}" if "version" in official else f"skipped: {official}"
    )
    head = (
        f"Run of this commit: {len(sizes['seeds'])} seeds per strategy; scenario: "
        f"{scen['machines']} machines, {scen['candidates']} candidates, "
        f"{scen['failing']:.0%} failing, {scen['vanishing']:.0%} vanishing, time_scale "
        f"{scen['time_scale']:g}; {sizes['workers']} worker processes (one scenario each at a "
        f"time); load test {sc.get('provisions')} provisions on {sc.get('machines')} machines "
        f"at time_scale {sc.get('time_scale')}; official client {official_text}; "
        f"{results['machine']['cpus']} CPUs, Python {results['machine']['python']}; "
        f"whole run {results['total_wall_s']:.0f} s wall."
    )
    block = f"{START}\n{head}\n\n{table(results)}\n\n![benchmarks](img/benchmarks.png)\n{END}"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if pattern.search(text) is None:
        raise ValueError(f"{page} has no {START} ... {END} block")
    page.write_text(pattern.sub(lambda _: block, text))


def plot(results: dict[str, Any], path: Path) -> None:
    """Time to SSH per strategy (median and p95), and the fan-out trade-off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = results["summary"]["strategies"]
    # Baselines first, then the races by fan-out.
    order = [
        "sequential_10s",
        "sequential_5s",
        "official_10s",
        "race_k1",
        "race_k2",
        "race_k4",
        "race_k4_show",
        "race_k8",
    ]
    names = [n for n in order if n in st]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = range(len(names))
    left.bar(
        [x - 0.2 for x in xs], [st[n]["time_to_ssh_p50_s"] or 0 for n in names], 0.4, label="median"
    )
    left.bar(
        [x + 0.2 for x in xs], [st[n]["time_to_ssh_p95_s"] or 0 for n in names], 0.4, label="p95"
    )
    left.set_xticks(list(xs), names, rotation=35, ha="right")
    left.set_ylabel("time to working SSH (simulated s)")
    left.set_title("Time to a working machine (failures count as 1800 s)")
    left.legend()
    ks = [k for k in (1, 2, 4, 8) if f"race_k{k}" in st]
    base = st.get("sequential_10s", {}).get("time_to_ssh_p50_s")
    saved = [(base or 0) - (st[f"race_k{k}"]["time_to_ssh_p50_s"] or 0) for k in ks]
    money = [st[f"race_k{k}"]["loser_usd_per_provision"] for k in ks]
    right.plot(ks, saved, "o-", color="tab:blue", label="median s saved vs sequential 10 s")
    right.set_xlabel("fan-out k")
    right.set_xticks(ks)
    right.set_ylabel("simulated s saved per provision", color="tab:blue")
    twin = right.twinx()
    twin.plot(ks, money, "s--", color="tab:red", label="USD on losers per provision")
    twin.set_ylabel("USD spent on losers per provision", color="tab:red")
    right.set_title("Fan-out trade-off: time saved vs money on losers")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    """Re-render the table and plot from a results file, without running anything."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    results["summary"] = summarize(results)
    args.results.write_text(json.dumps(results, indent=1, default=str))
    if args.plot is not None:
        plot(results, args.plot)
    if args.markdown is not None:
        update_markdown(results, args.markdown)
    print(table(results))


if __name__ == "__main__":
    main()
