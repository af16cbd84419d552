"""The emulated shell: a dozen built-in commands, no host process ever started.

The sandbox's ``shell="emulated"`` mode, kept for fast deterministic tests and for faults that
need a machine whose commands do nothing: ``echo``, ``hostname``, ``uname``, ``nvidia-smi``
(every format of the shim), ``env``, ``cat`` (inside the instance's folder), ``sleep``,
``true``/``:``, ``false`` and ``exit``. Anything else is "command not found" (127); there are no
pipes, redirections or ``;``.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from vastai_async.sandbox.nvidia_smi import render

__all__ = ["EmulatedShell", "sleep_seconds"]


class EmulatedShell:
    """The built-in commands of one instance.

    Args:
        hostname: what ``hostname`` prints.
        env: what ``env`` prints.
        gpus: the instance's GPUs (``nvidia_smi.gpu_data``).
        workdir: the folder ``cat`` reads from (the SFTP root).
    """

    def __init__(
        self, *, hostname: str, env: dict[str, str], gpus: dict[str, Any], workdir: Path
    ) -> None:
        self.hostname = hostname
        self.env = env
        self.gpus = gpus
        self.workdir = workdir

    def run(self, command: str) -> tuple[str, str, int]:
        """Run one command line; returns ``(stdout, stderr, exit status)``."""
        try:
            argv = shlex.split(command)
        except ValueError as err:
            return "", f"sh: syntax error: {err}\n", 2
        if not argv:
            return "", "", 0
        name, args = argv[0], argv[1:]
        if name in ("true", ":"):
            return "", "", 0
        if name == "sleep":
            if len(args) == 1 and sleep_seconds(command) >= 0:
                return "", "", 0
            return "", "sleep: invalid time interval\n", 1
        if name == "false":
            return "", "", 1
        if name == "echo":
            return " ".join(args) + "\n", "", 0
        if name == "hostname":
            return self.hostname + "\n", "", 0
        if name == "uname":
            if args == ["-a"]:
                line = f"Linux {self.hostname} 5.15.0-sandbox #1 SMP x86_64 x86_64 x86_64 GNU/Linux"
                return line + "\n", "", 0
            return "Linux\n", "", 0
        if name == "nvidia-smi":
            return render(self.gpus, args)
        if name == "env" and not args:
            return "".join(f"{k}={v}\n" for k, v in self.env.items()), "", 0
        if name == "cat":
            return self._cat(args)
        if name == "exit":
            try:
                return "", "", int(args[0]) & 0xFF if args else 0
            except ValueError:
                return "", f"exit: {args[0]}: numeric argument required\n", 2
        return "", f"{name}: command not found\n", 127

    def _cat(self, args: list[str]) -> tuple[str, str, int]:
        root = self.workdir.resolve()
        out: list[str] = []
        err: list[str] = []
        for arg in args:
            # Paths resolve inside the SFTP area, as SFTP's chroot sees them.
            path = (root / arg.lstrip("/")).resolve()
            if not path.is_relative_to(root) or not path.is_file():
                err.append(f"cat: {arg}: No such file or directory\n")
                continue
            out.append(path.read_text(errors="replace"))
        return "".join(out), "".join(err), 1 if err else 0


def sleep_seconds(command: str) -> float:
    """Seconds asked by ``sleep N`` (-1 when unreadable); capped so a test cannot wedge a loop."""
    try:
        return min(float(command.split()[1]), 3600.0)
    except (IndexError, ValueError):
        return -1.0
