"""``vastai-async hosts``: what the host history knows about each machine; ``hosts forget``.

Reads the local store (``hosts.sqlite3`` in the state directory) or, with ``--redis-url``, the
shared one of a fleet of arq workers. Needs no API key: nothing is asked of Vast.ai.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vastai_async.cli._app import run_command
from vastai_async.cli._output import print_json, print_table

if TYPE_CHECKING:
    from vastai_async.reputation import HostHistory, HostOutcome

__all__ = ["hosts_cmd"]

_META = "vastai_async.hosts"

_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State directory (default: $VASTAI_STATE_DIR or ~/.local/state/vastai-async).",
)
_redis_option = click.option(
    "--redis-url", default=None, help="Use the shared history in this Redis instead."
)
_prefix_option = click.option(
    "--redis-prefix",
    default="vastai-async:hosts:",
    show_default=True,
    help="Key prefix of the shared history.",
)


def _store(state_dir: Path | None, redis_url: str | None, prefix: str) -> HostHistory:
    from vastai_async.config import default_state_dir
    from vastai_async.reputation import RedisHostHistory, SQLiteHostHistory

    if redis_url is not None:
        return RedisHostHistory(redis_url, prefix=prefix)
    if state_dir is None:
        env = os.environ.get("VASTAI_STATE_DIR")
        state_dir = Path(env) if env else default_state_dir()
    return SQLiteHostHistory.in_state_dir(state_dir)


@click.group("hosts", invoke_without_command=True)
@_state_dir_option
@_redis_option
@_prefix_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.pass_context
def hosts_cmd(
    ctx: click.Context,
    state_dir: Path | None,
    redis_url: str | None,
    redis_prefix: str,
    as_json: bool,
) -> None:
    """Show what the host history knows: each machine's boots, wins, failures and estimate.

    Races record every candidate they touch; the ranker orders later races by it
    (docs/hosts.md). `hosts forget` drops machines (or everything).
    """
    ctx.meta[_META] = (state_dir, redis_url, redis_prefix)  # for `hosts forget`
    if ctx.invoked_subcommand is not None:
        return

    async def run() -> None:
        from vastai_async.reputation import OfferRanker

        store = _store(state_dir, redis_url, redis_prefix)
        try:
            records = await store.history()
        finally:
            await store.close()
        prior, estimates = OfferRanker().estimate(records)
        rows = _rows(records, estimates, now=time.time())
        if as_json:
            print_json(
                {
                    "prior": {
                        "median_login_s": prior.median_login_s,
                        "from_data": prior.from_data,
                        "machines": prior.machines,
                    },
                    "machines": rows,
                }
            )
            return
        if not rows:
            click.echo("no host history yet (races record every machine they try)")
            return
        headers = [
            "machine",
            "host",
            "gpu",
            "records",
            "won",
            "fatal",
            "to running (median s)",
            "to login (median s)",
            "expected s",
            "p(ok)",
            "last outcome",
            "last seen",
        ]
        table = [
            [
                r["machine_id"],
                r["host_id"],
                r["gpu_name"],
                r["records"],
                r["wins"],
                r["failures"],
                _num(r["median_running_s"]),
                _num(r["median_login_s"]),
                _num(r["expected_login_s"]),
                f"{r['p_ok']:.2f}",
                r["last_kind"],
                _ago(r["last_seen_ago_s"]),
            ]
            for r in rows
        ]
        title = f"Host history: {len(rows)} machines, market median {prior.median_login_s:.0f} s"
        print_table(headers, table, title=title)

    run_command(ctx, run)


@hosts_cmd.command("forget")
@click.argument("machine_ids", type=click.IntRange(min=0), nargs=-1)
@click.option("--all", "forget_all", is_flag=True, help="Forget every machine.")
@click.pass_context
def forget_cmd(ctx: click.Context, machine_ids: tuple[int, ...], forget_all: bool) -> None:
    """Forget what is known about MACHINE_IDS (or everything with --all)."""
    if not machine_ids and not forget_all:
        raise click.UsageError("name machine ids to forget, or pass --all")
    if machine_ids and forget_all:
        raise click.UsageError("pass machine ids or --all, not both")
    state_dir, redis_url, prefix = ctx.meta[_META]

    async def run() -> None:
        store = _store(state_dir, redis_url, prefix)
        try:
            dropped = await store.forget(None if forget_all else machine_ids)
        finally:
            await store.close()
        what = "every machine" if forget_all else f"{len(machine_ids)} machine(s)"
        click.echo(f"forgot {dropped} record(s) of {what}")

    run_command(ctx, run)


def _rows(
    records: list[HostOutcome], estimates: dict[int, Any], *, now: float
) -> list[dict[str, Any]]:
    by_machine: dict[int, list[HostOutcome]] = {}
    for rec in records:  # newest first
        by_machine.setdefault(rec.machine_id, []).append(rec)
    rows = []
    for machine_id, recs in by_machine.items():
        est = estimates[machine_id]
        running = [r.running_s for r in recs if r.running_s is not None]
        logins = [r.login_s for r in recs if r.login_s is not None]
        rows.append(
            {
                "machine_id": machine_id,
                "host_id": recs[0].host_id,
                "gpu_name": recs[0].gpu_name,
                "records": len(recs),
                "wins": est.wins,
                "failures": est.failures,
                "median_running_s": statistics.median(running) if running else None,
                "median_login_s": statistics.median(logins) if logins else None,
                "expected_login_s": est.expected_login_s,
                "p_ok": est.p_ok,
                "last_kind": recs[0].kind,
                "last_reason": recs[0].reason,
                "last_seen": recs[0].at,
                "last_seen_ago_s": max(0.0, now - recs[0].at),
            }
        )
    rows.sort(key=lambda r: (r["expected_login_s"] / max(r["p_ok"], 0.02), r["machine_id"]))
    return rows


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86_400:.0f} d ago"
