"""Regressions: stopping a sandbox SSH server must leave no stale fd registration, no socket.

Found by the 100-job runner test: the in-process sandbox closed its listening sockets while a
cancelled ``sock_accept`` still had them registered with the selector, so the next socket that
reused the fd number failed in ``sock_connect`` with ``FileNotFoundError`` (epoll ENOENT).
"""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from pathlib import Path

import pytest

from vastai_async import VastAIService
from vastai_async.sandbox import Sandbox
from vastai_async.sandbox.sshd import InstanceSSHServer

pytestmark = pytest.mark.vastai_sandbox(offers=5, time_scale=0.02, seed=3)


async def test_sockets_reusing_a_stopped_servers_fds_can_connect(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    rental = await vastai_service.provision_instance(job_id="fd-reuse", fan_out=1)
    server = vastai_sandbox.ssh_server(rental.instance_id)
    assert server is not None
    stopping = asyncio.create_task(server.stop())  # type: ignore[attr-defined]
    # One turn: stop() closes its listeners and cancels its accepts; the cancelled accepts'
    # callbacks are queued behind us, so the sockets below run inside the dangerous window.
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    host, port = vastai_sandbox.url.removeprefix("http://").split(":")
    # New sockets take the lowest free fd numbers: the listeners' just-closed ones.
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(4)]
    try:
        for sock in socks:
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, int(port)))
    finally:
        for sock in socks:
            sock.close()
    await stopping
    await rental.terminate()
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_stopping_just_as_a_connection_is_accepted_leaks_no_socket(tmp_path: Path) -> None:
    """A connection accepted in the loop turn where stop() cancels the accept is closed."""
    server = InstanceSSHServer(
        instance_id=1,
        hostname="h",
        authorized_keys=list,
        env={},
        gpu_name="RTX 4090",
        num_gpus=1,
        workdir=tmp_path / "work",
    )
    await server.start()
    assert server.proxy_port is not None
    # Connected in the kernel's backlog before the loop looks: the next select sees it.
    client = socket.create_connection(("127.0.0.1", server.proxy_port))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Turn 1: the listener's readiness is handled after us; turn 2: we stop the server
            # before the accepting task resumes, the exact moment the old code lost a socket.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            await server.stop()
            gc.collect()
        leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
        assert leaks == []
    finally:
        client.close()
