"""Owner ids: the default ``<hostname>-<pid>-<random>`` and the proof that an owner is dead.

An owner is proven dead only when its id has our default shape, names this host, and its
process id is no longer running. Anything else (another host, a custom owner id) is never
assumed dead: ``reap`` spares it unless the caller names it.
"""

from __future__ import annotations

import os
import re
import secrets
import socket

__all__ = ["default_owner", "owner_is_dead", "this_host"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DEFAULT_SHAPE = re.compile(r"^(?P<host>[A-Za-z0-9._-]+)-(?P<pid>\d+)-(?P<rand>[0-9a-f]{6})$")


_MAX_OWNER = 64


def this_host() -> str:
    """This machine's host name, made label-safe (``[A-Za-z0-9._-]``)."""
    return _UNSAFE.sub("-", socket.gethostname()).strip("-.") or "host"


def _owner_for(pid: int, rand: str) -> str:
    suffix = f"-{pid}-{rand}"
    return this_host()[: _MAX_OWNER - len(suffix)] + suffix


def default_owner() -> str:
    """A fresh owner id: ``<hostname>-<pid>-<6 random hex>``, at most 64 characters.

    The host name is reduced to ``[A-Za-z0-9._-]`` so the id fits in a rental label; the pid
    lets ``reap`` tell a dead owner on the same host, the random part tells two services apart.
    """
    return _owner_for(os.getpid(), secrets.token_hex(3))


def owner_is_dead(owner: str) -> bool:
    """Whether ``owner`` is a default owner id of this host whose process is gone."""
    match = _DEFAULT_SHAPE.match(owner)
    if match is None:
        return False
    pid = int(match["pid"])
    if _owner_for(pid, match["rand"]) != owner:
        return False  # another host's owner: we cannot see its processes
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False
