"""A recording HTTP server answering every operation in the published spec's exact shapes.

The sandbox follows the spec but also serves what the official client receives (object-form
``ports`` on show, for one). This server answers only with the spec's own example bodies and
documented errors, so client tests prove the SDK reads what the spec says Vast sends. Tests
queue answers per route; unqueued routes answer the spec's 200 example.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
from aiohttp import web

from tests.contract.validate import route_of

__all__ = ["SPEC_INSTANCE", "SPEC_OFFER", "Recorded", "SpecServer", "spec_server"]

#: The search example's offer (L6745-6853), trimmed to what the SDK reads, both reliabilities.
SPEC_OFFER: Final[dict[str, Any]] = {
    "id": 2459368,
    "ask_contract_id": 2459368,
    "machine_id": 1,
    "host_id": 2,
    "gpu_name": "Imaginary RTX 9999",
    "num_gpus": 1,
    "gpu_ram": 11264,
    "gpu_total_ram": 11264,
    "cpu_cores": 4,
    "cpu_ram": 32768,
    "disk_space": 100.5,
    "dph_base": 0.1,
    "dph_total": 0.10296296296296296,
    "driver_version": "999.99.99",
    "geolocation": "Atlantis, AT",
    "is_bid": False,
    "min_bid": 0.111111,
    "reliability": 0.9876,
    "reliability2": 0.9876,
    "rentable": True,
    "rented": False,
    "verification": "verified",
}
#: The Instance schema's example shape (L9600+): ports as integers, extra_env as strings.
SPEC_INSTANCE: Final[dict[str, Any]] = {
    "id": 1234567,
    "actual_status": "running",
    "intended_status": "running",
    "cur_state": "running",
    "next_state": "running",
    "label": "vastai-async:o:j:r",
    "image_uuid": "pytorch/pytorch",
    "image_runtype": "ssh",
    "extra_env": ["HELLO=world", "EMPTY="],
    "ssh_host": "ssh4.vast.ai",
    "ssh_port": 30018,
    "machine_id": 1,
    "start_date": 1700000000.0,
    "gpu_name": "Imaginary RTX 9999",
    "gpu_totalram": 11264,
    "gpu_ram": 11264,
    "disk_space": 16.0,
    "direct_port_count": 12,
    "direct_port_start": -1,
    "direct_port_end": -1,
    "ports": [8080, 8081],
    "public_ipaddr": "63.135.50.11",
    "min_bid": 0.02,
    "is_bid": False,
    "dph_base": 1.0,
    "dph_total": 1.0020740740740741,
    "reliability2": 0.99,
}

_DEFAULTS: Final[dict[str, tuple[int, Any]]] = {
    "POST /api/v0/bundles/": (200, {"offers": [SPEC_OFFER]}),
    "PUT /api/v0/asks/{id}/": (200, {"success": True, "new_contract": 1234567}),
    "GET /api/v1/instances/": (
        200,
        {
            "success": True,
            "instances_found": 0,
            "total_instances": 0,
            "label_counts": {},
            "next_token": None,
            "instances": [],
        },
    ),
    "GET /api/v0/instances/{id}/": (200, {"instances": SPEC_INSTANCE}),
    "DELETE /api/v0/instances/{id}/": (200, {"success": True, "msg": "destroying instance"}),
    "DELETE /api/v0/instances/": (200, {"success": True}),
    "PUT /api/v0/instances/{id}/": (200, {"success": True}),
    "PUT /api/v0/instances/bid_price/{id}/": (200, {"success": True}),
    "PUT /api/v0/instances/reboot/{id}/": (200, {"success": True}),
    "POST /api/v0/instances/{id}/ssh/": (200, {"success": True, "msg": "Key added"}),
    "GET /api/v0/ssh/": (
        200,
        [
            {
                "id": 7,
                "user_id": 123,
                "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIspec spec@example",
                "created_at": "2024-05-01T12:00:00Z",
                "deleted_at": None,
            }
        ],
    ),
    "POST /api/v0/ssh/": (
        200,
        {
            "success": True,
            "key": {
                "id": 8,
                "user_id": 123,
                "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAInew new@example",
                "created_at": "2024-05-02T12:00:00Z",
                "deleted_at": None,
            },
        },
    ),
    "DELETE /api/v0/ssh/{id}/": (200, {"success": True}),
    "GET /api/v0/users/current": (
        200,
        {"id": 123, "key_id": 456, "email": "u@example.com", "balance": 10.5, "ssh_key": None},
    ),
    "GET /api/v0/template/": (
        200,
        {
            "success": True,
            "templates_found": 1,
            "templates": [{"id": 1, "name": "n", "image": "i"}],
        },
    ),
}


@attrs.define
class Recorded:
    """One request as received."""

    method: str
    route: str | None
    path: str
    query: dict[str, str]
    body: Any


@attrs.define
class SpecServer:
    """The server's queues and records; ``url`` is its root."""

    url: str = ""
    queued: dict[str, list[tuple[int, Any]]] = attrs.field(factory=dict)
    requests: list[Recorded] = attrs.field(factory=list)

    def answer(self, route: str, status: int, body: Any) -> None:
        """Queue one answer for the next request on ``route``."""
        self.queued.setdefault(route, []).append((status, body))

    def sent(self, route: str) -> list[Recorded]:
        """The requests received on ``route``."""
        return [r for r in self.requests if r.route == route]

    async def handle(self, request: web.Request) -> web.Response:
        text = await request.text()
        route = route_of(request.method, request.path)
        self.requests.append(
            Recorded(
                method=request.method,
                route=route,
                path=request.path,
                query=dict(request.query),
                body=json.loads(text) if text else None,
            )
        )
        if route is None:
            return _json(404, {"success": False, "error": "not_found", "msg": "no such route"})
        queue = self.queued.get(route)
        status, body = queue.pop(0) if queue else _DEFAULTS[route]
        return _json(status, copy.deepcopy(body))


def _json(status: int, body: Any) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json"
    )


@asynccontextmanager
async def spec_server() -> AsyncIterator[SpecServer]:
    """Serve on 127.0.0.1 (a free port) until the block ends."""
    server = SpecServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()
