"""Run ``python -m vastai_async`` as a user would, without blocking the test's event loop.

The fixture sandbox serves from the test's own event loop, so a child process talking to it
must be awaited (``asyncio.create_subprocess_exec``), never run with blocking ``subprocess.run``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

import attrs

from vastai_async.sandbox import Sandbox


@attrs.frozen(kw_only=True)
class CLIResult:
    """Exit code and both streams of one command."""

    code: int
    out: str
    err: str


def sandbox_args(sandbox: Sandbox) -> list[str]:
    """Global options pointing the command at ``sandbox``."""
    return [
        "--sandbox-url",
        sandbox.url,
        "--sandbox-key",
        sandbox.api_key,
        "--sandbox-time-scale",
        str(sandbox.time_scale),
    ]


async def start_cli(*args: str, sandbox: Sandbox | None = None) -> asyncio.subprocess.Process:
    """Start ``vastai-async [sandbox options] ARGS`` with no terminal on any stream."""
    argv = [
        sys.executable,
        "-m",
        "vastai_async",
        *(sandbox_args(sandbox) if sandbox else []),
        *args,
    ]
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )


async def finish(proc: asyncio.subprocess.Process, *, within_s: float = 30.0) -> CLIResult:
    """Wait for a started command and collect its output."""
    try:
        async with asyncio.timeout(within_s):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return CLIResult(code=proc.returncode, out=out.decode(), err=err.decode())


async def vast_cli(*args: str, sandbox: Sandbox | None = None, within_s: float = 30.0) -> CLIResult:
    """Run one command to completion."""
    return await finish(await start_cli(*args, sandbox=sandbox), within_s=within_s)


def run_all_at_once(
    commands: Mapping[str, Sequence[str]], *, within_s: float = 90.0
) -> dict[str, CLIResult]:
    """Run independent commands (no fixture sandbox involved) in parallel child processes.

    Each child costs about a second of imports; starting them together uses every core.
    """
    procs = {
        name: subprocess.Popen(  # noqa: S603  (our own command, fixed arguments)
            [sys.executable, "-m", "vastai_async", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"},
        )
        for name, args in commands.items()
    }
    results = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=within_s)
            results[name] = CLIResult(code=proc.returncode, out=out.decode(), err=err.decode())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def lines(text: str) -> Sequence[str]:
    """Non-empty lines."""
    return [line for line in text.splitlines() if line.strip()]
