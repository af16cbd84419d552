"""``vastai-async demo``: the whole story on an in-process sandbox, no account needed.

Starts a :class:`~vastai_async.sandbox.Sandbox` in this process, points the SDK at it with a
throwaway SSH key pair in the state directory, searches, races ``--fan-out`` offers with live
progress, logs in over SSH and runs ``nvidia-smi -L``, prints the ssh line and the bill from the
sandbox's ledger, then tears everything down and checks that nothing is left running.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any

import click

from vastai_async.cli._app import CLIState, run_command
from vastai_async.cli._output import print_json, print_table
from vastai_async.cli._progress import ProgressPrinter
from vastai_async.errors import TeardownError

__all__ = ["demo_cmd"]

#: The demo's search settings, fixed so that the user's own VASTAI_* settings cannot empty it.
_DEMO_SEARCH: dict[str, Any] = {
    "preferred_gpus": ("4090", "A100"),
    "min_vram_gb": 24.0,
    "max_bid_usd_per_hour": 4.5,
}


@click.command("demo")
@click.option("--seed", type=int, default=0, show_default=True, help="Market and boot seed.")
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0.001, max=1.0),
    default=0.03,
    show_default=True,
    help="Wall seconds per simulated second (0.03: a 60 s boot takes 1.8 s).",
)
@click.option(
    "--offers",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Machines in the sandbox market.",
)
@click.option(
    "--fan-out",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Offers raced at once.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report for scripts.")
@click.pass_context
def demo_cmd(
    ctx: click.Context,
    seed: int,
    time_scale: float,
    offers: int,
    fan_out: int,
    as_json: bool,
) -> None:
    """Run the whole story on a local sandbox: no account, no key, no money.

    Search offers, race several of them with live progress, log into the winner over SSH
    and run `nvidia-smi -L`, show the bill, tear everything down.

    \b
    Examples:
      vastai-async demo
      vastai-async demo --fan-out 5 --seed 7
      vastai-async demo --json
    """
    state = ctx.find_object(CLIState)
    assert state is not None

    async def run() -> None:
        report = await _demo(
            state,
            seed=seed,
            time_scale=time_scale,
            offers=offers,
            fan_out=fan_out,
            as_json=as_json,
        )
        if as_json:
            print_json(report)

    run_command(ctx, run)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _say(as_json: bool, text: str = "") -> None:
    if not as_json:
        click.echo(text)


async def _demo(
    state: CLIState,
    *,
    seed: int,
    time_scale: float,
    offers: int,
    fan_out: int,
    as_json: bool,
) -> dict[str, Any]:
    from vastai_async.sandbox import Sandbox
    from vastai_async.sandbox_link import sandbox_config, sandbox_key_path
    from vastai_async.service import VastAIService

    started = time.monotonic()
    async with Sandbox(seed=seed, offers=offers, time_scale=time_scale) as sandbox:
        config = sandbox_config(sandbox.url, sandbox.api_key, time_scale=time_scale, **_DEMO_SEARCH)
        key_dir = sandbox_key_path(sandbox.url, config.state_dir).parent
        try:
            _say(as_json, f"sandbox: {offers} machines at {sandbox.url} (time scale {time_scale})")
            async with VastAIService(config=config) as vast:
                state.live_instance_ids = vast.live_instance_ids
                report = await _story(sandbox, vast, fan_out=fan_out, as_json=as_json)
            alive = sorted(sandbox.alive_instance_ids())
            if alive:
                raise TeardownError(
                    f"demo teardown left instances alive: {alive}", instance_ids=alive
                )
            report["bill"] = _bill(sandbox, report["winner"]["instance_id"], as_json=as_json)
            report["alive_after_teardown"] = len(alive)
            report["wall_s"] = round(time.monotonic() - started, 2)
            _say(as_json, f"torn down: 0 instances alive (wall time {report['wall_s']:.1f} s)")
            return report
        finally:
            # The key only ever opened this sandbox's machines, which are gone with it.
            shutil.rmtree(key_dir, ignore_errors=True)


async def _story(sandbox: Any, vast: Any, *, fan_out: int, as_json: bool) -> dict[str, Any]:
    found = await vast.search_offers()
    _say(as_json, f"\n1. search: {len(found)} offers match (RTX 4090 / A100, >= 24 GB, <= 4.5 $/h)")
    if not as_json:
        print_table(
            ["offer", "gpu", "vram GB", "$/h", "reliab.", "location"],
            [
                [
                    o.id,
                    o.gpu_name,
                    _fmt(o.gpu_ram_gb, ".1f"),
                    _fmt(o.dph_total, ".3f"),
                    _fmt(o.reliability, ".3f"),
                    o.geolocation,
                ]
                for o in found[: fan_out + 2]
            ],
            title=f"cheapest {min(len(found), fan_out + 2)} of {len(found)}",
        )
    _say(as_json, f"\n2. race: {fan_out} offers at once; the first SSH login wins")
    # The demo tells one story on stdout; with --json, progress goes to stderr instead.
    progress = ProgressPrinter(live=not as_json and sys.stdout.isatty(), err=as_json)
    with progress:
        rental = await vast.provision_instance(
            job_id="demo", offers=found, fan_out=fan_out, on_event=progress.on_event
        )
    async with rental:  # terminates the winner on the way out, even on Ctrl-C
        info = rental.info
        gpu = info.offer.gpu_name if info.offer else "?"
        _say(
            as_json,
            f"winner: instance {info.instance_id} ({gpu}, {_fmt(info.dph_total, '.3f')} $/h) "
            f"via {info.ssh.kind} {info.ssh.host}:{info.ssh.port}",
        )
        _say(as_json, "\n3. log in over SSH and run `nvidia-smi -L`:")
        result = await rental.run("nvidia-smi -L", check=True)
        _say(as_json, result.stdout.rstrip("\n"))
        ssh_line = rental.ssh_command()
        _say(as_json, "\nssh line (works while the instance lives; the demo destroys it next):")
        _say(as_json, ssh_line)
        report: dict[str, Any] = {
            "sandbox_url": sandbox.url,
            "offers_found": len(found),
            "fan_out": fan_out,
            "winner": {
                "instance_id": info.instance_id,
                "offer_id": info.offer.id if info.offer else None,
                "gpu_name": info.offer.gpu_name if info.offer else None,
                "dph_total": info.dph_total,
                "ssh": {"kind": info.ssh.kind, "host": info.ssh.host, "port": info.ssh.port},
            },
            "nvidia_smi": result.stdout,
            "ssh_command": ssh_line,
        }
        _say(as_json, "\n4. tear down: destroying the winner")
    return report


def _bill(sandbox: Any, winner_id: int, *, as_json: bool) -> dict[str, Any]:
    """The sandbox ledger after teardown: what each instance cost, the losers, the total."""
    entries = sorted(sandbox.ledger(), key=lambda e: e["instance_id"])
    rows = [
        {
            "instance_id": e["instance_id"],
            "offer_id": e["offer_id"],
            "role": "winner" if e["instance_id"] == winner_id else "loser",
            "lifetime_s": round(e["lifetime_s"], 1),
            "running_s": round(e["running_s"], 1),
            "gpu_dph": e["gpu_dph"],
            # The one price: GPU plus the rental's disk, as search, provision and list show it.
            "dph_total": round(e["gpu_dph"] + e["storage_dph"], 6),
            "total_usd": e["total_usd"],
        }
        for e in entries
    ]
    losers = sum(r["total_usd"] for r in rows if r["role"] == "loser")
    total = sum(r["total_usd"] for r in rows)
    if not as_json:
        click.echo("\n5. the bill (sandbox ledger; times are simulated seconds):")
        print_table(
            ["instance", "offer", "role", "alive s", "running s", "$/h", "cost $"],
            [
                [
                    r["instance_id"],
                    r["offer_id"],
                    r["role"],
                    f"{r['lifetime_s']:.1f}",
                    f"{r['running_s']:.1f}",
                    f"{r['dph_total']:.3f}",
                    f"{r['total_usd']:.6f}",
                ]
                for r in rows
            ],
            title="per instance",
        )
        click.echo(f"losers cost ${losers:.6f}; total ${total:.6f}")
    return {"instances": rows, "losers_usd": losers, "total_usd": total}
