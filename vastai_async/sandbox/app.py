"""The sandbox's aiohttp application: wire manners, auth, recording, rate limits, faults.

Every answer is ``Content-Type: application/json`` exactly (never ``json_response``, which
appends a charset the official CLI rejects). The middleware records each request as received
(raw headers included, so tests can check what a client sent; they are never logged), injects
faults, checks the key (Bearer header or ``api_key`` query value), applies per-route rate
limits, and turns unknown routes into JSON errors. The handlers live in ``routes.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from aiohttp import web

from vastai_async.sandbox.faults import FaultPlan, HTTPFault
from vastai_async.sandbox.ratelimit import RateLimiter
from vastai_async.sandbox.state import Cloud

__all__ = [
    "STATE",
    "ApiError",
    "LogStore",
    "RecordedRequest",
    "SandboxState",
    "json_body",
    "make_app",
    "reply",
]


@attrs.define(kw_only=True)
class RecordedRequest:
    """One request as the sandbox received it.

    Attributes:
        method: HTTP method.
        route: route key (``"PUT /api/v0/asks/{id}/"``), or ``"? /path"`` for unknown routes.
        path: the request path (no query string).
        query: query parameters (raw strings).
        body: the raw body text.
        headers: the request headers, unredacted: inspect them, never print them.
        at: epoch seconds when it arrived.
        status: the HTTP status answered (``None`` if the connection was dropped).
    """

    method: str
    route: str
    path: str
    query: dict[str, str]
    body: str
    headers: dict[str, str]
    at: float
    status: int | None = None

    def json(self) -> Any:
        """The body parsed as JSON (``None`` when empty)."""
        return json.loads(self.body) if self.body else None


@attrs.define(kw_only=True)
class LogStore:
    """Log files served from the second origin: token -> (ready at, simulated s; text)."""

    files: dict[str, tuple[float, str]] = attrs.field(factory=dict)
    requests: list[RecordedRequest] = attrs.field(factory=list)
    base_url: str = ""


@attrs.define(kw_only=True)
class SandboxState:
    """What the handlers share."""

    cloud: Cloud
    api_key: str
    limiter: RateLimiter
    faults: FaultPlan
    logs: LogStore
    templates: list[dict[str, Any]]
    user_id: int
    legacy_list: bool = True
    requests: list[RecordedRequest] = attrs.field(factory=list)


STATE = web.AppKey("sandbox_state", SandboxState)

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer: ``{"success": false, "error": code, "msg": msg, **extra}``."""

    def __init__(self, status: int, code: str, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg
        self.extra = extra

    def response(self) -> web.Response:
        """The JSON answer."""
        return reply({"success": False, "error": self.code, "msg": self.msg, **self.extra},
                     status=self.status)  # fmt: skip


def reply(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer with exactly ``Content-Type: application/json``."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def json_body(request: web.Request) -> Any:
    """The request body as JSON; an empty body reads as ``{}``.

    Raises:
        ApiError: 400 ``invalid_args`` for a body that is not JSON.
    """
    text = await request.text()
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError:
        raise ApiError(400, "invalid_args", "Request body is not valid JSON.") from None


def _route_key(request: web.Request) -> str:
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    if resource is None:
        return f"? {request.path}"
    template = resource.canonical
    if template == "/api/v0/users/current/":
        template = "/api/v0/users/current"
    return f"{request.method} {template}"


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer ") :].strip()
    return request.query.get("api_key")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_OPEN_ROUTES = frozenset({"POST /api/v0/bundles/"})
_HTML_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def _drop(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.abort()


def _fault_response(st: SandboxState, route: str, fault: HTTPFault) -> web.Response | None:
    if fault.kind == "status":
        body = {"success": False, "error": "server_error", "msg": "Internal server error."}
        return reply(body, status=fault.status)
    if fault.kind == "malformed":
        return web.Response(body=b'{"success": true, "instances": [{"id": 1', status=200,
                            content_type="application/json")  # fmt: skip
    if fault.kind == "html":
        return web.Response(body=_HTML_PAGE, status=502, content_type="text/html")
    if fault.kind == "rate_limit":
        text, ctype = st.limiter.body(route)
        return web.Response(body=text, status=429, content_type=ctype)
    if fault.kind == "search_quota":
        reset = time.time() + st.cloud.clock.wall(fault.reset_in_s)
        msg = "Daily search quota exceeded."
        body = {"success": False, "error": "search_quota_exceeded", "msg": msg}
        return reply(body, status=429, headers={"X-RateLimit-Reset": str(int(reset) + 1)})
    return None


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    st = request.app[STATE]
    route = _route_key(request)
    record = RecordedRequest(
        method=request.method,
        route=route,
        path=request.path,
        query=dict(request.query),
        body=await request.text() if request.can_read_body else "",
        headers=dict(request.headers),
        at=time.time(),
    )
    st.requests.append(record)
    response: web.StreamResponse
    fault = st.faults.pick(route, _path_id(request))
    if fault is not None and fault.kind == "reset":
        _drop(request)
        raise asyncio.CancelledError  # aiohttp closes the handler quietly; nothing is sent
    if fault is not None and fault.kind == "slow":
        await asyncio.sleep(fault.delay_s)
    if fault is not None and (early := _fault_response(st, route, fault)) is not None:
        record.status = early.status
        return early
    if fault is not None and fault.kind == "taken":
        _take_offer(st, request)
    try:
        key = _presented_key(request)
        if key != st.api_key and not (key is None and route in _OPEN_ROUTES):
            raise ApiError(401, "auth_error", "Invalid user key")
        identity = key or f"ip:{request.remote}"
        if not st.limiter.admit(route, identity):
            text, ctype = st.limiter.body(route)
            response = web.Response(body=text, status=429, content_type=ctype)
        else:
            response = await handler(request)
    except ApiError as err:
        response = err.response()
    except web.HTTPException as exc:
        code = "not_found" if exc.status == 404 else "invalid_request"
        response = reply({"success": False, "error": code, "msg": exc.reason}, status=exc.status)
    except Exception:
        # A sandbox bug must still answer as the service would (JSON 500), and be visible.
        logger.exception("sandbox handler failed on %s", route)
        failure = {"success": False, "error": "server_error", "msg": "Internal server error."}
        response = reply(failure, status=500)
    if fault is not None and fault.kind == "lost_answer":
        _drop(request)
        raise asyncio.CancelledError
    if fault is not None and fault.kind == "late_answer":
        # Carried out (a listing already shows it), answered only now: the window in which a
        # client can see an instance whose create's answer is still on its way.
        await asyncio.sleep(fault.delay_s)
    record.status = response.status
    return response


def _path_id(request: web.Request) -> int | None:
    try:
        return int(request.match_info.get("id", ""))
    except ValueError:
        return None


def _take_offer(st: SandboxState, request: web.Request) -> None:
    # Someone else rents the offer between the client's search and its create.
    offer_id = _path_id(request)
    if offer_id is not None and st.cloud.market.available(offer_id) is not None:
        st.cloud.market.rent(offer_id, -1)


def make_app(state: SandboxState, routes: list[web.RouteDef]) -> web.Application:
    """The API application (``routes`` from ``routes.py``)."""
    app = web.Application(middlewares=[_middleware], client_max_size=4 * 1024**2)
    app[STATE] = state
    app.add_routes(routes)
    return app


async def _serve_log(request: web.Request) -> web.Response:
    st = request.app[STATE]
    st.logs.requests.append(
        RecordedRequest(
            method=request.method,
            route="GET /logs/{token}",
            path=request.path,
            query=dict(request.query),
            body="",
            headers=dict(request.headers),
            at=time.time(),
        )
    )
    entry = st.logs.files.get(request.match_info["token"])
    if entry is None or st.cloud.clock.now() < entry[0]:
        return web.Response(status=404, body=b"Not ready", content_type="text/plain")
    return web.Response(body=entry[1].encode(), content_type="text/plain")


def make_logs_app(state: SandboxState) -> web.Application:
    """The second origin serving ``result_url`` log files, without auth."""
    app = web.Application()
    app[STATE] = state
    app.add_routes([web.get("/logs/{token}", _serve_log)])
    return app
