"""An instance's "container": its folder, environment, mapped ports and processes.

A sandbox instance has no container runtime behind it: its commands run on this machine, as the
local user, with ``/bin/sh``. What makes it feel like a Vast.ai container is kept here:

- a folder of its own (the SFTP root, the shell's ``HOME`` and working directory), removed when
  the instance is destroyed, and a ``bin`` folder beside it holding the ``nvidia-smi`` shim;
- the environment Vast.ai sets (``VAST_CONTAINERLABEL``, ``CONTAINER_ID``, ``PUBLIC_IPADDR``,
  ``GPU_COUNT``, ``DATA_DIRECTORY``, ``VAST_TCP_PORT_<n>``/``VAST_UDP_PORT_<n>`` per port) plus
  the caller's ``env``, and nothing of the sandbox process's own environment but ``PATH`` and the
  locale (so no ``VASTAI_API_KEY`` reaches a job); a ``hostname`` shim prints ``C.<id>``;
- its mapped ports: every ``-p N:N`` asks for a free loopback port ``P``; the mapping is an
  identity mapping (``ports["N/tcp"]`` says ``P``, ``VAST_TCP_PORT_N=P``, the job listens on
  ``P``), because every instance shares this machine's loopback;
- every process it started: each runs in a new session (its own process group) and carries a
  random marker in its environment, so :meth:`Container.kill_all` finds and kills all of them,
  even those that left the group, when the instance stops or is destroyed.

This module never imports the SDK's models, converter, session or client.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import sys
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from vastai_async.sandbox import nvidia_smi
from vastai_async.sandbox.emulated import EmulatedShell

__all__ = [
    "MARKER",
    "SHELLS",
    "Container",
    "ShellMode",
    "allocate_port",
    "port_specs",
]

logger = logging.getLogger(__name__)

ShellMode = Literal["real", "emulated"]
#: The shell modes a sandbox accepts.
SHELLS: tuple[ShellMode, ...] = ("real", "emulated")
#: Environment variable carrying a container's random token in every process it starts.
MARKER = "VASTAI_SANDBOX_CONTAINER"
#: Host variables a container inherits (the rest of the sandbox's environment stays out).
_INHERITED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
#: Vast.ai's limit of open ports per instance.
_MAX_PORTS = 64
#: Lines of onstart output kept in an instance's log.
_LOG_LINES_MAX = 10_000

_LIVE: weakref.WeakSet[Container] = weakref.WeakSet()
#: Host ports handed to live containers: not listened on until their job starts, so a bind test
#: alone would hand the same port to two instances created back to back.
_RESERVED: set[tuple[str, int]] = set()


def port_specs(env: Mapping[str, str]) -> list[str]:
    """The container ports an instance's ``env`` asks for, as ``"8080/tcp"`` keys.

    Docker ``-p`` options arrive as env keys (``{"-p 8080:8080": "1"}``, the official CLI's
    form); a key may hold several options (``"-p 1111:1111 -p 8082:8082/udp"``). The container
    port is the right-hand side; the host side is always chosen by the host, as on Vast.ai.
    """
    found: list[str] = []
    for key in env:
        if not key.startswith("-"):
            continue
        try:
            words = shlex.split(key)
        except ValueError:
            continue
        for i, word in enumerate(words):
            spec = None
            if word == "-p" and i + 1 < len(words):
                spec = words[i + 1]
            elif word.startswith("-p") and len(word) > 2 and word[2].isdigit():
                spec = word[2:]
            if spec is None:
                continue
            mapping, _, proto = spec.partition("/")
            inner = mapping.rsplit(":", 1)[-1]
            proto = proto or "tcp"
            if inner.isdigit() and 0 < int(inner) < 1 << 17 and proto in ("tcp", "udp"):
                name = f"{int(inner)}/{proto}"
                if name not in found:
                    found.append(name)
    return found[:_MAX_PORTS]


def _ephemeral_floor() -> int:
    # Below the kernel's range for outgoing connections, so no client socket takes a port
    # between the moment it is chosen and the moment the job binds it.
    with contextlib.suppress(OSError, ValueError, IndexError):
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return max(int(text.split()[0]), 12_000)
    return 32_768


def allocate_port(proto: str = "tcp", *, host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, outside the range used for outgoing connections.

    The port stays reserved (never handed out again) until the container holding it is removed.

    Raises:
        OSError: no free port found.
    """
    floor = _ephemeral_floor()
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    rng = random.Random(secrets.randbits(64))
    for _ in range(200):
        port = rng.randrange(10_000, floor)
        if (proto, port) in _RESERVED:
            continue
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _RESERVED.add((proto, port))
        return port
    raise OSError("no free port for a sandbox port mapping")


class Container:
    """One instance's folder, environment, ports and processes (see the module docstring).

    Args:
        instance_id: the instance's id.
        workdir: its folder (created by :meth:`create`, removed by :meth:`remove`).
        shell: ``"real"`` (commands run with ``/bin/sh``) or ``"emulated"`` (built-ins only).
        env: the caller's environment (``-p`` keys are port requests, not variables).
        gpus: its GPUs (``nvidia_smi.gpu_data``).
        ports: container port (``"8080/tcp"``) -> host port; allocated from ``env`` if None.
        public_ip: what ``PUBLIC_IPADDR`` says.
    """

    def __init__(
        self,
        *,
        instance_id: int,
        workdir: Path,
        shell: ShellMode,
        env: Mapping[str, str],
        gpus: dict[str, Any],
        ports: Mapping[str, int] | None = None,
        public_ip: str = "127.0.0.1",
    ) -> None:
        if shell not in SHELLS:
            raise ValueError(f"shell must be one of {SHELLS}, not {shell!r}")
        self.instance_id = instance_id
        self.workdir = Path(workdir)
        self.bindir = self.workdir.with_name(f".{self.workdir.name}.bin")
        self.shell: ShellMode = shell
        self.caller_env = {k: v for k, v in env.items() if not k.startswith("-")}
        self.gpus = gpus
        self.public_ip = public_ip
        if ports is None:
            ports = {spec: allocate_port(spec.split("/")[1]) for spec in port_specs(env)}
        self.ports: dict[str, int] = dict(ports)
        self.direct_port: int | None = None
        self.token = secrets.token_hex(12)
        self._children: set[asyncio.subprocess.Process] = set()
        self._spawned = False  # nothing to look for in /proc until a process was started
        self._tasks: set[asyncio.Task[None]] = set()
        _LIVE.add(self)

    # -- folder and environment -----------------------------------------------------------------

    def create(self) -> None:
        """Make the folder and the ``nvidia-smi`` shim (idempotent)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bindir.mkdir(parents=True, exist_ok=True)
        data = self.bindir / "gpus.json"
        data.write_text(json.dumps(self.gpus))
        shim = self.bindir / "nvidia-smi"
        python = shlex.quote(sys.executable)
        script = shlex.quote(str(Path(nvidia_smi.__file__).resolve()))
        shim.write_text(f'#!/bin/sh\nexec {python} -I {script} {shlex.quote(str(data))} "$@"\n')
        shim.chmod(0o755)
        # A container's host name is its label (``root@C.123:~#``); this machine's stays as is.
        name = f"C.{self.instance_id}"
        hostname = self.bindir / "hostname"
        hostname.write_text(
            "#!/bin/sh\n"
            f'case "$*" in ""|-s|--short|-f|--fqdn) echo {name} ;;\n'
            '*) echo "hostname: the sandbox cannot change or show that" >&2; exit 1 ;;\nesac\n'
        )
        hostname.chmod(0o755)

    def remove(self) -> None:
        """Delete the folder and the shim, free the host ports (the instance is destroyed)."""
        for spec, port in self.ports.items():
            _RESERVED.discard((spec.split("/")[1], port))
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.bindir, ignore_errors=True)

    def vast_env(self) -> dict[str, str]:
        """The variables Vast.ai sets in a container, for this instance now."""
        env = {
            "VAST_CONTAINERLABEL": f"C.{self.instance_id}",
            "CONTAINER_ID": str(self.instance_id),
            "PUBLIC_IPADDR": self.public_ip,
            "GPU_COUNT": str(len(self.gpus["gpus"])),
            "DATA_DIRECTORY": f"{self.workdir}/",
        }
        if self.direct_port is not None:
            env["VAST_TCP_PORT_22"] = str(self.direct_port)
        for spec, port in self.ports.items():
            number, proto = spec.split("/")
            env[f"VAST_{proto.upper()}_PORT_{number}"] = str(port)
        return env

    def env(self, *, term: str | None = None) -> dict[str, str]:
        """The environment a command of this instance runs with."""
        env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        env["PATH"] = f"{self.bindir}{os.pathsep}{env.get('PATH', os.defpath)}"
        env.update(HOME=str(self.workdir), PWD=str(self.workdir), SHELL="/bin/sh")
        env["HOSTNAME"] = f"C.{self.instance_id}"
        if term:
            env["TERM"] = term
        env.update(self.vast_env())
        env.update(self.caller_env)
        env[MARKER] = self.token  # last: a caller's env cannot hide a process from kill_all
        return env

    def emulated(self) -> EmulatedShell:
        """The built-in commands of this instance (``shell="emulated"``)."""
        # Its ``env`` prints the caller's variables only, as it always has.
        return EmulatedShell(
            hostname=f"C.{self.instance_id}",
            env=self.caller_env,
            gpus=self.gpus,
            workdir=self.workdir,
        )

    # -- processes ------------------------------------------------------------------------------

    async def spawn(
        self, *args: str, term: str | None = None, **kwargs: Any
    ) -> asyncio.subprocess.Process:
        """Start ``args`` in the instance's folder, environment and a process group of its own."""
        if not self.workdir.is_dir():
            self.create()
        proc = await asyncio.create_subprocess_exec(
            *_with_default_signals(args),
            cwd=self.workdir,
            env=self.env(term=term),
            start_new_session=True,
            **kwargs,
        )
        self._spawned = True
        self._children.add(proc)
        return proc

    def start_onstart(
        self,
        script: str,
        *,
        on_line: Callable[[str], None],
        on_exit: Callable[[int], None],
    ) -> None:
        """Run the onstart script in the background; its output goes to ``on_line``."""
        task = asyncio.create_task(self._onstart(script, on_line, on_exit))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _onstart(
        self, script: str, on_line: Callable[[str], None], on_exit: Callable[[int], None]
    ) -> None:
        if self.shell == "emulated":
            shell = self.emulated()
            status = 0
            for line in script.splitlines():
                out, err, status = shell.run(line)
                for text in (out + err).splitlines():
                    on_line(text)
            on_exit(status)
            return
        proc = await self.spawn(
            "/bin/sh",
            "-c",
            script,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        lines = 0
        while raw := await proc.stdout.readline():
            if lines < _LOG_LINES_MAX:
                on_line(raw.decode(errors="replace").rstrip("\n"))
                lines += 1
        on_exit(await proc.wait())

    async def kill_all(self) -> None:
        """Kill every process this instance started (SIGKILL), and the onstart reader."""
        for _ in range(5 if self._spawned else 0):  # again while something forks during the kill
            pids = await asyncio.to_thread(self._marked_pids)
            groups = {p.pid for p in self._children if p.returncode is None}
            if not pids and not groups:
                break
            for pgid in groups:  # unreaped leaders: their group ids cannot have been reused
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.01)
        for proc in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
        self._children.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _marked_pids(self) -> list[int]:
        """Live processes of this user whose environment carries this container's token."""
        proc = Path("/proc")
        if not proc.is_dir():
            return []
        wanted = f"{MARKER}={self.token}".encode()
        uid = os.getuid()
        found = []
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid != uid:
                    continue
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if wanted in environ.split(b"\0"):
                found.append(int(entry.name))
        return found

    def kill_now(self) -> None:
        """Kill everything at once, synchronously (interpreter exit)."""
        if not self._spawned:
            return
        for pid in self._marked_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for child in self._children:
            if child.returncode is None:
                with contextlib.suppress(OSError):
                    os.killpg(child.pid, signal.SIGKILL)


@atexit.register
def _kill_leftovers() -> None:
    # A sandbox not closed (a crashed test run) must still leave no process behind.
    for container in list(_LIVE):
        container.kill_now()


def _with_default_signals(args: tuple[str, ...]) -> tuple[str, ...]:
    # A real container starts its processes with default signal dispositions; ours inherit this
    # process's. Started as a background job (``cmd &``), SIGINT and SIGQUIT are ignored, and a
    # shell cannot trap a signal that was ignored when it started (POSIX), so ``trap ... INT``
    # would silently do nothing. GNU env resets them and execs (no extra process); preexec_fn
    # would too, but it is unsafe in a process with threads.
    ignored = [
        name
        for sig, name in ((signal.SIGINT, "INT"), (signal.SIGQUIT, "QUIT"))
        if signal.getsignal(sig) == signal.SIG_IGN
    ]
    env = shutil.which("env")
    if not ignored or env is None:
        return args
    return (env, f"--default-signal={','.join(ignored)}", *args)
