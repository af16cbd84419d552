"""Owner ids and the proof that an owner is dead, across PID namespaces and containers.

Default owner id: ``<hostname>-<pidns>-<pid>-<6 random hex>``, where ``pidns`` is the identity
(inode, hex) of the PID namespace the process runs in. Two containers sharing a host name
(host networking, Kubernetes ``hostNetwork``) have different PID namespaces, so a pid seen from
one says nothing about the other.

An owner is proven dead (``reap`` may destroy its machines) only by one of:

1. **Its lock is free.** Every service holds an exclusive ``flock`` on
   ``<state_dir>/owners/<owner>.lock`` from its first provision until it closes; the kernel
   drops the lock when the process dies, whatever its PID namespace or PID (PID 1 included).
   A reaper sharing the state directory (the same folder, or a volume mounted in several
   containers) that can take the lock has proof. Only for owners of this host name.
2. **Its process is gone from our own PID namespace.** The id names this host and this PID
   namespace, the pid is not ours, and ``kill(pid, 0)`` says no such process.

Anything else (another host, another PID namespace without a shared state directory, a custom
owner id) is never assumed dead: ``reap`` spares it and says how to reap it by ``--owner``.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import socket
from pathlib import Path

from vastai_async.errors import InvalidRequestError

__all__ = ["OwnerLock", "default_owner", "owner_is_dead", "pid_namespace", "this_host"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DEFAULT_SHAPE = re.compile(
    r"^(?P<host>[A-Za-z0-9._-]+)-(?P<ns>[0-9a-f]+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]{6})$"
)

_MAX_OWNER = 64


def this_host() -> str:
    """This machine's host name, made label-safe (``[A-Za-z0-9._-]``)."""
    return _UNSAFE.sub("-", socket.gethostname()).strip("-.") or "host"


def pid_namespace() -> str:
    """This process's PID namespace identity (hex inode of ``/proc/self/ns/pid``), or ``0``."""
    try:
        return format(os.stat("/proc/self/ns/pid").st_ino, "x")
    except OSError:
        return "0"  # no procfs: the pid proof never applies (ns "0" is never trusted)


def _owner_for(ns: str, pid: int, rand: str) -> str:
    suffix = f"-{ns}-{pid}-{rand}"
    return this_host()[: _MAX_OWNER - len(suffix)] + suffix


def default_owner() -> str:
    """A fresh owner id: ``<hostname>-<pidns>-<pid>-<6 random hex>``, at most 64 characters."""
    return _owner_for(pid_namespace(), os.getpid(), secrets.token_hex(3))


def _lock_path(state_dir: Path, owner: str) -> Path:
    return Path(state_dir) / "owners" / f"{owner}.lock"


class OwnerLock:
    """The exclusive lock a live owner holds in the state directory (see the module doc)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path, owner: str) -> OwnerLock:
        """Take ``owner``'s lock (non-blocking: two live services never share an owner id).

        Raises:
            InvalidRequestError: another live process holds this owner id.
        """
        path = _lock_path(state_dir, owner)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InvalidRequestError(
                f"owner id {owner!r} is in use by another live process; give each service "
                "its own VASTAI_OWNER"
            ) from None
        return cls(path, fd)

    def release(self) -> None:
        """Drop the lock (idempotent); the file stays so reapers can still prove death."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _lock_is_free(state_dir: Path, owner: str) -> bool:
    path = _lock_path(state_dir, owner)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False  # never locked here: no proof either way
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # held: the owner is alive
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def owner_is_dead(owner: str, state_dir: Path | None = None) -> bool:
    """Whether ``owner`` is proven dead (module doc: a free lock, or a gone pid of our namespace).

    Args:
        owner: the owner id from a label.
        state_dir: where owner locks live (the reaper's state directory).
    """
    match = _DEFAULT_SHAPE.match(owner)
    if match is None:
        return False  # a custom id: we cannot see its process
    if _owner_for(match["ns"], int(match["pid"]), match["rand"]) != owner:
        return False  # another host's owner: we cannot see its processes or its locks
    if state_dir is not None and _lock_is_free(state_dir, owner):
        return True
    pid = int(match["pid"])
    if match["ns"] != pid_namespace() or match["ns"] == "0" or pid == os.getpid():
        return False  # another PID namespace: "the pid is not visible from here" proves nothing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False
