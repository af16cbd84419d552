"""Host keys pinned per instance, kept in the state directory.

The first proven login of a rental captures the machine's host key; it is pinned here so a later
process can rebuild the rental from its instance id and refuse a machine whose key changed. Two
files live under ``<state_dir>/ssh/``: ``known_hosts.json`` (the index, the source of truth) and
``known_hosts`` (the same keys as OpenSSH lines, ``[host]:port key``, regenerated on each change,
so a person can pass it to ``ssh -o UserKnownHostsFile=...``). Writes are atomic (temporary file
+ rename) and private (mode 0600).

Workers of one host may share a state directory: every read-modify-write holds an exclusive
``fcntl`` lock on ``known_hosts.lock``, so no pin is lost to a concurrent writer. Code running on
an event loop uses the ``a``-prefixed methods (:meth:`KnownHostsStore.apin` ...), which do the
file work in a thread. The index is read and written through the package's one converter.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from vastai_async._converter import structure, unstructure
from vastai_async.errors import ConfigError, VastAIError

__all__ = ["KnownHostsStore", "PinnedHostKey"]


@attrs.frozen(kw_only=True)
class PinnedHostKey:
    """A host key pinned for one instance.

    Attributes:
        instance_id: the instance.
        host: SSH host the key was captured from.
        port: SSH port the key was captured from.
        key: the host public key as one OpenSSH line (``ssh-ed25519 AAAA...``).
        pinned_at: epoch seconds when it was pinned.
    """

    instance_id: int
    host: str
    port: int
    key: str
    pinned_at: float = 0.0

    def known_hosts_line(self) -> str:
        """This pin as an OpenSSH ``known_hosts`` line."""
        host = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{host} {self.key}"


class KnownHostsStore:
    """Pinned host keys per instance id, under ``<state_dir>/ssh/``.

    Args:
        state_dir: the SDK's state directory (``VastAIConfig.state_dir``).
    """

    def __init__(self, state_dir: Path | str) -> None:
        self.directory = Path(state_dir) / "ssh"
        self.index_path = self.directory / "known_hosts.json"
        self.known_hosts_path = self.directory / "known_hosts"
        self.lock_path = self.directory / "known_hosts.lock"

    async def aget(self, instance_id: int) -> PinnedHostKey | None:
        """:meth:`get`, with the file work in a thread (for code on an event loop)."""
        return await asyncio.to_thread(self.get, instance_id)

    async def apin(self, instance_id: int, host: str, port: int, key_line: str) -> PinnedHostKey:
        """:meth:`pin`, with the file work in a thread (for code on an event loop)."""
        return await asyncio.to_thread(self.pin, instance_id, host, port, key_line)

    async def aremove(self, instance_id: int) -> bool:
        """:meth:`remove`, with the file work in a thread (for code on an event loop)."""
        return await asyncio.to_thread(self.remove, instance_id)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One writer at a time across processes and threads: each call opens its own handle.
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def get(self, instance_id: int) -> PinnedHostKey | None:
        """Return the key pinned for ``instance_id``, or ``None``."""
        return self._load().get(instance_id)

    def pin(self, instance_id: int, host: str, port: int, key_line: str) -> PinnedHostKey:
        """Pin ``key_line`` for ``instance_id`` (replacing any earlier pin) and save.

        Args:
            instance_id: the instance.
            host: SSH host the key came from.
            port: SSH port the key came from.
            key_line: OpenSSH public key line; a trailing comment is dropped.

        Returns:
            The saved pin.
        """
        parts = key_line.split()
        if len(parts) < 2:
            raise ValueError("key_line must look like 'ssh-ed25519 AAAA...'")
        pinned = PinnedHostKey(
            instance_id=instance_id,
            host=host,
            port=port,
            key=f"{parts[0]} {parts[1]}",
            pinned_at=time.time(),
        )
        with self._locked():
            pins = self._load()
            pins[instance_id] = pinned
            self._save(pins)
        return pinned

    def remove(self, instance_id: int) -> bool:
        """Forget the pin of ``instance_id``; returns whether there was one."""
        with self._locked():
            pins = self._load()
            if pins.pop(instance_id, None) is None:
                return False
            self._save(pins)
        return True

    def all(self) -> list[PinnedHostKey]:
        """Every pin, by instance id."""
        return [pin for _, pin in sorted(self._load().items())]

    def _load(self) -> dict[int, PinnedHostKey]:
        try:
            raw = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise ConfigError(
                [(str(self.index_path), f"unreadable known-hosts index: {err}")]
            ) from err
        pins: dict[int, PinnedHostKey] = {}
        try:
            for key, item in raw.get("instances", {}).items():
                pins[int(key)] = structure({**item, "instance_id": key}, PinnedHostKey)
        except (AttributeError, TypeError, ValueError, VastAIError) as err:
            raise ConfigError(
                [(str(self.index_path), f"malformed known-hosts index: {err!r}")]
            ) from err
        return pins

    def _save(self, pins: dict[int, PinnedHostKey]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        index = {
            "instances": {
                str(i): {k: v for k, v in unstructure(p).items() if k != "instance_id"}
                for i, p in sorted(pins.items())
            }
        }
        _atomic_write(self.index_path, json.dumps(index, indent=1) + "\n")
        lines = "".join(p.known_hosts_line() + "\n" for _, p in sorted(pins.items()))
        _atomic_write(self.known_hosts_path, lines)


def _atomic_write(path: Path, text: str) -> None:
    # Another process may read at any time: write aside, then rename over the old file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
