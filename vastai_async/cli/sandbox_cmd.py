"""``vastai-async sandbox``: serve a local Vast.ai in its own process until Ctrl-C or SIGTERM.

Prints the URL and key, and records both (with the log origin, pid, seed and time scale) in
``$VASTAI_STATE_DIR/sandbox.json`` with mode 0600 so other commands and processes can find it;
the record is removed on a clean shutdown. Load tests run it standalone so its SSH servers do
not share the SDK's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import click

__all__ = ["sandbox_cmd", "sandbox_record_path"]


def sandbox_record_path() -> Path:
    """Where a standalone sandbox records its URL and key."""
    from vastai_async._sandbox_link import sandbox_record_path as record_path

    return record_path()


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


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
    shell: str = "real",
) -> None:
    from vastai_async.sandbox import Sandbox

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    record = sandbox_record_path()
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
        data = {
            "url": sandbox.url,
            "api_key": sandbox.api_key,
            "logs_url": sandbox.logs_url,
            "pid": os.getpid(),
            "seed": seed,
            "time_scale": time_scale,
            "offers": offers,
        }
        _write_private(record, data)
        try:
            click.echo(f"Sandbox URL: {sandbox.url}")
            click.echo(f"API key:     {sandbox.api_key}")
            click.echo(f"Recorded in: {record}")
            click.echo("Press Ctrl-C to stop.")
            await stop.wait()
            click.echo("Stopping sandbox...")
        finally:
            with contextlib.suppress(OSError, ValueError):
                if json.loads(record.read_text()).get("pid") == os.getpid():
                    record.unlink()
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
    shell: str,
) -> None:
    """Serve a local Vast.ai (API, market, lifecycle, SSH) until Ctrl-C or SIGTERM."""
    if time_scale <= 0:
        raise click.BadParameter("must be > 0", param_hint="--time-scale")
    if offers < 1:
        raise click.BadParameter("must be >= 1", param_hint="--offers")
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
            shell=shell,
        )
    )
