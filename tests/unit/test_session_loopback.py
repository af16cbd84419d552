"""The session against a real aiohttp server on 127.0.0.1: what aioresponses cannot show.

aioresponses replaces aiohttp's request machinery, so the failure classes that decide whether a
create may be retried (refused before sending, timed out or dropped after sending) are checked
here on real sockets, together with what the server really receives.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.unit.conftest import API_KEY, make_config
from vastai_async._retry import RetryPolicy
from vastai_async.errors import (
    APIConnectionError,
    APITimeoutError,
    CreateOutcomeUnknownError,
    InternalServerError,
)
from vastai_async.session import VastAISession

RETRY = RetryPolicy(attempts=2, initial_s=0)


class Recorder:
    """Remembers every request the server received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def record(self, request: web.Request) -> None:
        body = await request.read()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": json.loads(body) if body else None,
            }
        )


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, Recorder]]:
    recorder = Recorder()

    async def ok(request: web.Request) -> web.Response:
        await recorder.record(request)
        return web.Response(body=b'{"success": true}', content_type="application/json")

    async def slow(request: web.Request) -> web.Response:
        await recorder.record(request)
        await asyncio.sleep(5)
        return web.Response(body=b"{}", content_type="application/json")

    async def drop(request: web.Request) -> web.Response:
        await recorder.record(request)
        assert request.transport is not None
        request.transport.close()  # the request arrived; its answer is lost
        await asyncio.sleep(1)
        return web.Response(body=b"{}")

    async def bad_gateway(request: web.Request) -> web.Response:
        await recorder.record(request)
        return web.Response(status=502, text="<html><h1>502 Bad Gateway</h1></html>")

    async def redirect(request: web.Request) -> web.Response:
        await recorder.record(request)
        raise web.HTTPFound("http://127.0.0.1:9/elsewhere")

    app = web.Application()
    app.router.add_route("*", "/api/v0/ok/{id}/", ok)
    app.router.add_route("*", "/api/v1/ok/", ok)
    app.router.add_route("*", "/api/v0/slow/{id}/", slow)
    app.router.add_route("*", "/api/v0/drop/{id}/", drop)
    app.router.add_route("*", "/api/v0/bad/{id}/", bad_gateway)
    app.router.add_route("*", "/api/v0/redirect/", redirect)
    srv = TestServer(app, host="127.0.0.1")
    async with srv:
        yield srv, recorder


def _session(tmp_path: Path, root: str, **timings: float) -> VastAISession:
    config = make_config(tmp_path, api_base_url=root)
    if timings:
        config = make_config(tmp_path, api_base_url=root, timings=config.timings.replace(**timings))
    return VastAISession(config, retry=RETRY)


def _root(srv: TestServer) -> str:
    return str(srv.make_url("/")).rstrip("/")


async def test_server_receives_bearer_header_json_query_and_empty_body(
    tmp_path: Path, server: tuple[TestServer, Recorder]
) -> None:
    """On the wire: Bearer auth, JSON query values decoded back, ``{}`` body on a bodiless PUT."""
    srv, recorder = server
    async with _session(tmp_path, _root(srv) + "/api/v0") as s:
        filters = {"label": {"eq": "job 42"}, "id": {"in": [1, 2]}}
        await s.request("GET", "/api/v1/ok/", params={"select_filters": filters, "limit": 25})
        await s.request("PUT", "/api/v0/ok/{id}/", path_params={"id": 3})
    get, put = recorder.requests
    assert get["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert json.loads(get["query"]["select_filters"]) == filters
    assert get["query"]["limit"] == "25"
    assert put["body"] == {}
    assert put["headers"]["Content-Type"] == "application/json"


async def test_refused_connection_is_retried_even_for_a_create(tmp_path: Path) -> None:
    """Connection refused means nothing was sent: a create is retried, then APIConnectionError."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    async with _session(tmp_path, f"http://127.0.0.1:{port}") as s:
        with pytest.raises(APIConnectionError) as info:
            await s.request("PUT", "/api/v0/asks/{id}/", path_params={"id": 1}, kind="create")
    assert not isinstance(info.value, CreateOutcomeUnknownError)


@pytest.mark.parametrize(
    ("template", "expected_create_error"),
    [
        ("/api/v0/slow/{id}/", CreateOutcomeUnknownError),
        ("/api/v0/drop/{id}/", CreateOutcomeUnknownError),
        ("/api/v0/bad/{id}/", CreateOutcomeUnknownError),
    ],
)
async def test_create_that_reached_the_server_is_never_repeated(
    tmp_path: Path,
    server: tuple[TestServer, Recorder],
    template: str,
    expected_create_error: type[Exception],
) -> None:
    """A create that timed out, was dropped or got a 502 reached the server once, and only once."""
    srv, recorder = server
    async with _session(tmp_path, _root(srv), request_timeout_s=0.3) as s:
        with pytest.raises(expected_create_error):
            await s.request("PUT", template, path_params={"id": 1}, kind="create")
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("/api/v0/slow/{id}/", APITimeoutError),
        ("/api/v0/drop/{id}/", APIConnectionError),
        ("/api/v0/bad/{id}/", InternalServerError),
    ],
)
async def test_reads_are_retried_after_the_same_failures(
    tmp_path: Path, server: tuple[TestServer, Recorder], template: str, error: type[Exception]
) -> None:
    """The same failures on a read are retried (both attempts reach the server)."""
    srv, recorder = server
    async with _session(tmp_path, _root(srv), request_timeout_s=0.3) as s:
        with pytest.raises(error):
            await s.request("GET", template, path_params={"id": 1})
    assert len(recorder.requests) == 2


async def test_redirect_is_not_followed_on_the_wire(
    tmp_path: Path, server: tuple[TestServer, Recorder]
) -> None:
    """A 302 from the API ends the request; nothing goes to the Location."""
    srv, recorder = server
    async with _session(tmp_path, _root(srv)) as s:
        with pytest.raises(Exception, match="302"):
            await s.request("GET", "/api/v0/redirect/")
    assert len(recorder.requests) == 1


async def test_plain_aiohttp_replays_a_dropped_put_which_is_why_the_session_stops_it(
    server: tuple[TestServer, Recorder],
) -> None:
    """aiohttp alone sends a dropped PUT twice; if this starts failing, aiohttp stopped doing it
    and ``session._disable_silent_replay`` can go."""
    srv, recorder = server
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await http.put(srv.make_url("/api/v0/drop/1/"), json={})
    assert len(recorder.requests) == 2


async def test_borrowed_session_is_protected_from_the_replay_too(
    tmp_path: Path, server: tuple[TestServer, Recorder]
) -> None:
    """A create through a caller's aiohttp session also reaches the server only once."""
    srv, recorder = server
    async with aiohttp.ClientSession() as http:
        config = make_config(tmp_path, api_base_url=_root(srv))
        async with VastAISession(config, session=http, retry=RETRY) as s:
            with pytest.raises(CreateOutcomeUnknownError):
                await s.request("PUT", "/api/v0/drop/{id}/", path_params={"id": 1}, kind="create")
    assert len(recorder.requests) == 1
