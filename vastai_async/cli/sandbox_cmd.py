"""``vastai-async sandbox``: serve a local Vast.ai in its own process until Ctrl-C or SIGTERM.

Prints the URL and key, and records both (with the log origin, pid, host, seed and time scale)
in its own file ``$VASTAI_STATE_DIR/sandboxes/<name>.json`` with mode 0600 so other commands and
processes can find it (``--sandbox``, ``--sandbox-name NAME``); the record is removed on a clean
shutdown, and a crashed sandbox's record is recognised by its dead pid. Load tests run it
standalone so its SSH servers do not share the SDK's event loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys

import click
from yarl import URL

__all__ = ["sandbox_cmd"]

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


async def _serve(
    *,
    host: str,
    port: int,
    seed: int,
    time_scale: float,
    offers: int,
    api_key: str | None,
    rate_limits: bool,
    ssh: bool,
    name: str | None,
    shell: str = "real",
) -> None:
    from vastai_async.sandbox import Sandbox
    from vastai_async.sandbox_link import (
        SandboxRecord,
        live_sandbox_records,
        remove_sandbox_record,
        write_sandbox_record,
    )

    running, _ = live_sandbox_records()
    taken = {r.name: r for r in running}
    if name is not None and name in taken:
        click.echo(
            f"error: a sandbox named {name!r} already runs at {taken[name].url} "
            "(stop it, or pick another --name)",
            err=True,
        )
        sys.exit(1)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sandbox = Sandbox(
        seed=seed,
        offers=offers,
        time_scale=time_scale,
        api_key=api_key,
        host=host,
        port=port,
        rate_limits=rate_limits,
        ssh=ssh,
        shell="emulated" if shell == "emulated" else "real",
    )
    async with sandbox:
        # Without --name: "default" when free, else named after the port (always unique).
        chosen = name or ("default" if "default" not in taken else f"port-{URL(sandbox.url).port}")
        record = SandboxRecord(
            url=sandbox.url,
            api_key=sandbox.api_key,
            time_scale=time_scale,
            name=chosen,
            pid=os.getpid(),
            host=socket.gethostname(),
            logs_url=sandbox.logs_url,
            seed=seed,
            offers=offers,
        )
        path = write_sandbox_record(record)
        try:
            click.echo(f"Sandbox URL: {sandbox.url}")
            click.echo(f"API key:     {sandbox.api_key}")
            click.echo(f"Name:        {chosen} (--sandbox-name {chosen})")
            click.echo(f"Recorded in: {path}")
            click.echo("Press Ctrl-C to stop.")
            await stop.wait()
            click.echo("Stopping sandbox...")
        finally:
            remove_sandbox_record(record)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=0, show_default=True, help="API port (0: any free).")
@click.option("--seed", type=int, default=0, show_default=True, help="Market and fault seed.")
@click.option(
    "--time-scale",
    type=float,
    default=0.05,
    show_default=True,
    help="Wall seconds per simulated second.",
)
@click.option("--offers", type=int, default=40, show_default=True, help="Machines in the market.")
@click.option("--api-key", default=None, help="Account key (random if not given).")
@click.option("--no-rate-limits", is_flag=True, help="Do not answer 429 to fast clients.")
@click.option("--no-ssh", is_flag=True, help="No SSH servers (ports accept and close).")
@click.option(
    "--name",
    default=None,
    help="Name of its record, for --sandbox-name (default: 'default', or port-PORT if taken).",
)
@click.option(
    "--shell",
    type=click.Choice(["real", "emulated"]),
    default="real",
    show_default=True,
    help="real: commands run with /bin/sh as you, in a folder per instance; "
    "emulated: a few built-ins, no process started.",
)
def sandbox_cmd(
    host: str,
    port: int,
    seed: int,
    time_scale: float,
    offers: int,
    api_key: str | None,
    no_rate_limits: bool,
    no_ssh: bool,
    name: str | None,
    shell: str,
) -> None:
    """Serve a local Vast.ai (API, market, lifecycle, SSH) until Ctrl-C or SIGTERM.

    Several may run at once; each has its own record. Other commands pick one with --sandbox
    (the only one running), --sandbox-name NAME or --sandbox-url URL.
    """
    if name is not None and not _NAME_RE.fullmatch(name):
        raise click.BadParameter("1-64 characters of [A-Za-z0-9._-]", param_hint="--name")
    if time_scale <= 0:
        raise click.BadParameter("must be > 0", param_hint="--time-scale")
    if offers < 1:
        raise click.BadParameter("must be >= 1", param_hint="--offers")
    try:
        asyncio.run(
            _serve(
                host=host,
                port=port,
                seed=seed,
                time_scale=time_scale,
                offers=offers,
                api_key=api_key,
                rate_limits=not no_rate_limits,
                ssh=not no_ssh,
                name=name,
                shell=shell,
            )
        )
    except OSError as err:
        # A busy or forbidden port is the user's setting, not a bug: one line, exit 1.
        reason = err.strerror or str(err)
        click.echo(f"error: cannot serve the sandbox on {host}:{port}: {reason}", err=True)
        sys.exit(1)
