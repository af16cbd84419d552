"""The sandbox's per-instance SSH server, driven by a real asyncssh client on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from vastai_async.sandbox.sshd import InstanceSSHServer, SSHFaults

LOGIN_TIMEOUT = 0.5


class Keys:
    """An instance's authorised keys, attachable at any time (as the sandbox's state is)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, float]] = []

    def attach(self, key: asyncssh.SSHKey, at: float | None = None) -> float:
        stamp = time.time() if at is None else at
        self.items.append((key.export_public_key("openssh").decode().strip(), stamp))
        return stamp

    def __call__(self) -> list[tuple[str, float]]:
        return list(self.items)


@pytest.fixture
def client_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture
def other_key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


ServerFactory = Callable[..., InstanceSSHServer]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    servers: list[InstanceSSHServer] = []

    def make(keys: Keys, *, instance_id: int = 7, **kw: Any) -> InstanceSSHServer:
        server = InstanceSSHServer(
            instance_id=instance_id,
            hostname=f"C.{instance_id}",
            authorized_keys=keys,
            env={"VAST_CONTAINERLABEL": f"C.{instance_id}", "JOB": "demo"},
            gpu_name="RTX 4090",
            num_gpus=2,
            workdir=tmp_path / f"inst{instance_id}",
            **kw,
        )
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


def connect(
    port: int, key: asyncssh.SSHKey, *, username: str = "root", login_timeout: float = LOGIN_TIMEOUT
) -> Any:
    return asyncssh.connect(
        "127.0.0.1",
        port,
        username=username,
        client_keys=[key],
        known_hosts=None,
        agent_path=None,
        config=None,
        connect_timeout=5,
        login_timeout=login_timeout,
    )


async def tcp_connect(port: int, limit: float) -> None:
    _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), limit)
    writer.close()
    await writer.wait_closed()


async def test_booting_proxy_port_accepts_then_closes_without_banner(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """Before start the proxy port accepts TCP and closes at once: no banner, no login."""
    keys = Keys()
    keys.attach(client_key)
    server = make_server(keys)
    port = await server.bind()
    assert server.proxy_port == port
    assert server.direct_port is None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(100), 2) == b""
    writer.close()
    await writer.wait_closed()
    with pytest.raises(asyncssh.ConnectionLost):
        async with connect(port, client_key):
            pass
    assert server.ready_at is None


async def test_login_runs_builtins_and_sftp_then_stop_releases_everything(
    make_server: ServerFactory, client_key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    """Create -> start -> login with an attached key -> built-ins -> SFTP put/get -> stop."""
    keys = Keys()
    keys.attach(client_key)
    server = make_server(keys, instance_id=42)
    proxy = await server.bind()
    direct = await server.start()
    assert direct != proxy
    assert server.direct_port == direct
    async with connect(direct, client_key) as conn:
        host_key = conn.get_server_host_key().export_public_key("openssh").decode().strip()
        assert host_key == server.host_key_openssh
        smi = await conn.run("nvidia-smi -L")
        assert smi.exit_status == 0
        lines = str(smi.stdout).splitlines()
        assert [line.split(" (UUID: GPU-")[0] for line in lines] == [
            "GPU 0: RTX 4090",
            "GPU 1: RTX 4090",
        ]
        assert len(set(lines)) == 2
        assert (await conn.run("hostname")).stdout == "C.42\n"
        assert (await conn.run("echo hello 'big world'")).stdout == "hello big world\n"
        assert (await conn.run("uname -a")).stdout.startswith("Linux C.42 ")
        env = await conn.run("env")
        assert env.stdout == "VAST_CONTAINERLABEL=C.42\nJOB=demo\n"
        assert (await conn.run("true")).exit_status == 0
        assert (await conn.run("exit 3")).exit_status == 3
        missing = await conn.run("python3 -c 1")
        assert (missing.exit_status, missing.stderr) == (127, "python3: command not found\n")

        src = tmp_path / "up.txt"
        src.write_text("payload\n")
        async with conn.start_sftp_client() as sftp:
            await sftp.put(str(src), "/data.txt")
            await sftp.get("data.txt", str(tmp_path / "down.txt"))
        assert (tmp_path / "down.txt").read_text() == "payload\n"
        assert (server.workdir / "data.txt").read_text() == "payload\n"
        assert (await conn.run("cat /data.txt")).stdout == "payload\n"
        escape = await conn.run("cat ../../etc/passwd")
        assert escape.exit_status == 1
        assert escape.stdout == ""
    # Same GPU UUIDs on every call: they are derived from the instance id.
    async with connect(proxy, client_key) as conn:
        assert (await conn.run("nvidia-smi -L")).stdout == smi.stdout
        held = conn
        kinds = [(s.port_kind, s.kind, s.command) for s in server.sessions]
        assert ("direct", "exec", "nvidia-smi -L") in kinds
        assert ("direct", "sftp", None) in kinds
        assert ("proxy", "exec", "nvidia-smi -L") in kinds
        assert {s.username for s in server.sessions} == {"root"}
        assert {s.key_fingerprint for s in server.sessions} == {client_key.get_fingerprint()}
        await server.stop()
        await asyncio.wait_for(held.wait_closed(), 2)
    await server.stop()  # idempotent
    assert not server.workdir.exists()
    for port in (proxy, direct):
        with pytest.raises(ConnectionRefusedError):
            await tcp_connect(port, 2)


async def test_login_with_another_key_or_user_is_refused(
    make_server: ServerFactory, client_key: asyncssh.SSHKey, other_key: asyncssh.SSHKey
) -> None:
    """Only attached keys and only root log in."""
    keys = Keys()
    keys.attach(client_key)
    server = make_server(keys)
    await server.bind()
    direct = await server.start()
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(direct, other_key):
            pass
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(direct, client_key, username="ubuntu"):
            pass
    assert server.sessions == []


async def test_key_attached_after_start_is_accepted(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """Keys are read at authentication time, and ready_at waits for the first key."""
    keys = Keys()
    server = make_server(keys)
    await server.bind()
    direct = await server.start()
    assert server.started_at is not None
    assert server.ready_at is None
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(direct, client_key):
            pass
    attached = keys.attach(client_key)
    async with connect(direct, client_key) as conn:
        assert (await conn.run("true")).exit_status == 0
    assert server.ready_at == attached
    line = client_key.export_public_key("openssh").decode()
    assert server.ready_at_for(line) == attached
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh")
    assert server.ready_at_for(stranger.decode()) is None


async def test_ready_at_is_start_when_key_attached_before(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """A key attached before start: ready_at is the start moment, whether or not anyone logs in."""
    keys = Keys()
    keys.attach(client_key, at=time.time() - 100)
    server = make_server(keys)
    await server.bind()
    assert server.ready_at is None
    await server.start()
    assert server.ready_at == server.started_at


async def test_ready_at_is_a_record_that_survives_later_faults_and_stop(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """Once ready, the moment stays: a refuse fault switched on later and stop() keep it."""
    keys = Keys()
    keys.attach(client_key, at=time.time() - 5)
    server = make_server(keys)
    await server.bind()
    await server.start()
    started = server.started_at
    server.faults.refuse = True  # nobody read ready_at before: the fault hook records it
    assert server.ready_at == started
    await server.stop()
    assert server.ready_at == started

    never = make_server(keys, instance_id=8, faults=SSHFaults(hang_before_banner=True))
    await never.bind()
    await never.start()
    await never.stop()
    assert never.ready_at is None  # destroyed while hanging: it never was ready


async def test_refuse_fault_closes_connections_until_lifted(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """refuse: connections accepted then closed; lifting it moves ready_at to that moment."""
    keys = Keys()
    keys.attach(client_key)
    server = make_server(keys, faults=SSHFaults(refuse=True))
    await server.bind()
    direct = await server.start()
    for port in (direct, server.proxy_port):
        assert port is not None
        with pytest.raises(asyncssh.ConnectionLost):
            async with connect(port, client_key):
                pass
    assert server.ready_at is None
    server.faults.refuse = False
    lifted = server.faults.cleared_at
    assert lifted >= (server.started_at or 0)
    assert server.ready_at == lifted
    async with connect(direct, client_key) as conn:
        assert (await conn.run("true")).exit_status == 0


async def test_hang_before_banner_times_out_the_login(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """hang_before_banner: TCP connects, but no banner ever comes, so the login times out."""
    keys = Keys()
    keys.attach(client_key)
    server = make_server(keys, faults=SSHFaults(hang_before_banner=True))
    await server.bind()
    direct = await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", direct)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), LOGIN_TIMEOUT)
    writer.close()
    await writer.wait_closed()
    with pytest.raises(asyncssh.ConnectionLost, match="Login timeout"):
        async with connect(direct, client_key):
            pass
    assert server.ready_at is None
    server.faults = SSHFaults()
    assert server.ready_at is not None
    async with connect(direct, client_key) as conn:
        assert (await conn.run("true")).exit_status == 0


async def test_auth_refused_until_a_moment_then_accepted(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """refuse_auth_until: permission denied before that epoch, login after; ready_at equals it."""
    keys = Keys()
    keys.attach(client_key)
    until = time.time() + 0.6
    server = make_server(keys, faults=SSHFaults(refuse_auth_until=until))
    await server.bind()
    direct = await server.start()
    assert server.ready_at == until
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect(direct, client_key):
            pass
    await asyncio.sleep(max(0.0, until - time.time()) + 0.01)  # the configured window, not a guess
    async with connect(direct, client_key) as conn:
        assert (await conn.run("true")).exit_status == 0


async def test_firewalled_direct_port_hangs_connect_while_proxy_serves(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """firewall_direct: connect() to the direct port hangs; the proxy works; lifting it opens it."""
    keys = Keys()
    keys.attach(client_key)
    server = make_server(keys, faults=SSHFaults(firewall_direct=True))
    proxy = await server.bind()
    direct = await server.start()
    with pytest.raises(TimeoutError):
        await tcp_connect(direct, 0.5)
    async with connect(proxy, client_key) as conn:
        assert (await conn.run("true")).exit_status == 0
    assert server.ready_at is not None  # the proxy endpoint counts
    server.faults.firewall_direct = False
    async with connect(direct, client_key) as conn:
        assert (await conn.run("hostname")).stdout == "C.7\n"
    # Switched on again while the port is idle and serving: connects hang again.
    server.faults.firewall_direct = True
    await asyncio.sleep(0)  # one loop turn: the listener reacts to the change event
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await tcp_connect(direct, 0.5)


async def test_minimal_shell_runs_builtins(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """A shell request gets a line shell over the built-ins; `exit N` ends it with N."""
    keys = Keys()
    keys.attach(client_key)
    server = make_server(keys)
    await server.bind()
    direct = await server.start()
    async with connect(direct, client_key) as conn:
        proc = await conn.create_process()
        proc.stdin.write("echo hi\nexit 4\n")
        result = await asyncio.wait_for(proc.wait(), 5)
    assert result.exit_status == 4
    assert "hi" in str(result.stdout)
    assert server.sessions[-1].kind == "shell"


async def test_fifty_servers_in_one_process(
    make_server: ServerFactory, client_key: asyncssh.SSHKey
) -> None:
    """50 instances with SSH servers in one loop all accept a login (time measured, printed)."""
    keys = Keys()
    keys.attach(client_key)
    t0 = time.monotonic()
    servers = [make_server(keys, instance_id=1000 + i) for i in range(50)]
    await asyncio.gather(*(s.bind() for s in servers))
    directs = await asyncio.gather(*(s.start() for s in servers))
    t_start = time.monotonic() - t0

    async def login(port: int) -> str:
        # A generous timeout: this measures capacity on a shared CPU, it does not race a clock.
        async with connect(port, client_key, login_timeout=30) as conn:
            return str((await conn.run("hostname")).stdout)

    t1 = time.monotonic()
    names = await asyncio.gather(*(login(p) for p in directs))
    t_login = time.monotonic() - t1
    assert names == [f"C.{1000 + i}\n" for i in range(50)]
    t2 = time.monotonic()
    await asyncio.gather(*(s.stop() for s in servers))
    print(
        f"\n50 SSH servers: start {t_start:.2f}s, 50 concurrent logins {t_login:.2f}s, "
        f"stop {time.monotonic() - t2:.2f}s"
    )


async def test_stop_before_start_releases_the_proxy_port(make_server: ServerFactory) -> None:
    """A destroyed-while-loading instance frees its proxy port too."""
    server = make_server(Keys())
    port = await server.bind()
    await server.stop()
    with pytest.raises(ConnectionRefusedError):
        await tcp_connect(port, 2)
