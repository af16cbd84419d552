"""The sandbox's per-instance SSH server: a real asyncssh server on 127.0.0.1, with faults.

Each instance gets its own host key and a proxy port bound at creation. Until the instance runs,
connections to the proxy port are accepted and closed at once (a host that is still booting).
Once started, the same port and a new direct port speak real SSH: user ``root``, public keys only,
checked at authentication time against the instance's and the account's keys (so keys attached
later count). Sessions run in the instance's container (``container.py``): with ``shell="real"``
a real ``/bin/sh`` in its folder (``shell.py``), with ``shell="emulated"`` a dozen built-ins that
never start a host process (``emulated.py``). SFTP is chrooted to the same folder.

We accept connections ourselves (``loop.sock_accept``) and hand each accepted socket to
``asyncssh.run_server``: that keeps one listening socket across "booting" and "serving", and lets
every fault decide per connection before a single byte (the banner) is sent.

This module never imports the SDK's models, converter, session or client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal

import asyncssh
import attrs

from vastai_async.sandbox.container import Container, ShellMode
from vastai_async.sandbox.emulated import sleep_seconds
from vastai_async.sandbox.nvidia_smi import gpu_data
from vastai_async.sandbox.shell import run_session

__all__ = ["InstanceSSHServer", "SSHFaults", "SSHSessionRecord"]

logger = logging.getLogger(__name__)

PortKind = Literal["proxy", "direct"]

#: Backlog of a serving listener; a firewalled one drops to 0 and fills its queue itself.
_BACKLOG = 128
#: How long a refused connection is drained before it is dropped.
_DRAIN_S = 10.0


def _track_clear(instance: SSHFaults, attribute: attrs.Attribute[bool], value: bool) -> bool:
    if value and not getattr(instance, attribute.name):
        # on_setattr runs before the assignment: servers record a readiness reached so far
        # while the old (reachable) state is still visible.
        for watcher in list(_WATCHERS.get(instance, ())):
            watcher()
    if not value and getattr(instance, attribute.name):
        # Remember when a "host unreachable" fault was lifted: ready_at cannot precede it.
        instance.cleared_at = time.time()
    _changed(instance).set()
    return value


_CHANGE_EVENTS: weakref.WeakKeyDictionary[SSHFaults, asyncio.Event] = weakref.WeakKeyDictionary()
_WATCHERS: weakref.WeakKeyDictionary[SSHFaults, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def _changed(faults: SSHFaults) -> asyncio.Event:
    """The event set on every change of ``refuse``, ``hang_before_banner``, ``firewall_direct``."""
    event = _CHANGE_EVENTS.get(faults)
    if event is None:
        event = _CHANGE_EVENTS[faults] = asyncio.Event()
    return event


def _notify_change(instance: SSHFaults, attribute: attrs.Attribute[Any], value: Any) -> Any:
    _changed(instance).set()
    return value


# Identity semantics (eq=False): a live switchboard shared with the listeners, which wait on a
# per-object change event kept here so the class stays plain data (attrs.asdict works).
@attrs.define(eq=False)
class SSHFaults:
    """SSH faults of one instance; mutable, read at each connection or authentication.

    Attributes:
        refuse: every connection is accepted and closed at once (no banner).
        hang_before_banner: TCP connections are accepted but no SSH banner is ever sent.
        refuse_auth_until: epoch seconds; authentication is refused before this moment.
        firewall_direct: ``connect()`` to the direct port hangs (its accept queue is kept full).
        cleared_at: epoch of the last moment ``refuse`` or ``hang_before_banner`` was lifted
            (0.0 if never); set automatically.
    """

    refuse: bool = attrs.field(default=False, on_setattr=_track_clear)
    hang_before_banner: bool = attrs.field(default=False, on_setattr=_track_clear)
    refuse_auth_until: float | None = None
    firewall_direct: bool = attrs.field(default=False, on_setattr=_notify_change)
    cleared_at: float = 0.0


@attrs.frozen(kw_only=True)
class SSHSessionRecord:
    """One SSH session (channel) opened on an instance.

    Attributes:
        at: epoch seconds when it opened.
        port_kind: ``"proxy"`` or ``"direct"``.
        username: the login name.
        key_fingerprint: SHA256 fingerprint of the key that logged in.
        kind: ``"exec"``, ``"shell"`` or ``"sftp"``.
        command: the exec command, else ``None``.
    """

    at: float
    port_kind: str
    username: str
    key_fingerprint: str
    kind: str
    command: str | None = None


def _discard_accepted(fut: asyncio.Future[tuple[socket.socket, Any]]) -> None:
    if fut.cancelled():
        return
    if fut.exception() is None:  # reading it marks an error as retrieved
        fut.result()[0].close()


class InstanceSSHServer:
    """The SSH face of one sandbox instance (see the module docstring).

    Args:
        instance_id: the instance's id (seeds the GPU UUIDs).
        hostname: what ``hostname`` prints.
        authorized_keys: returns ``(OpenSSH public key line, attached_at epoch)`` pairs; called at
            every authentication, so keys attached later count.
        env: the caller's environment of the instance (``-p`` keys ask for ports).
        gpu_name: GPU model ``nvidia-smi`` prints.
        num_gpus: number of GPUs.
        workdir: the instance's folder (SFTP root, shell's home).
        host: address to listen on.
        faults: initial faults (mutable later through :attr:`faults`).
        shell: ``"real"`` or ``"emulated"`` (see ``container.py``); ignored with ``container``.
        container: the instance's container, kept by its owner across servers (start, stop,
            reboot). Without one the server makes its own, and :meth:`stop` removes it.
    """

    def __init__(
        self,
        *,
        instance_id: int,
        hostname: str,
        authorized_keys: Callable[[], list[tuple[str, float]]],
        env: dict[str, str],
        gpu_name: str,
        num_gpus: int,
        workdir: Path,
        host: str = "127.0.0.1",
        faults: SSHFaults | None = None,
        shell: ShellMode = "emulated",
        container: Container | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.hostname = hostname
        self.env = dict(env)
        self.gpu_name = gpu_name
        self.num_gpus = num_gpus
        self._owns_container = container is None
        if container is None:
            gpus = gpu_data(instance_id=instance_id, gpu_name=gpu_name, num_gpus=num_gpus)
            container = Container(
                instance_id=instance_id, workdir=Path(workdir), shell=shell, env=env, gpus=gpus
            )
        self.container = container
        self.workdir = container.workdir
        self.host = host
        self.sessions: list[SSHSessionRecord] = []
        self.proxy_port: int | None = None
        self.direct_port: int | None = None
        self.started_at: float | None = None
        self._authorized_keys = authorized_keys
        self._faults = faults if faults is not None else SSHFaults()
        _WATCHERS.setdefault(self._faults, []).append(self._latch_ready)
        self._ready_latched: float | None = None
        self._stopped_at: float | None = None
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._parsed: dict[str, bytes | None] = {}
        self._listeners: dict[PortKind, socket.socket] = {}
        self._accept_tasks: list[asyncio.Task[None]] = []
        self._serve_tasks: set[asyncio.Task[None]] = set()
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._held: set[socket.socket] = set()
        # Accepted sockets whose task has not started yet: a task cancelled before its first
        # step never runs its own cleanup, so stop() closes these.
        self._unclaimed: set[socket.socket] = set()
        self._options: dict[PortKind, asyncssh.SSHServerConnectionOptions] = {}
        self._stopped = False

    # -- public surface -------------------------------------------------------------------------

    @property
    def host_key_openssh(self) -> str:
        """This instance's host public key as one OpenSSH line (``ssh-ed25519 AAAA...``)."""
        return self._host_key.export_public_key("openssh").decode().strip()

    @property
    def faults(self) -> SSHFaults:
        """The live faults; mutate them or assign a new :class:`SSHFaults`."""
        return self._faults

    @faults.setter
    def faults(self, new: SSHFaults) -> None:
        old = self._faults
        self._latch_ready()
        if (old.refuse or old.hang_before_banner) and not (new.refuse or new.hang_before_banner):
            new.cleared_at = max(new.cleared_at, time.time())
        self._unwatch()
        self._faults = new
        _WATCHERS.setdefault(new, []).append(self._latch_ready)
        _changed(old).set()  # wake a listener waiting on the old object

    @property
    def ready_at(self) -> float | None:
        """Epoch when this server became able to accept a login with any attached key, or None.

        The latest of: started, refuse/hang faults lifted, auth-refusal window over, first key
        attached; independent of whether anyone tried. Once that moment has passed it is
        recorded for good (it survives :meth:`stop` and later faults), so a race can be checked
        against it after its losers are destroyed. ``None`` while never started, refusing or
        hanging, or without a key; a moment still ahead (auth refused until then) is returned
        but not yet recorded.
        """
        if self._ready_latched is not None:
            return self._ready_latched
        keys = self._authorized_keys()
        moment = self._ready_at(min((at for _, at in keys), default=None))
        if moment is not None and moment <= time.time():
            self._ready_latched = moment
        return moment

    def ready_at_for(self, public_key_line: str) -> float | None:
        """Like :attr:`ready_at`, for one particular client key (``None`` if never attached)."""
        wanted = self._key_blob(public_key_line)
        times = [at for line, at in self._authorized_keys() if self._key_blob(line) == wanted]
        return self._ready_at(min(times, default=None))

    async def bind(self) -> int:
        """Bind the proxy port; until :meth:`start` its connections are accepted and closed.

        Returns:
            The proxy port.
        """
        if self.proxy_port is not None:
            return self.proxy_port
        if self._stopped:
            raise RuntimeError("server stopped")
        await asyncio.to_thread(self.container.create)
        self.proxy_port = await self._listen("proxy")
        return self.proxy_port

    async def start(self) -> int:
        """Serve SSH on the proxy port and on a new direct port.

        Returns:
            The direct port.
        """
        if self.direct_port is not None:
            return self.direct_port
        if self._stopped:
            raise RuntimeError("server stopped")
        await self.bind()
        for kind in ("proxy", "direct"):
            self._options[kind] = await asyncssh.SSHServerConnectionOptions.construct(
                server_host_keys=[self._host_key],
                server_factory=lambda kind=kind: _ConnectionHandler(self, kind),
                process_factory=self._handle_process,
                sftp_factory=self._make_sftp,
                allow_scp=False,
                agent_forwarding=False,
                x11_forwarding=False,
                login_timeout=30.0,
                keepalive_interval=0,
                encoding=None,  # commands' bytes pass through unchanged
            )
        self.direct_port = await self._listen("direct")
        self.container.direct_port = self.direct_port
        self.started_at = time.time()
        return self.direct_port

    async def stop(self) -> None:
        """Close listeners and connections, kill the commands; remove an own container.

        Idempotent. A container passed in is left for its owner to remove.
        """
        if not self._stopped:
            self._latch_ready()
            self._stopped_at = time.time()
            self._unwatch()
        self._stopped = True
        tasks = [*self._accept_tasks, *self._serve_tasks]
        for task in tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        for lsock in self._listeners.values():
            # A cancelled sock_accept drops its epoll registration only on a later loop turn;
            # closing first leaves it stale, and the next socket that reuses the fd number in
            # this loop fails with ENOENT (seen as "SSH connect failed: FileNotFoundError").
            loop.remove_reader(lsock.fileno())
            lsock.close()
        for held in self._held:
            held.close()
        self._held.clear()
        for conn in list(self._conns):
            conn.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        for unclaimed in self._unclaimed:
            unclaimed.close()
        self._unclaimed.clear()
        for conn in list(self._conns):
            with contextlib.suppress(Exception):
                await conn.wait_closed()
        self._conns.clear()
        self._accept_tasks.clear()
        self._listeners.clear()
        await self.container.kill_all()
        if self._owns_container:
            await asyncio.to_thread(self.container.remove)

    # -- authentication -------------------------------------------------------------------------

    def _key_blob(self, line: str) -> bytes | None:
        if line not in self._parsed:
            try:
                self._parsed[line] = asyncssh.import_public_key(line).public_data
            except (asyncssh.KeyImportError, ValueError):
                self._parsed[line] = None
        return self._parsed[line]

    def _is_authorized(self, key: asyncssh.SSHKey) -> bool:
        blob = key.public_data
        return any(self._key_blob(line) == blob for line, _ in self._authorized_keys())

    def _ready_at(self, key_at: float | None) -> float | None:
        f = self._faults
        if self.started_at is None or key_at is None:
            return None
        if f.refuse or f.hang_before_banner:
            return None
        moment = max(self.started_at, f.cleared_at, f.refuse_auth_until or 0.0, key_at)
        if self._stopped_at is not None and moment > self._stopped_at:
            return None  # it was destroyed before it could have been ready
        return moment

    def _latch_ready(self) -> None:
        self.ready_at  # noqa: B018 -- evaluating the property records a moment already passed

    def _unwatch(self) -> None:
        watchers = _WATCHERS.get(self._faults, [])
        if self._latch_ready in watchers:
            watchers.remove(self._latch_ready)

    # -- connections ----------------------------------------------------------------------------

    async def _listen(self, kind: PortKind) -> int:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((self.host, 0))
        lsock.listen(_BACKLOG)
        lsock.setblocking(False)
        self._listeners[kind] = lsock
        filler = None
        if kind == "direct" and self._faults.firewall_direct:
            # Firewalled from the start: in force before start() returns, so no early client
            # slips into the accept queue.
            filler = await self._fill_queue(lsock)
        task = asyncio.create_task(self._accept_loop(lsock, kind, filler))
        self._accept_tasks.append(task)
        port: int = lsock.getsockname()[1]
        return port

    async def _accept_loop(
        self, lsock: socket.socket, kind: PortKind, filler: socket.socket | None
    ) -> None:
        while True:
            if kind == "direct" and self._faults.firewall_direct:
                await self._firewalled(lsock, filler)
                filler = None
                continue
            try:
                accepted = await self._accept(lsock, watch_faults=kind == "direct")
            except OSError as err:  # e.g. EMFILE under load: do not spin
                logger.warning("sandbox sshd accept failed on %s: %s", kind, err)
                await asyncio.sleep(0.05)
                continue
            if accepted is not None:
                self._dispatch(accepted, kind)

    async def _accept(self, lsock: socket.socket, *, watch_faults: bool) -> socket.socket | None:
        """Accept one connection; ``None`` when the faults changed first (direct port only)."""
        # Not loop.sock_accept: a task cancelled (by stop()) just as its accept completed drops
        # the accepted socket unclosed. Here accept() runs in our own step, so a cancellation can
        # only land while nothing is held.
        loop = asyncio.get_running_loop()
        faults = self._faults
        if watch_faults:
            # The direct port must notice a firewall switched on while it waits.
            _changed(faults).clear()
        while True:
            try:
                conn_sock, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                pass
            else:
                conn_sock.setblocking(False)
                return conn_sock
            fd = lsock.fileno()
            readable = loop.create_future()
            loop.add_reader(fd, _resolve, readable)
            changed = asyncio.ensure_future(_changed(faults).wait()) if watch_faults else None
            try:
                await asyncio.wait(
                    {readable} if changed is None else {readable, changed},
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                if changed is not None:
                    changed.cancel()
                # stop() unregisters and closes the listener itself; a closed socket reports -1,
                # and its old fd number may already belong to someone else.
                if lsock.fileno() == fd:
                    loop.remove_reader(fd)
            if not readable.done():
                return None  # the faults changed first

    async def _fill_queue(self, lsock: socket.socket) -> socket.socket:
        # A listener with backlog 0 and one queued connection drops further SYNs, so a client's
        # connect() hangs exactly as behind a firewall that drops packets.
        lsock.listen(0)
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        self._held.add(filler)
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().sock_connect(filler, lsock.getsockname())
        return filler

    async def _firewalled(self, lsock: socket.socket, filler: socket.socket | None) -> None:
        if filler is None:
            filler = await self._fill_queue(lsock)
        try:
            while (faults := self._faults).firewall_direct:
                _changed(faults).clear()
                await _changed(faults).wait()
        finally:
            self._held.discard(filler)
            filler.close()
            if not self._stopped:
                lsock.listen(_BACKLOG)

    def _dispatch(self, conn_sock: socket.socket, kind: PortKind) -> None:
        f = self._faults
        if self._stopped or self.started_at is None or f.refuse:
            self._unclaimed.add(conn_sock)
            self._track(self._close_gracefully(conn_sock))
        elif f.hang_before_banner or (kind == "direct" and f.firewall_direct):
            self._held.add(conn_sock)
        else:
            self._unclaimed.add(conn_sock)
            self._track(self._serve(conn_sock, kind))

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._serve_tasks.add(task)
        task.add_done_callback(self._serve_tasks.discard)

    async def _close_gracefully(self, conn_sock: socket.socket) -> None:
        # Send FIN at once, then drain what the client sends until it closes: a plain close()
        # with its version line unread would send RST, and the client would see "reset" or
        # "closed" by chance. A booting host that closes is always "closed" this way.
        self._unclaimed.discard(conn_sock)
        loop = asyncio.get_running_loop()
        try:
            conn_sock.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(_DRAIN_S):
                while await loop.sock_recv(conn_sock, 4096):
                    pass
        except (OSError, TimeoutError):
            pass
        finally:
            conn_sock.close()

    async def _serve(self, conn_sock: socket.socket, kind: PortKind) -> None:
        self._unclaimed.discard(conn_sock)
        try:
            conn = await asyncssh.run_server(conn_sock, options=self._options[kind])
        except (asyncssh.Error, OSError, TimeoutError) as err:
            # Failed handshakes and refused keys end here; the client sees its own error.
            logger.debug("sandbox sshd %s handshake ended: %s", self.instance_id, err)
            conn_sock.close()
            return
        except BaseException:
            # asyncssh closes its transport and waits for it before raising; this close matters
            # only when stop() cancelled us before a transport existed (a second close is a no-op).
            conn_sock.close()
            raise
        self._conns.add(conn)
        try:
            await conn.wait_closed()
        finally:
            self._conns.discard(conn)

    # -- sessions -------------------------------------------------------------------------------

    def _record(self, chan: Any, kind: str, command: str | None) -> None:
        conn = chan.get_connection()
        self.sessions.append(
            SSHSessionRecord(
                at=time.time(),
                port_kind=conn.get_extra_info("sandbox_port_kind", "?"),
                username=conn.get_extra_info("username", "") or "",
                key_fingerprint=conn.get_extra_info("sandbox_key_fingerprint", ""),
                kind=kind,
                command=command,
            )
        )

    def _make_sftp(self, chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        self._record(chan, "sftp", None)
        return asyncssh.SFTPServer(chan, chroot=os.fsencode(self.workdir))

    async def _handle_process(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command
        self._record(process.channel, "shell" if command is None else "exec", command)
        try:
            if self.container.shell == "real":
                await run_session(self.container, process)
            elif command is None:
                await self._emulated_shell(process)
            else:
                await self._emulated_exec(process, command)
        except (asyncssh.Error, OSError):
            process.close()

    async def _emulated_exec(self, process: asyncssh.SSHServerProcess[bytes], command: str) -> None:
        if command.split(maxsplit=1)[:1] == ["sleep"]:
            # Lets tests exercise command timeouts; an asyncio wait, never a host process.
            # Ends early when the client closes the channel, so nothing lingers.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(sleep_seconds(command), 0.0)):
                    await process.wait_closed()
        out, err, status = self.container.emulated().run(command)
        process.stdout.write(out.encode())
        process.stderr.write(err.encode())
        process.exit(status)

    async def _emulated_shell(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        # A minimal line shell over the same built-ins, so `ssh root@...` by hand is usable.
        shell = self.container.emulated()
        prompt = f"root@{self.hostname}:~# ".encode()
        newline = "\r\n" if process.get_terminal_type() else "\n"
        process.stdout.write(prompt)
        async for raw in process.stdin:
            line = raw.decode(errors="replace").strip()
            out, err, status = shell.run(line)
            process.stdout.write(out.replace("\n", newline).encode())
            process.stderr.write(err.replace("\n", newline).encode())
            if line.split(maxsplit=1)[:1] == ["exit"]:
                process.exit(status)
                return
            process.stdout.write(prompt)
        process.exit(0)


def _resolve(future: asyncio.Future[None]) -> None:
    """Reader callback of ``_accept``: the listener is readable."""
    if not future.done():
        future.set_result(None)


class _ConnectionHandler(asyncssh.SSHServer):
    """Per-connection policy: root only, public keys only, checked at authentication time."""

    def __init__(self, owner: InstanceSSHServer, kind: PortKind) -> None:
        self._owner = owner
        self._kind = kind
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        conn.set_extra_info(sandbox_port_kind=self._kind)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if username != "root":
            return False
        until = self._owner.faults.refuse_auth_until
        if until is not None and time.time() < until:
            return False
        if not self._owner._is_authorized(key):
            return False
        if self._conn is not None:
            self._conn.set_extra_info(sandbox_key_fingerprint=key.get_fingerprint())
        return True
