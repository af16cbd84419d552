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


def this_host() -> str:
    """This machine's host name, made label-safe (``[A-Za-z0-9._-]``, at most 40 characters)."""
    return (_UNSAFE.sub("-", socket.gethostname()).strip("-") or "host")[:40]


def default_owner() -> str:
    """``<hostname>-<pid>-<6 hex>``: unique per process, provably dead once the process ends."""
    return f"{this_host()}-{os.getpid()}-{secrets.token_hex(3)}"


def owner_is_dead(owner: str) -> bool:
    """Whether ``owner`` is a default owner id of this host whose process is gone."""
    match = _DEFAULT_SHAPE.match(owner)
    if match is None or match["host"] != this_host():
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False
