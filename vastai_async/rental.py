"""``Rental``: the live handle over a machine whose SSH login was proven.

``async with rental:`` terminates the instance on exit (even when the block is cancelled);
``detach()`` keeps it for good under a ``vastai-async:kept:<job>`` label. Commands and files go
over one SSH connection (opened on first use, reopened if it drops) with the host key pinned at
first login: a changed host key or a refused key fails fast with an
:class:`~vastai_async.SSHError`, never a silent retry. A rental depends only on
:class:`RentalOwner` (terminate, relabel, the known-hosts file, timings), not on the service.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

import attrs

from vastai_async._teardown import run_uncancellable
from vastai_async.errors import SSHCommandError, SSHError, VastAIError
from vastai_async.events import Event, Outbid
from vastai_async.labels import kept_label
from vastai_async.models import Instance, RentalInfo
from vastai_async.ssh import CommandResult, SSHRunner, connect_pinned
from vastai_async.timings import Timings

if TYPE_CHECKING:
    import asyncssh

__all__ = ["Rental", "RentalOwner"]


@attrs.frozen(kw_only=True)
class RentalOwner:
    """What a :class:`Rental` needs from whoever rented it (the service builds one).

    Attributes:
        terminate: destroys an instance and confirms it gone (through the service's custody).
        relabel: sets an instance's label.
        show: reads an instance (to tell an outbid interruptible rental from a broken link).
        emit: delivers an event to the service's ``on_event``.
        known_hosts_path: the OpenSSH known-hosts file holding pinned host keys.
        timings: connect and login timeouts.
    """

    terminate: Callable[[int], Awaitable[bool]]
    relabel: Callable[[int, str], Awaitable[None]]
    show: Callable[[int], Awaitable[Instance]]
    emit: Callable[[Event], Awaitable[None]]
    known_hosts_path: Path
    timings: Timings


class Rental:
    """A rented machine you can already log into.

    Attributes:
        info: frozen facts: instance id, job, offer, SSH endpoint, pinned host key, price, times.
    """

    def __init__(
        self,
        *,
        info: RentalInfo,
        owner: RentalOwner,
        client_key: asyncssh.SSHKey,
        key_path: Path,
    ) -> None:
        self.info = info
        self._owner = owner
        self._client_key = client_key
        self._key_path = key_path
        self._detached = False
        self._terminated = False
        self._ssh: SSHRunner | None = None

    def __repr__(self) -> str:
        ssh = self.info.ssh
        return (
            f"Rental(instance_id={self.info.instance_id}, job_id={self.info.job_id!r}, "
            f"ssh={ssh.kind}:{ssh.host}:{ssh.port}, dph_total={self.info.dph_total})"
        )

    @property
    def instance_id(self) -> int:
        """The Vast instance id."""
        return self.info.instance_id

    @property
    def detached(self) -> bool:
        """Whether :meth:`detach` kept this machine for good."""
        return self._detached

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._detached:
            await run_uncancellable(self.terminate())
        else:
            await self.close()

    async def close(self) -> None:
        """Close the SSH connection (the machine keeps running). Idempotent."""
        ssh, self._ssh = self._ssh, None
        if ssh is not None:
            await ssh.close()

    async def terminate(self) -> bool:
        """Destroy the machine and confirm; ``False`` when it was already gone.

        Idempotent: a second call asks Vast again and reports ``False``.
        """
        self._terminated = True
        # Closing our SSH link must never keep the machine alive.
        with contextlib.suppress(Exception):
            await self.close()
        return await self._owner.terminate(self.info.instance_id)

    async def detach(self, label: str | None = None) -> None:
        """Keep the machine for good: relabel it ``vastai-async:kept:<job>[:<label>]``.

        After this, ``async with`` no longer terminates it and ``reap`` spares it.
        """
        await self._owner.relabel(self.info.instance_id, kept_label(self.info.job_id, label))
        self._detached = True

    async def run(
        self,
        command: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  (the documented Rental.run surface)
        check: bool = False,
    ) -> CommandResult:
        """Run a command over SSH.

        Args:
            command: the command line.
            timeout: seconds before :class:`~vastai_async.SSHTimeoutError`.
            check: raise :class:`~vastai_async.SSHCommandError` on a non-zero exit.

        Returns:
            Exit status, stdout and stderr.
        """
        try:
            return await self._connection().run(command, timeout=timeout, check=check)
        except SSHError as err:
            raise await self._explain(err) from err

    async def put(self, local: str | Path, remote: str) -> None:
        """Copy a local file to the machine over SFTP."""
        try:
            await self._connection().put(local, remote)
        except SSHError as err:
            raise await self._explain(err) from err

    async def get(self, remote: str, local: str | Path) -> None:
        """Copy a file from the machine over SFTP."""
        try:
            await self._connection().get(remote, local)
        except SSHError as err:
            raise await self._explain(err) from err

    async def _explain(self, err: SSHError) -> VastAIError:
        # An interruptible rental whose link broke may have been outbid: ask Vast, and if so
        # say so (OutbidError, and an Outbid event) instead of a bare connection error.
        if self.info.bid_usd_per_hour is None or isinstance(err, SSHCommandError):
            return err
        if self._terminated:
            return err
        try:
            inst = await self._owner.show(self.info.instance_id)
        except VastAIError:
            return err
        outbid = inst.outbid_error()
        if outbid is None:
            return err
        await self._owner.emit(
            Outbid(
                race_id=self.info.label.rsplit(":", 1)[-1],
                job_id=self.info.job_id,
                instance_id=self.info.instance_id,
                bid=self.info.bid_usd_per_hour,
                min_bid=inst.min_bid,
            )
        )
        return outbid

    def ssh_command(self) -> str:
        """The ``ssh`` line a person can paste (key file and pinned host key included)."""
        ssh = self.info.ssh
        known = self._owner.known_hosts_path
        parts = [
            "ssh",
            "-i",
            str(self._key_path),
            "-p",
            str(ssh.port),
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "StrictHostKeyChecking=yes",
            f"{ssh.user}@{ssh.host}",
        ]
        return shlex.join(parts)

    def _connection(self) -> SSHRunner:
        if self._terminated:
            raise SSHError(
                "the rental was terminated: its machine is destroyed",
                instance_id=self.info.instance_id,
            )
        if self._ssh is None:
            self._ssh = self._connect()
        return self._ssh

    def _connect(self) -> SSHRunner:
        timings = self._owner.timings
        return connect_pinned(
            self.info.ssh.host,
            self.info.ssh.port,
            client_key=self._client_key,
            host_key_line=self.info.host_key,
            connect_timeout=timings.connect_timeout_s,
            login_timeout=timings.login_timeout_s,
            instance_id=self.info.instance_id,
        )
