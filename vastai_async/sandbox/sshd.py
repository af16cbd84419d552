"""The sandbox's per-instance SSH server: a real asyncssh server on 127.0.0.1, with faults.

Each instance gets its own host key and a proxy port bound at creation. Until the instance runs,
connections to the proxy port are accepted and closed at once (a host that is still booting).
Once started, the same port and a new direct port speak real SSH: user ``root``, public keys only,
checked at authentication time against the instance's and the account's keys (so keys attached
later count). Exec requests run a small built-in command set; nothing ever starts a host process.
SFTP is chrooted to the instance's work folder.

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
import shlex
import shutil
import socket
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal

import asyncssh
import attrs

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
        env: the instance environment, printed by ``env``.
        gpu_name: GPU model printed by ``nvidia-smi -L``.
        num_gpus: number of GPUs.
        workdir: the SFTP area; created here, removed by :meth:`stop`.
        host: address to listen on.
        faults: initial faults (mutable later through :attr:`faults`).
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
    ) -> None:
        self.instance_id = instance_id
        self.hostname = hostname
        self.env = dict(env)
        self.gpu_name = gpu_name
        self.num_gpus = num_gpus
        self.workdir = Path(workdir)
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
        self.workdir.mkdir(parents=True, exist_ok=True)
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
            )
        self.direct_port = await self._listen("direct")
        self.started_at = time.time()
        return self.direct_port

    async def stop(self) -> None:
        """Close both listeners and every connection, remove the work folder. Idempotent."""
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
        for conn in list(self._conns):
            with contextlib.suppress(Exception):
                await conn.wait_closed()
        self._conns.clear()
        self._accept_tasks.clear()
        self._listeners.clear()
        await asyncio.to_thread(shutil.rmtree, self.workdir, True)

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
            self._track(self._close_gracefully(conn_sock))
        elif f.hang_before_banner or (kind == "direct" and f.firewall_direct):
            self._held.add(conn_sock)
        else:
            self._track(self._serve(conn_sock, kind))

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._serve_tasks.add(task)
        task.add_done_callback(self._serve_tasks.discard)

    async def _close_gracefully(self, conn_sock: socket.socket) -> None:
        # Send FIN at once, then drain what the client sends until it closes: a plain close()
        # with its version line unread would send RST, and the client would see "reset" or
        # "closed" by chance. A booting host that closes is always "closed" this way.
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

    async def _handle_process(self, process: asyncssh.SSHServerProcess[str]) -> None:
        command = process.command
        self._record(process.channel, "shell" if command is None else "exec", command)
        try:
            if command is None:
                await self._shell(process)
                return
            if command.split(maxsplit=1)[:1] == ["sleep"]:
                # Lets tests exercise command timeouts; an asyncio wait, never a host process.
                # Ends early when the client closes the channel, so nothing lingers.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(_sleep_seconds(command), 0.0)):
                        await process.wait_closed()
            out, err, status = self._run_builtin(command)
            process.stdout.write(out)
            process.stderr.write(err)
            process.exit(status)
        except (asyncssh.Error, OSError, BrokenPipeError):
            process.close()

    async def _shell(self, process: asyncssh.SSHServerProcess[str]) -> None:
        # A minimal line shell over the same built-ins, so `ssh root@...` by hand is usable.
        prompt = f"root@{self.hostname}:~# "
        newline = "\r\n" if process.get_terminal_type() else "\n"
        process.stdout.write(prompt)
        async for line in process.stdin:
            out, err, status = self._run_builtin(line.strip())
            process.stdout.write(out.replace("\n", newline))
            process.stderr.write(err.replace("\n", newline))
            if line.strip().split(maxsplit=1)[:1] == ["exit"]:
                process.exit(status)
                return
            process.stdout.write(prompt)
        process.exit(0)

    def _run_builtin(self, command: str) -> tuple[str, str, int]:
        """Run one built-in command line; returns (stdout, stderr, exit status)."""
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
            if len(args) == 1 and _sleep_seconds(command) >= 0:
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
        if name == "nvidia-smi" and args == ["-L"]:
            return self._gpu_list(), "", 0
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

    def _gpu_list(self) -> str:
        lines = []
        for i in range(self.num_gpus):
            gpu_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"vastai-sandbox:{self.instance_id}:gpu{i}")
            lines.append(f"GPU {i}: {self.gpu_name} (UUID: GPU-{gpu_uuid})\n")
        return "".join(lines)

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


def _resolve(future: asyncio.Future[None]) -> None:
    """Reader callback of ``_accept``: the listener is readable."""
    if not future.done():
        future.set_result(None)


def _sleep_seconds(command: str) -> float:
    """Seconds asked by ``sleep N`` (-1 when unreadable); capped so a test cannot wedge a loop."""
    try:
        return min(float(command.split()[1]), 3600.0)
    except (IndexError, ValueError):
        return -1.0


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
