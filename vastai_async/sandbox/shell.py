"""The real shell behind a sandbox instance's SSH sessions: ``/bin/sh`` in its container.

An exec request runs ``/bin/sh -c COMMAND``; a session without a command runs ``/bin/sh -i``.
When the client asked for a terminal (``ssh`` typed by hand, ``ssh -t``) they run on a
pseudo-terminal, otherwise on pipes (a shell without a command then reads its stdin), as
OpenSSH does. stdout and stderr stay separate, stdin is forwarded (EOF
included), the exit status (or the signal that ended the command) is reported, signals the
client sends are delivered to the command's process group, and when the client closes the
channel before the command ends its process group is killed. As with OpenSSH, the session ends
when the command has exited and every process holding its stdout or stderr has closed them.

This module never imports the SDK's models, converter, session or client.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import signal
import struct
import termios
from typing import Any

import asyncssh

from vastai_async.sandbox.container import Container

__all__ = ["run_session"]

_CHUNK = 65536
#: Grace between SIGHUP and SIGKILL when a client closes a channel whose command still runs.
_HANGUP_GRACE_S = 0.2


async def run_session(container: Container, process: asyncssh.SSHServerProcess[bytes]) -> None:
    """Serve one exec or shell session with the real shell of ``container``."""
    command = process.command
    if process.get_terminal_type():
        # A terminal was asked for (``ssh`` by hand, ``ssh -t``): the command runs on one.
        await _pty_session(container, process, ("/bin/sh", "-c", command) if command else None)
        return
    argv = ("/bin/sh", "-c", command) if command is not None else ("/bin/sh",)
    proc = await container.spawn(
        *argv,
        term=process.get_terminal_type(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    feeder = asyncio.create_task(_feed_stdin(process, proc))
    finished: asyncio.Future[tuple[None, None, int]] = asyncio.ensure_future(
        asyncio.gather(
            _pump(proc.stdout, process.stdout), _pump(proc.stderr, process.stderr), proc.wait()
        )
    )
    closed: asyncio.Future[None] = asyncio.ensure_future(process.channel.wait_closed())
    try:
        waiting: list[asyncio.Future[Any]] = [finished, closed]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        feeder.cancel()
        if not finished.done():
            # The client went away (timeout, Ctrl-C, dropped connection): hang up the command.
            finished.cancel()
            await _hang_up(proc)
        closed.cancel()
        await asyncio.gather(feeder, finished, closed, return_exceptions=True)
    if finished.cancelled() or finished.exception() is not None:
        process.close()
        return
    _exit(process, proc.returncode)


def _exit(process: asyncssh.SSHServerProcess[Any], returncode: int | None) -> None:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name.removeprefix("SIG")
        except ValueError:
            name = "KILL"
        process.exit_with_signal(name, False, "", "")
    else:
        process.exit(returncode or 0)


async def _pump(reader: asyncio.StreamReader, writer: asyncssh.SSHWriter[bytes]) -> None:
    while chunk := await reader.read(_CHUNK):
        writer.write(chunk)
        await writer.drain()


async def _feed_stdin(
    process: asyncssh.SSHServerProcess[bytes], proc: asyncio.subprocess.Process
) -> None:
    stdin = proc.stdin
    assert stdin is not None
    try:
        while True:
            try:
                data = await process.stdin.read(_CHUNK)
            except asyncssh.SignalReceived as sig:
                _signal_group(proc.pid, sig.signal)
                continue
            except (asyncssh.TerminalSizeChanged, asyncssh.BreakReceived):
                continue
            if not data:
                break
            stdin.write(data)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError, asyncssh.Error):
        pass  # the command stopped reading: the client's input goes nowhere, as with sshd
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


def _signal_group(pgid: int, name: str) -> None:
    try:
        signum = signal.Signals[f"SIG{name.upper()}"]
    except KeyError:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


async def _hang_up(proc: asyncio.subprocess.Process) -> None:
    """SIGHUP the command's group as a dropped terminal would, then SIGKILL what is left."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGHUP)
    try:
        async with asyncio.timeout(_HANGUP_GRACE_S):
            await proc.wait()
    except TimeoutError:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


def _set_size(fd: int, process: asyncssh.SSHServerProcess[Any]) -> None:
    cols, rows, width, height = process.get_terminal_size()
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, width, height))


async def _pty_session(
    container: Container,
    process: asyncssh.SSHServerProcess[bytes],
    argv: tuple[str, ...] | None,
) -> None:
    """``argv`` (default: an interactive ``/bin/sh -i``) on a pseudo-terminal."""
    master, slave = pty.openpty()
    _set_size(master, process)
    try:
        proc = await container.spawn(
            *(argv or ("/bin/sh", "-i")),
            term=process.get_terminal_type(),
            stdin=slave,
            stdout=slave,
            stderr=slave,
        )
    finally:
        os.close(slave)
    loop = asyncio.get_running_loop()
    output: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(master, _CHUNK)
        except OSError:  # EIO: the shell and everything on the terminal are gone
            data = b""
        if not data:
            loop.remove_reader(master)
        output.put_nowait(data)

    os.set_blocking(master, False)
    loop.add_reader(master, readable)

    async def to_client() -> None:
        while data := await output.get():
            process.stdout.write(data)
            await process.stdout.drain()

    async def from_client() -> None:
        while True:
            try:
                data = await process.stdin.read(_CHUNK)
            except asyncssh.TerminalSizeChanged:
                _set_size(master, process)
                continue
            except asyncssh.SignalReceived as sig:
                _signal_group(proc.pid, sig.signal)
                continue
            except asyncssh.BreakReceived:
                continue
            if not data:
                return
            with contextlib.suppress(BlockingIOError):
                os.write(master, data)

    out_task = asyncio.create_task(to_client())
    in_task = asyncio.create_task(from_client())
    closed = asyncio.ensure_future(process.channel.wait_closed())
    try:
        await asyncio.wait({out_task, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (in_task, out_task, closed):
            task.cancel()
        await asyncio.gather(in_task, out_task, closed, return_exceptions=True)
        loop.remove_reader(master)
        await _hang_up(proc)
        os.close(master)
    if not process.channel.is_closing():
        _exit(process, proc.returncode)
