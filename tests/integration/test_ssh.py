"""The SDK's SSH side (probe, wait_for_login, known hosts, pinned runner) against sandbox sshd."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from vastai_async.errors import (
    ConfigError,
    HostKeyMismatchError,
    SSHAuthError,
    SSHCommandError,
    SSHConnectError,
    SSHError,
    SSHTimeoutError,
)
from vastai_async.known_hosts import KnownHostsStore
from vastai_async.sandbox.sshd import InstanceSSHServer, SSHFaults
from vastai_async.ssh import (
    ProbeReason,
    ProbeResult,
    SSHLoginTimeoutError,
    connect_pinned,
    load_client_key,
    probe,
    public_key_line,
    wait_for_login,
)

HOST = "127.0.0.1"
TIMEOUTS: dict[str, Any] = {"connect_timeout": 0.4, "login_timeout": 0.5}


class Keys:
    """Keys attached to one instance; attachable at any moment."""

    def __init__(self, *keys: asyncssh.SSHKey) -> None:
        self.items = [(public_key_line(k), time.time()) for k in keys]

    def attach(self, key: asyncssh.SSHKey) -> None:
        self.items.append((public_key_line(key), time.time()))

    def __call__(self) -> list[tuple[str, float]]:
        return list(self.items)


@pytest.fixture
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


ServerFactory = Callable[..., InstanceSSHServer]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    servers: list[InstanceSSHServer] = []

    def make(keys: Keys, **kw: Any) -> InstanceSSHServer:
        server = InstanceSSHServer(
            instance_id=len(servers) + 1,
            hostname=f"C.{len(servers) + 1}",
            authorized_keys=keys,
            env={},
            gpu_name="A100 SXM4",
            num_gpus=1,
            workdir=tmp_path / f"w{len(servers)}",
            **kw,
        )
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


async def started(server: InstanceSSHServer) -> tuple[int, int]:
    proxy = await server.bind()
    return proxy, await server.start()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


# -- probe ------------------------------------------------------------------------------------


async def test_probe_proves_login_and_captures_the_host_key(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """A successful probe runs `true` and returns the server's host key as an OpenSSH line."""
    server = make_server(Keys(client_key))
    _, direct = await started(server)
    res = await probe(HOST, direct, client_key=client_key, **TIMEOUTS)
    assert res.ok, res
    assert res.reason is None
    assert res.host_key == server.host_key_openssh
    assert [(s.kind, s.command) for s in server.sessions] == [("exec", "true")]


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("nothing_listens", ProbeReason.REFUSED),
        ("booting", ProbeReason.CLOSED),
        ("refuse", ProbeReason.CLOSED),
        ("hang_before_banner", ProbeReason.LOGIN_TIMEOUT),
        ("firewall_direct", ProbeReason.CONNECT_TIMEOUT),
        ("key_not_attached", ProbeReason.PERMISSION_DENIED),
        ("auth_refused_for_now", ProbeReason.PERMISSION_DENIED),
        ("pinned_key_differs", ProbeReason.HOST_KEY_MISMATCH),
    ],
)
async def test_probe_reports_each_failure_as_a_result_not_an_exception(
    make_server: ServerFactory, client_key: asyncssh.SSHKey, setup: str, reason: str
) -> None:
    """Every way a not-yet-ready machine fails is a ProbeResult with the right reason."""
    keys = Keys() if setup == "key_not_attached" else Keys(client_key)
    faults = SSHFaults()
    if setup in ("refuse", "hang_before_banner", "firewall_direct"):
        setattr(faults, setup, True)
    if setup == "auth_refused_for_now":
        faults.refuse_auth_until = time.time() + 60
    server = make_server(keys, faults=faults)
    pinned = None
    if setup == "nothing_listens":
        port = closed_port()
    elif setup == "booting":
        port = await server.bind()
    else:
        _, port = await started(server)
    if setup == "pinned_key_differs":
        pinned = public_key_line(asyncssh.generate_private_key("ssh-ed25519"))
    # Each failure is bounded by the probe's own timeouts; the guard only catches a hang (a
    # speed bound would fail on a busy machine).
    async with asyncio.timeout(10 * (TIMEOUTS["connect_timeout"] + TIMEOUTS["login_timeout"])):
        res = await probe(HOST, port, client_key=client_key, known_host_key=pinned, **TIMEOUTS)
    assert not res.ok
    assert res.reason == reason, res
    assert res.port == port


async def test_probe_with_the_right_pinned_key_succeeds(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """A pinned host key that matches lets the probe through."""
    server = make_server(Keys(client_key))
    proxy, _ = await started(server)
    res = await probe(
        HOST, proxy, client_key=client_key, known_host_key=server.host_key_openssh, **TIMEOUTS
    )
    assert res.ok, res


# -- wait_for_login -----------------------------------------------------------------------------


async def test_wait_for_login_picks_the_proxy_when_direct_is_firewalled(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """Direct firewalled, proxy serving: the proxy endpoint wins and its host key is captured."""
    server = make_server(Keys(client_key), faults=SSHFaults(firewall_direct=True))
    proxy, direct = await started(server)
    attempts: list[ProbeResult] = []
    won = await wait_for_login(
        [(HOST, direct), (HOST, proxy)],
        client_key=client_key,
        deadline=time.monotonic() + 5,
        pause_s=0.1,
        on_attempt=attempts.append,
        **TIMEOUTS,
    )
    assert won.ok
    assert won.port == proxy
    assert won.host_key == server.host_key_openssh
    assert attempts[-1] == won
    # The losing direct probe was cancelled, so no session ever reached the direct port.
    assert {s.port_kind for s in server.sessions} == {"proxy"}


async def test_wait_for_login_retries_through_boot_and_late_key(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """Closed while booting, then permission denied until the key arrives, then a login."""
    keys = Keys()
    server = make_server(keys)
    proxy = await server.bind()
    seen: list[str | None] = []

    async def on_attempt(res: ProbeResult) -> None:
        # Each state change happens at an exact attempt, never after a guessed sleep.
        seen.append(res.reason)
        if res.reason == ProbeReason.CLOSED:
            await server.start()
        elif res.reason == ProbeReason.PERMISSION_DENIED:
            keys.attach(client_key)

    won = await wait_for_login(
        [(HOST, proxy)],
        client_key=client_key,
        deadline=time.monotonic() + 5,
        pause_s=0.05,
        on_attempt=on_attempt,
        **TIMEOUTS,
    )
    assert seen == [ProbeReason.CLOSED, ProbeReason.PERMISSION_DENIED, None]
    assert won.attempt == 3
    ready = server.ready_at
    assert ready is not None
    assert won.started_at >= ready - 0.001


async def test_wait_for_login_deadline_raises_with_last_reasons(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """No endpoint ever works: SSHLoginTimeoutError (an SSHTimeoutError) with each last reason."""
    server = make_server(Keys(), faults=SSHFaults(firewall_direct=True))
    proxy, direct = await started(server)
    calls: list[ProbeResult] = []

    def broken_callback(res: ProbeResult) -> None:
        calls.append(res)
        raise RuntimeError("a callback bug must not break the wait")

    with pytest.raises(SSHLoginTimeoutError) as info:
        async with asyncio.timeout(20):  # a hang guard, not a speed bound
            await wait_for_login(
                [(HOST, direct), (HOST, proxy)],
                client_key=client_key,
                deadline=time.monotonic() + 1.0,
                pause_s=0.2,
                on_attempt=broken_callback,
                **TIMEOUTS,
            )
    assert isinstance(info.value, SSHTimeoutError)
    reasons = [r.reason for r in info.value.results]
    assert reasons == [ProbeReason.CONNECT_TIMEOUT, ProbeReason.PERMISSION_DENIED]
    # One attempt per endpoint at least, each reported even though the callback raised.
    assert len(calls) >= 2


async def test_wait_for_login_cancellation_closes_its_probe_connections(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """Cancelling the waiter cancels its probes at once and closes their TCP connections."""
    server = make_server(Keys(), faults=SSHFaults(hang_before_banner=True))
    proxy, _ = await started(server)
    attempts: list[ProbeResult] = []
    task = asyncio.create_task(
        wait_for_login(
            [(HOST, proxy)],
            client_key=client_key,
            deadline=time.monotonic() + 30,
            pause_s=0.05,
            on_attempt=attempts.append,
            connect_timeout=0.4,
            login_timeout=10,
        )
    )
    async with asyncio.timeout(2):
        # Condition wait (the server has no event for it): the probe reached the hanging server.
        while not server._held:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    held = next(iter(server._held))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == []
    loop = asyncio.get_running_loop()
    received = b""
    async with asyncio.timeout(2):  # the client closed its side: EOF after its version line
        while chunk := await loop.sock_recv(held, 1000):
            received += chunk
    assert received.startswith(b"SSH-2.0-")


# -- known hosts --------------------------------------------------------------------------------


def test_known_hosts_store_pins_per_instance_and_persists(tmp_path: Path) -> None:
    """pin() survives a new store object; the OpenSSH file holds `[host]:port key` lines, 0600."""
    key_a = public_key_line(asyncssh.generate_private_key("ssh-ed25519"))
    key_b = public_key_line(asyncssh.generate_private_key("ssh-ed25519"))
    store = KnownHostsStore(tmp_path)
    assert store.get(1) is None
    store.pin(1, "ssh4.vast.ai", 31337, key_a + " comment")
    store.pin(2, "1.2.3.4", 22, key_b)
    again = KnownHostsStore(tmp_path)
    pin = again.get(1)
    assert pin is not None
    assert (pin.host, pin.port, pin.key) == ("ssh4.vast.ai", 31337, key_a)
    lines = again.known_hosts_path.read_text().splitlines()
    assert lines == [f"[ssh4.vast.ai]:31337 {key_a}", f"1.2.3.4 {key_b}"]
    for path in (again.known_hosts_path, again.index_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert again.remove(1)
    assert not again.remove(1)
    assert [p.instance_id for p in KnownHostsStore(tmp_path).all()] == [2]


def test_known_hosts_store_reports_a_corrupt_index(tmp_path: Path) -> None:
    """A damaged index is a ConfigError naming the file, not a raw JSON error."""
    store = KnownHostsStore(tmp_path)
    store.directory.mkdir(parents=True)
    store.index_path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"known_hosts\.json"):
        store.get(1)


# -- pinned runner ------------------------------------------------------------------------------


async def test_pinned_runner_runs_commands_and_transfers_files(
    make_server: ServerFactory, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    """A probe's captured key pinned in the store lets a runner run, put and get."""
    server = make_server(Keys(client_key))
    _, direct = await started(server)
    res = await probe(HOST, direct, client_key=client_key, **TIMEOUTS)
    assert res.host_key is not None
    store = KnownHostsStore(tmp_path / "state")
    store.pin(server.instance_id, HOST, direct, res.host_key)
    pin = store.get(server.instance_id)
    assert pin is not None
    src = tmp_path / "in.txt"
    src.write_text("weights\n")
    async with connect_pinned(
        pin.host, pin.port, client_key=client_key, host_key_line=pin.key, **TIMEOUTS
    ) as ssh:
        smi = await ssh.run("nvidia-smi -L")
        assert smi.ok
        assert smi.stdout.startswith("GPU 0: A100 SXM4 (UUID: GPU-")
        failed = await ssh.run("make train")
        assert (failed.exit_status, failed.stderr) == (127, "make: command not found\n")
        with pytest.raises(SSHCommandError) as info:
            await ssh.run("exit 2", check=True)
        assert info.value.exit_status == 2
        with pytest.raises(SSHTimeoutError):
            await ssh.run("sleep 30", timeout=0.3)
        assert (await ssh.run("echo still usable")).stdout == "still usable\n"
        await ssh.put(src, "model.txt")
        await ssh.get("model.txt", tmp_path / "out.txt")
        with pytest.raises(SSHError, match="SFTP get failed"):
            await ssh.get("missing.txt", tmp_path / "nope.txt")
    assert (tmp_path / "out.txt").read_text() == "weights\n"


async def test_pinned_runner_fails_fast_on_a_changed_host_key(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """A host key other than the pinned one raises HostKeyMismatchError at once."""
    first = make_server(Keys(client_key))
    second = make_server(Keys(client_key))
    _, direct = await started(second)
    runner = connect_pinned(
        HOST, direct, client_key=client_key, host_key_line=first.host_key_openssh, **TIMEOUTS
    )
    with pytest.raises(HostKeyMismatchError) as info:
        async with runner:
            pass
    assert info.value.port == direct
    assert second.sessions == []


async def test_pinned_runner_treats_a_host_key_of_another_type_as_a_mismatch(
    client_key: asyncssh.SSHKey,
) -> None:
    """A machine now presenting an RSA key where ed25519 was pinned: HostKeyMismatchError."""
    rsa_server = await asyncssh.listen(
        HOST, 0, server_host_keys=[asyncssh.generate_private_key("ssh-rsa")]
    )
    try:
        port = rsa_server.sockets[0].getsockname()[1]
        pinned = public_key_line(asyncssh.generate_private_key("ssh-ed25519"))
        res = await probe(HOST, port, client_key=client_key, known_host_key=pinned, **TIMEOUTS)
        assert res.reason == ProbeReason.HOST_KEY_MISMATCH
        with pytest.raises(HostKeyMismatchError):
            async with connect_pinned(
                HOST, port, client_key=client_key, host_key_line=pinned, **TIMEOUTS
            ):
                pass
    finally:
        rsa_server.close()
        await rsa_server.wait_closed()


async def test_pinned_runner_fails_fast_on_a_refused_key(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """Permission denied on an established rental is SSHAuthError, not retried."""
    server = make_server(Keys())
    _, direct = await started(server)
    with pytest.raises(SSHAuthError):
        async with connect_pinned(
            HOST,
            direct,
            client_key=client_key,
            host_key_line=server.host_key_openssh,
            instance_id=9,
            **TIMEOUTS,
        ):
            pass


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("hang_before_banner", SSHTimeoutError),
        ("firewall_direct", SSHTimeoutError),
        ("refuse", SSHConnectError),
        ("nothing_listens", SSHConnectError),
    ],
)
async def test_pinned_runner_maps_network_failures(
    make_server: ServerFactory, client_key: asyncssh.SSHKey, fault: str, error: type[SSHError]
) -> None:
    """Timeouts become SSHTimeoutError, other failures SSHConnectError; nothing raw escapes."""
    faults = SSHFaults()
    if fault != "nothing_listens":
        setattr(faults, fault, True)
    server = make_server(Keys(client_key), faults=faults)
    _, direct = await started(server)
    port = closed_port() if fault == "nothing_listens" else direct
    runner = connect_pinned(
        HOST, port, client_key=client_key, host_key_line=server.host_key_openssh, **TIMEOUTS
    )
    with pytest.raises(error) as info:
        await runner.run("true")
    assert type(info.value) is error
    await runner.close()


async def test_pinned_runner_reconnects_after_the_machine_dropped_it(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """A connection the server closed is reopened on the next call (same pinned key)."""
    server = make_server(Keys(client_key))
    proxy, _ = await started(server)
    async with connect_pinned(
        HOST, proxy, client_key=client_key, host_key_line=server.host_key_openssh, **TIMEOUTS
    ) as ssh:
        assert (await ssh.run("hostname")).stdout == "C.1\n"
        for conn in list(server._conns):
            conn.close()
        assert ssh._conn is not None
        await asyncio.wait_for(ssh._conn.wait_closed(), 2)  # the client has seen the close
        assert (await ssh.run("hostname")).stdout == "C.1\n"
    assert [s.command for s in server.sessions] == ["hostname", "hostname"]


# -- client key ---------------------------------------------------------------------------------


def test_load_client_key_reads_encrypted_keys_and_hides_the_passphrase(tmp_path: Path) -> None:
    """Right passphrase loads; a wrong or missing one is a ConfigError that never echoes it."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "id_ed25519"
    # Few KDF rounds keep the test fast; the format is the same as ssh-keygen's.
    key.write_private_key(path, passphrase="s3cret-pass", rounds=4, ignore_few_rounds=True)
    loaded = load_client_key(path, "s3cret-pass")
    assert public_key_line(loaded) == public_key_line(key)
    with pytest.raises(ConfigError) as info:
        load_client_key(path, "wrong-pass-123")
    assert "wrong-pass-123" not in str(info.value)
    assert "VASTAI_SSH_KEY_PATH" in str(info.value)
    with pytest.raises(ConfigError, match="no such file"):
        load_client_key(tmp_path / "missing")
