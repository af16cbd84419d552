"""SSH for rentals: readiness probes, host-key capture, and a pinned command runner (asyncssh).

Two regimes (design.md, "The race" steps 4-5):

* While proving readiness, :func:`probe` and :func:`wait_for_login` treat every network failure
  (refused, closed, reset, timeouts, no banner, permission denied: keys reach machines late) as
  "not yet" and report it as a :class:`ProbeResult`; only programming errors raise.
* On an established rental, :class:`SSHRunner` (from :func:`connect_pinned`) fails fast: a
  changed host key raises :class:`HostKeyMismatchError`, a refused key :class:`SSHAuthError`.

Every connection uses only the key given (no agent, no ``~/.ssh/config``, no user known_hosts).
No raw ``asyncssh`` error, ``OSError`` or ``TimeoutError`` escapes: they map onto ``errors.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncssh
import attrs

from vastai_async._logging import get_logger
from vastai_async.errors import (
    ConfigError,
    HostKeyMismatchError,
    SSHAuthError,
    SSHCommandError,
    SSHConnectError,
    SSHError,
    SSHTimeoutError,
)

__all__ = [
    "CommandResult",
    "ProbeReason",
    "ProbeResult",
    "SSHLoginTimeoutError",
    "SSHRunner",
    "connect_pinned",
    "load_client_key",
    "probe",
    "public_key_line",
    "wait_for_login",
]

logger = get_logger(__name__)

#: How long closing a channel or connection may wait for the peer's acknowledgement.
_CLOSE_WAIT_S = 2.0


class ProbeReason:
    """Why a probe failed (``ProbeResult.reason``); plain strings so new ones never break code."""

    REFUSED = "refused"  #: TCP connection refused: nothing listens yet
    CLOSED = "closed"  #: accepted then closed before login: the host is still booting
    RESET = "reset"  #: connection reset
    CONNECT_TIMEOUT = "connect_timeout"  #: TCP connect hung (firewall, dead route)
    LOGIN_TIMEOUT = "login_timeout"  #: connected, but no banner or no login in time
    PERMISSION_DENIED = "permission_denied"  #: our key is not (yet) authorised
    HOST_KEY_MISMATCH = "host_key_mismatch"  #: the host key differs from the pinned one
    PROTOCOL = "protocol_error"  #: another SSH-level failure
    UNREACHABLE = "unreachable"  #: another network failure (no route, DNS ...)
    COMMAND_FAILED = "command_failed"  #: logged in, but ``true`` did not exit 0


@attrs.frozen(kw_only=True)
class ProbeResult:
    """The outcome of one probe: a proven login, or why not.

    Attributes:
        ok: the login worked and ``true`` exited 0.
        host: host probed.
        port: port probed.
        reason: a :class:`ProbeReason` value when not ok.
        detail: human-readable detail of the failure.
        host_key: the server's host key as an OpenSSH line, when the handshake got that far.
        started_at: epoch seconds when the probe began.
        elapsed_s: how long it took.
        attempt: 1-based attempt number on this endpoint (set by :func:`wait_for_login`).
    """

    ok: bool
    host: str
    port: int
    reason: str | None = None
    detail: str = ""
    host_key: str | None = None
    started_at: float
    elapsed_s: float
    attempt: int = 1


@attrs.frozen(kw_only=True)
class CommandResult:
    """What a remote command did.

    Attributes:
        exit_status: its exit status (``None`` if it died without one, e.g. on a signal).
        stdout: its standard output.
        stderr: its standard error.
    """

    exit_status: int | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether it exited 0."""
        return self.exit_status == 0


class SSHLoginTimeoutError(SSHTimeoutError):
    """:func:`wait_for_login` reached its deadline without a proven login.

    Attributes:
        results: the last probe result of each endpoint, in the order given.
    """

    def __init__(self, message: str, *, results: Sequence[ProbeResult], **kw: Any) -> None:
        self.results: tuple[ProbeResult, ...] = tuple(results)
        super().__init__(message, **kw)


def public_key_line(key: asyncssh.SSHKey) -> str:
    """The public half of ``key`` as one OpenSSH line (``ssh-ed25519 AAAA...``), no comment."""
    parts = key.export_public_key("openssh").decode().split()
    return f"{parts[0]} {parts[1]}"


def load_client_key(path: Path | str, passphrase: str | None = None) -> asyncssh.SSHKey:
    """Read the private key used to log into rentals.

    Args:
        path: private key file (OpenSSH or PEM).
        passphrase: its passphrase, if encrypted (never logged or echoed).

    Raises:
        ConfigError: the file is missing, unreadable, encrypted without the right passphrase,
            or not a private key.
    """
    try:
        return asyncssh.read_private_key(Path(path).expanduser(), passphrase)
    except FileNotFoundError:
        raise ConfigError([("VASTAI_SSH_KEY_PATH", f"no such file: {path}")]) from None
    except OSError as err:
        reason = f"cannot read {path}: {err.strerror}"
        raise ConfigError([("VASTAI_SSH_KEY_PATH", reason)]) from None
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError):
        # The library's message may quote key material; say only what the user must fix.
        reason = f"{path} is not a usable private key (wrong or missing passphrase?)"
        raise ConfigError([("VASTAI_SSH_KEY_PATH", reason)]) from None


def _client_options(
    *, client_key: asyncssh.SSHKey, username: str, host_key_line: str | None, login_timeout: float
) -> dict[str, Any]:
    known: Any = None
    if host_key_line is not None:
        try:
            known = ([asyncssh.import_public_key(host_key_line)], [], [])
        except asyncssh.KeyImportError as err:
            raise ValueError(f"not an OpenSSH public key line: {host_key_line[:40]!r}") from err
    return {
        "username": username,
        "client_keys": [client_key],
        "known_hosts": known,
        "agent_path": None,
        "config": None,
        "preferred_auth": "publickey",
        "password": None,
        "kbdint_auth": False,
        "gss_host": None,
        # Our own asyncio.timeout bounds the login; the library's timer is a backstop only.
        "login_timeout": login_timeout + 5.0,
        "connect_timeout": None,
        "keepalive_interval": 0,
    }


async def _tcp_connect(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError = OSError(f"no address for {host}")
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
        except BaseException as err:
            sock.close()
            if isinstance(err, OSError):
                last = err
                continue
            raise
        return sock
    raise last


def _classify(err: BaseException) -> tuple[str, str]:
    """Map a connection-phase exception to ``(ProbeReason, detail)``."""
    if isinstance(err, asyncssh.PermissionDenied):
        return ProbeReason.PERMISSION_DENIED, "permission denied (publickey)"
    if isinstance(err, asyncssh.HostKeyNotVerifiable):
        return ProbeReason.HOST_KEY_MISMATCH, "host key differs from the pinned key"
    if isinstance(err, asyncssh.KeyExchangeFailed) and "host key" in err.reason:
        # A pinned key limits the host key algorithms offered: a server whose key changed type
        # fails key exchange ("Unable to find compatible server host key") instead.
        return ProbeReason.HOST_KEY_MISMATCH, "host key type differs from the pinned key"
    if isinstance(err, asyncssh.ConnectionLost | BrokenPipeError | ConnectionAbortedError):
        return ProbeReason.CLOSED, "connection closed by the host before login"
    if isinstance(err, ConnectionRefusedError):
        return ProbeReason.REFUSED, "connection refused"
    if isinstance(err, ConnectionResetError):
        return ProbeReason.RESET, "connection reset"
    if isinstance(err, asyncssh.Error):
        return ProbeReason.PROTOCOL, f"{type(err).__name__}: {err.reason}"
    return ProbeReason.UNREACHABLE, f"{type(err).__name__}: {err}"


async def probe(
    endpoint_host: str,
    port: int,
    *,
    client_key: asyncssh.SSHKey,
    connect_timeout: float,
    login_timeout: float,
    username: str = "root",
    known_host_key: str | None = None,
) -> ProbeResult:
    """Try once to log in and run ``true``; capture the server's host key.

    Args:
        endpoint_host: SSH host.
        port: SSH port.
        client_key: our private key (the only one offered).
        connect_timeout: seconds allowed for the TCP connect.
        login_timeout: seconds allowed from connected to ``true`` done (banner, key exchange,
            authentication, command).
        username: login name.
        known_host_key: a pinned host key (OpenSSH line); ``None`` accepts and captures any.

    Returns:
        A :class:`ProbeResult`; failures of the network or the login are results, not raised.
    """
    started_at = time.time()
    t0 = time.monotonic()

    def result(ok: bool, reason: str | None, detail: str, key: str | None = None) -> ProbeResult:
        return ProbeResult(
            ok=ok,
            host=endpoint_host,
            port=port,
            reason=reason,
            detail=detail,
            host_key=key,
            started_at=started_at,
            elapsed_s=time.monotonic() - t0,
        )

    try:
        async with asyncio.timeout(connect_timeout):
            sock = await _tcp_connect(endpoint_host, port)
    except TimeoutError:
        return result(False, ProbeReason.CONNECT_TIMEOUT, f"TCP connect > {connect_timeout:g}s")
    except OSError as err:
        return result(False, *_classify(err))

    options = _client_options(
        client_key=client_key,
        username=username,
        host_key_line=known_host_key,
        login_timeout=login_timeout,
    )
    host_key: str | None = None
    done: asyncssh.SSHCompletedProcess | None = None
    try:
        async with asyncio.timeout(login_timeout):
            async with asyncssh.connect(sock=sock, **options) as conn:
                server_key = conn.get_server_host_key()
                host_key = public_key_line(server_key) if server_key else None
                done = await conn.run("true", check=False)
    except TimeoutError:
        if done is None:  # a slow goodbye after a proven login still counts as proven
            detail = f"no SSH banner or login within {login_timeout:g}s"
            return result(False, ProbeReason.LOGIN_TIMEOUT, detail, host_key)
    except (asyncssh.Error, OSError) as err:
        if done is None:
            return result(False, *_classify(err), host_key)
    finally:
        # asyncssh has closed its transport (and waited) by now on every path; this close
        # matters only when we were cancelled before it made one. A second close is a no-op.
        sock.close()
    if done is None:  # unreachable: every path that did not run `true` returned above
        return result(False, ProbeReason.PROTOCOL, "login ended without running `true`", host_key)
    if done.exit_status != 0:
        detail = f"`true` exited {done.exit_status}"
        return result(False, ProbeReason.COMMAND_FAILED, detail, host_key)
    return result(True, None, "login proven", host_key)


OnAttempt = Callable[[ProbeResult], Awaitable[None] | None]


async def wait_for_login(
    endpoints: Sequence[tuple[str, int]],
    *,
    client_key: asyncssh.SSHKey,
    deadline: float,
    pause_s: float,
    connect_timeout: float,
    login_timeout: float,
    on_attempt: OnAttempt | None = None,
    username: str = "root",
    known_host_key: str | None = None,
) -> ProbeResult:
    """Probe every endpoint concurrently, each retrying every ``pause_s``, until one logs in.

    The first proven login wins and the other probes are cancelled.

    Args:
        endpoints: ``(host, port)`` pairs (e.g. direct and proxy).
        client_key: our private key.
        deadline: ``time.monotonic()`` value (the event loop's clock) at which to give up.
        pause_s: pause between two attempts on one endpoint.
        connect_timeout: TCP connect timeout of one attempt (capped by the deadline).
        login_timeout: login timeout of one attempt (capped by the deadline).
        on_attempt: called (and awaited if async) with every attempt's result, in order per
            endpoint; its exceptions are logged and ignored.
        username: login name.
        known_host_key: pinned host key, if one is already known.

    Returns:
        The winning :class:`ProbeResult` (``ok`` is true; ``host_key`` is the captured key).

    Raises:
        SSHLoginTimeoutError: the deadline passed; ``results`` holds each endpoint's last try.
    """
    if not endpoints:
        raise ValueError("wait_for_login needs at least one endpoint")
    last: dict[int, ProbeResult] = {}

    async def one(index: int, host: str, port: int) -> ProbeResult | None:
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            attempt += 1
            res = await probe(
                host,
                port,
                client_key=client_key,
                connect_timeout=min(connect_timeout, remaining),
                login_timeout=min(login_timeout, max(remaining, 0.01)),
                username=username,
                known_host_key=known_host_key,
            )
            res = attrs.evolve(res, attempt=attempt)
            last[index] = res
            await _notify(on_attempt, res)
            if res.ok:
                return res
            pause = min(pause_s, deadline - time.monotonic())
            if pause <= 0:
                return None
            await asyncio.sleep(pause)

    tasks = [asyncio.create_task(one(i, h, p)) for i, (h, p) in enumerate(endpoints)]
    try:
        pending: set[asyncio.Task[ProbeResult | None]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                won = task.result()  # a programming error inside re-raises here
                if won is not None:
                    return won
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    results = [last[i] for i in range(len(endpoints)) if i in last]
    summary = "; ".join(f"{r.host}:{r.port} {r.reason} ({r.detail})" for r in results)
    host, port = endpoints[0]
    raise SSHLoginTimeoutError(
        f"no SSH login before the deadline: {summary or 'no attempt finished'}",
        results=results,
        host=host,
        port=port,
    )


async def _notify(callback: OnAttempt | None, res: ProbeResult) -> None:
    if callback is None:
        return
    try:
        maybe = callback(res)
        if inspect.isawaitable(maybe):
            await maybe
    except Exception:
        logger.exception("on_attempt callback failed (ignored)")


class SSHRunner:
    """A pinned SSH connection to an established rental: commands and SFTP, failing fast.

    Use :func:`connect_pinned` and ``async with``. The connection opens on enter (or on first
    use) and is reopened once if the machine dropped it; the host key must match the pin.

    Raises (from every method):
        HostKeyMismatchError: the host key changed.
        SSHAuthError: our key was refused.
        SSHTimeoutError: connect, login or a command's timeout passed.
        SSHConnectError: any other connection failure.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_key: asyncssh.SSHKey,
        host_key_line: str,
        connect_timeout: float = 10.0,
        login_timeout: float = 15.0,
        username: str = "root",
        instance_id: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.instance_id = instance_id
        self._client_key = client_key
        self._host_key_line = host_key_line
        self._connect_timeout = connect_timeout
        self._login_timeout = login_timeout
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> SSHRunner:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _error(self, cls: type[SSHError], message: str) -> SSHError:
        return cls(message, host=self.host, port=self.port, instance_id=self.instance_id)

    def _map(self, err: BaseException, doing: str) -> SSHError:
        if isinstance(err, TimeoutError):
            return self._error(SSHTimeoutError, f"{doing} timed out")
        reason, detail = _classify(err)
        if reason == ProbeReason.HOST_KEY_MISMATCH:
            return self._error(HostKeyMismatchError, f"{doing}: {detail}")
        if reason == ProbeReason.PERMISSION_DENIED:
            return self._error(SSHAuthError, f"{doing}: our key was refused")
        return self._error(SSHConnectError, f"{doing} failed: {detail}")

    async def connect(self) -> None:
        """Open the connection if it is not open (idempotent)."""
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            self._conn = None
            options = _client_options(
                client_key=self._client_key,
                username=self.username,
                host_key_line=self._host_key_line,
                login_timeout=self._login_timeout,
            )
            try:
                async with asyncio.timeout(self._connect_timeout):
                    sock = await _tcp_connect(self.host, self.port)
            except (TimeoutError, OSError) as err:
                raise self._map(err, "SSH connect") from err
            try:
                async with asyncio.timeout(self._login_timeout):
                    self._conn = await asyncssh.connect(sock=sock, **options)
            except (TimeoutError, asyncssh.Error, OSError) as err:
                sock.close()  # asyncssh already closed its transport; see probe()
                raise self._map(err, "SSH login") from err
            except BaseException:
                sock.close()
                raise

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            try:
                await conn.wait_closed()
            except (asyncssh.Error, OSError) as err:
                logger.debug("closing SSH connection: %s", err)

    async def _live(self) -> asyncssh.SSHClientConnection:
        await self.connect()
        if self._conn is None:  # closed by a concurrent close()
            raise self._error(SSHConnectError, "SSH connection closed")
        return self._conn

    # A per-call ``timeout`` is the documented Rental API (issue 6), hence the ASYNC109 waivers.
    async def run(
        self,
        cmd: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        check: bool = False,
    ) -> CommandResult:
        """Run ``cmd`` and collect its output.

        Args:
            cmd: the command line.
            timeout: seconds allowed for the command (``None``: no limit).
            check: raise :class:`SSHCommandError` when it exits non-zero.

        Returns:
            Its :class:`CommandResult`.
        """
        conn = await self._live()
        try:
            process = await conn.create_process(cmd)
        except (asyncssh.Error, OSError) as err:
            raise self._map(err, "remote command") from err
        try:
            process.stdin.write_eof()  # nothing to feed: a command reading stdin must not wait
            async with asyncio.timeout(timeout):
                done = await process.wait(check=False)
        except (TimeoutError, asyncssh.Error, OSError) as err:
            raise self._map(err, "remote command") from err
        finally:
            # Close the channel on every path (timeout, cancellation): asyncssh's own run()
            # leaves it open when its timeout fires.
            process.close()
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                async with asyncio.timeout(_CLOSE_WAIT_S):
                    await process.wait_closed()
        result = CommandResult(
            exit_status=done.exit_status,
            stdout=_text(done.stdout),
            stderr=_text(done.stderr),
        )
        if check and not result.ok:
            raise SSHCommandError(
                f"remote command exited {result.exit_status}",
                exit_status=result.exit_status,
                stderr=result.stderr,
                host=self.host,
                port=self.port,
                instance_id=self.instance_id,
            )
        return result

    async def put(
        self,
        local: Path | str,
        remote: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Upload the file ``local`` to ``remote`` over SFTP."""
        await self._sftp("put", str(local), remote, timeout)

    async def get(
        self,
        remote: str,
        local: Path | str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        """Download ``remote`` to the local file ``local`` over SFTP."""
        await self._sftp("get", remote, str(local), timeout)

    async def _sftp(self, op: str, src: str, dst: str, limit: float | None) -> None:
        conn = await self._live()
        try:
            async with asyncio.timeout(limit), conn.start_sftp_client() as sftp:
                await (sftp.put(src, dst) if op == "put" else sftp.get(src, dst))
        except asyncssh.SFTPError as err:
            raise self._error(SSHError, f"SFTP {op} failed: {err.reason}") from err
        except (TimeoutError, asyncssh.Error) as err:
            raise self._map(err, f"SFTP {op}") from err
        except OSError as err:  # the local file: missing, unwritable ...
            raise self._error(SSHError, f"SFTP {op} failed locally: {err.strerror}") from err


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def connect_pinned(
    host: str,
    port: int,
    *,
    client_key: asyncssh.SSHKey,
    host_key_line: str,
    connect_timeout: float = 10.0,
    login_timeout: float = 15.0,
    username: str = "root",
    instance_id: int | None = None,
) -> SSHRunner:
    """An :class:`SSHRunner` for an established rental whose host key is pinned.

    Use as ``async with connect_pinned(...) as ssh: await ssh.run("nvidia-smi -L")``.

    Args:
        host: SSH host.
        port: SSH port.
        client_key: our private key.
        host_key_line: the pinned host key (OpenSSH line).
        connect_timeout: TCP connect timeout.
        login_timeout: SSH handshake and authentication timeout.
        username: login name.
        instance_id: the instance, named in errors.
    """
    return SSHRunner(
        host,
        port,
        client_key=client_key,
        host_key_line=host_key_line,
        connect_timeout=connect_timeout,
        login_timeout=login_timeout,
        username=username,
        instance_id=instance_id,
    )
