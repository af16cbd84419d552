"""Runs inside the official ``vastai`` package's own virtualenv (never imports vastai_async).

Two jobs, chosen by the first argument:

- ``provision SPEC.json``: the sequential baseline on the official ``AsyncClient`` pointed at a
  sandbox: best offer, ``create_instance``, attach our key and show that one instance with raw
  HTTP on the client's own session (the client has no call for either), poll every ``poll_s``
  simulated seconds until running, then try SSH (asyncssh: connect, log in, run ``true``) until
  a deadline; on a fatal status or a deadline destroy it and take the next offer. The official
  async client does not retry a 429 at all; this loop waits one poll and asks again, as a
  caller of it has to.
- ``structure OFFERS.json N``: time ``Offer.from_dict`` over the offers, best of N.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from typing import Any

import aiohttp
import asyncssh

# The official package lives only in its own virtualenv: no types for mypy here.
from vastai.async_.client import AsyncClient  # type: ignore[import-not-found]
from vastai.data.instance import InstanceConfig  # type: ignore[import-not-found]
from vastai.data.offer import Offer  # type: ignore[import-not-found]

FATAL = ("exited", "offline", "unknown")


class OfflineAsyncClient(AsyncClient):  # type: ignore[misc]
    """The official client without its certificate download (the sandbox speaks plain HTTP)."""

    async def get_ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context()


async def _raw(client: AsyncClient, method: str, path: str, body: Any = None) -> Any:
    session = await client._get_session()
    async with session.request(
        method, client._url(path), json=body, headers=client._headers()
    ) as resp:
        resp.raise_for_status()
        return await resp.json(content_type=None)


def _fatal(inst: dict[str, Any]) -> bool:
    msg = inst.get("status_msg") or ""
    return inst.get("actual_status") in FATAL or "OCI runtime create failed" in msg


def _endpoints(inst: dict[str, Any]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    ports = (inst.get("ports") or {}).get("22/tcp") or []
    if inst.get("public_ipaddr") and ports:
        out.append((inst["public_ipaddr"].strip(), int(ports[0]["HostPort"])))
    if inst.get("ssh_host") and inst.get("ssh_port"):
        out.append((inst["ssh_host"], int(inst["ssh_port"])))
    return out


PROBE_FAILURES: dict[str, int] = {}


async def _probe(host: str, port: int, key: Any, spec: dict[str, Any]) -> bool:
    try:
        return await _login(host, port, key, spec)
    except (OSError, asyncssh.Error, TimeoutError) as err:
        name = type(err).__name__
        PROBE_FAILURES[name] = PROBE_FAILURES.get(name, 0) + 1
        return False


async def _login(host: str, port: int, key: Any, spec: dict[str, Any]) -> bool:
    async with (
        asyncio.timeout(spec["login_timeout_s"]),
        asyncssh.connect(
            host,
            port,
            username="root",
            client_keys=[key],
            known_hosts=None,
            agent_path=None,
            config=None,
            connect_timeout=spec["connect_timeout_s"],
        ) as conn,
    ):
        done = await conn.run("true", check=False)
        return bool(done.exit_status == 0)


async def _until_running(
    client: AsyncClient, iid: int, spec: dict[str, Any], counts: dict[str, int]
) -> dict[str, Any] | None:
    poll = spec["poll_s"] * spec["time_scale"]
    deadline = time.monotonic() + spec["loading_s"] * spec["time_scale"]
    while time.monotonic() < deadline:
        await asyncio.sleep(poll)
        try:
            inst = (await _raw(client, "GET", f"/api/v0/instances/{iid}/?owner=me"))["instances"]
        except aiohttp.ClientResponseError as err:
            if err.status == 429:
                counts["429"] = counts.get("429", 0) + 1
                continue
            raise
        if inst is None or _fatal(inst):
            return None
        if inst.get("actual_status") == "running":
            return dict(inst)
    return None


async def _ssh(inst: dict[str, Any], key: Any, spec: dict[str, Any]) -> bool:
    ts = spec["time_scale"]
    deadline = time.monotonic() + spec["ssh_s"] * ts
    while time.monotonic() < deadline:
        started = time.monotonic()
        for host, port in _endpoints(inst):
            if await _probe(host, port, key, spec):
                return True
        await asyncio.sleep(max(0.0, spec["probe_pause_s"] * ts - (time.monotonic() - started)))
    return False


async def provision(spec: dict[str, Any]) -> dict[str, Any]:
    """The sequential loop; returns what happened (times are epoch seconds)."""
    key = asyncssh.read_private_key(spec["key_path"])
    counts: dict[str, int] = {}
    out: dict[str, Any] = {"ok": False, "tried": 0, "error": None, "started_at": time.time()}
    config = InstanceConfig(
        image=spec["image"],
        disk=spec["disk_gb"],
        label=spec["label"],
        runtype="ssh_direc ssh_proxy",
    )
    async with OfflineAsyncClient(api_key=spec["api_key"], vast_server=spec["url"]) as client:
        try:
            async with asyncio.timeout(spec["overall_s"] * spec["time_scale"]):
                for offer_id in spec["offers"]:
                    out["tried"] += 1
                    try:
                        inst = await client.create_instance(offer_id, config)
                    except aiohttp.ClientResponseError as err:
                        if err.status in (404, 410):  # no_such_ask: rented by someone else
                            continue
                        raise
                    iid = int(inst.id)
                    body = {"ssh_key": spec["public_key"]}
                    await _raw(client, "POST", f"/api/v0/instances/{iid}/ssh/", body)
                    running = await _until_running(client, iid, spec, counts)
                    if running is not None and await _ssh(running, key, spec):
                        out.update(ok=True, instance_id=iid, won_at=time.time())
                        break
                    await client.destroy_instance(iid)
                else:
                    out["error"] = "every candidate failed"
        except TimeoutError:
            out["error"] = "overall deadline"
    out["rate_limited"] = counts.get("429", 0)
    out["probe_failures"] = dict(PROBE_FAILURES)
    return out


def structure(path: str, repeat: int) -> dict[str, Any]:
    """Best-of-``repeat`` seconds to build official ``Offer`` objects from the JSON rows."""
    with open(path) as fh:
        rows = json.load(fh)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        models = [Offer.from_dict(r) for r in rows]
        best = min(best, time.perf_counter() - t0)
    return {"offers": len(models), "seconds": best}


def main() -> None:
    if sys.argv[1] == "provision":
        with open(sys.argv[2]) as fh:
            spec = json.load(fh)
        result = asyncio.run(provision(spec))
    else:
        result = structure(sys.argv[2], int(sys.argv[3]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
