"""Security review of the sandbox: loopback only, no host commands over SSH, 401 for a bad key."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import aiohttp
import pytest

from tests.reliability._harness import pick_offers
from vastai_async import VastAIService
from vastai_async.sandbox import Sandbox
from vastai_async.sandbox.routes import ROUTES

pytestmark = pytest.mark.vastai_sandbox(offers=8, time_scale=0.02, seed=51)


def _outbound_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if not loopback."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))
        address: str = s.getsockname()[0]
        if not address.startswith("127."):
            return address
    return None


async def _refused(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (OSError, TimeoutError):
        return True
    writer.close()
    return False


async def test_sandbox_listens_on_loopback_only_by_default(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    sb = vastai_sandbox
    assert Sandbox().host == "127.0.0.1"
    assert sb.url.startswith("http://127.0.0.1:")
    assert sb.logs_url.startswith("http://127.0.0.1:")
    for runner in sb._runners:
        for address in runner.addresses:
            assert address[0] == "127.0.0.1", address
    offers = pick_offers(await vastai_service.search_offers(), 1)
    rental = await vastai_service.provision_instance(job_id="lo", offers=offers, fan_out=1)
    server = sb.ssh_server(rental.instance_id)
    listeners = getattr(server, "_listeners", {})
    assert listeners, "the SSH server has listening sockets"
    for lsock in listeners.values():
        assert lsock.getsockname()[0] == "127.0.0.1"
    outside = _outbound_address()
    if outside is not None:  # black box: the same ports are closed on a routable address
        ports = [int(sb.url.rsplit(":", 1)[1]), rental.info.ssh.port]
        for port in ports:
            assert await _refused(outside, port), (outside, port)
    await rental.terminate()


@pytest.mark.vastai_sandbox(offers=8, time_scale=0.02, seed=51, shell="emulated")  # noqa: S604
async def test_emulated_sandbox_ssh_runs_no_host_commands(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("still here")
    created = tmp_path / "created-by-ssh"
    offers = pick_offers(await vastai_service.search_offers(), 1)
    async with await vastai_service.provision_instance(
        job_id="cmds", offers=offers, fan_out=1
    ) as rental:
        for command in (
            "id",
            "ls /",
            f"rm -rf {victim}",
            f"touch {created}",
            f"sh -c 'touch {created}'",
            f"bash -c 'rm -rf {victim}'",
            f'python3 -c \'open("{created}", "w")\'',
        ):
            result = await rental.run(command)
            assert result.exit_status == 127, (command, result)
            assert "command not found" in result.stderr
        # The one command with a side effect on its own (the echo builtin) touches nothing.
        assert (await rental.run(f"echo x > {created}")).exit_status in (0, 127)
    assert (victim / "keep.txt").read_text() == "still here"
    assert not created.exists()


def _concrete(path: str) -> str:
    return path.replace("{id}", "1")


async def test_a_wrong_api_key_gets_401_on_every_route(vastai_sandbox: Sandbox) -> None:
    sb = vastai_sandbox
    routes = [(r.method, r.path) for r in ROUTES]
    assert len(routes) >= 15
    async with aiohttp.ClientSession() as http:
        for method, path in routes:
            url = sb.url + _concrete(path)
            for how in ("header", "query", "none"):
                headers = {"Authorization": "Bearer wrong-key"} if how == "header" else {}
                params = {"api_key": "wrong-key"} if how == "query" else {}
                async with http.request(
                    method, url, headers=headers, params=params, json={}
                ) as resp:
                    body = await resp.json()
                if how == "none" and (method, path) == ("POST", "/api/v0/bundles/"):
                    assert resp.status == 200  # search is open without a key, as on Vast
                    continue
                assert resp.status == 401, (method, path, how, resp.status)
                assert body["error"] == "auth_error"
    assert sb.alive_instance_ids() == set()
