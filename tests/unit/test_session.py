"""VastAISession: lifecycle, URLs, headers, bodies, timeouts and the error mapping table."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from tests.unit.conftest import API_KEY, FAST_RETRY, ROOT, make_config, sent
from vastai_async._retry import RetryPolicy
from vastai_async.config import VastAIConfig
from vastai_async.errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    GoneError,
    InsufficientCreditError,
    InternalServerError,
    NotFoundError,
    OfferUnavailableError,
    PermissionDeniedError,
    RateLimitedError,
    ResponseValidationError,
)
from vastai_async.session import VastAISession
from vastai_async.timings import Timings

USER_URL = f"{ROOT}/api/v0/users/current"
ANY_API = re.compile(rf"^{re.escape(ROOT)}/api/.*$")


# -- lifecycle ------------------------------------------------------------------------------


async def test_owned_http_session_is_created_on_enter_and_closed_on_exit(
    config: VastAIConfig,
) -> None:
    """The session creates its aiohttp session inside the loop and closes it on exit."""
    sess = VastAISession(config)
    assert sess._http is None  # nothing created outside the running loop
    async with sess:
        http = sess._http
        assert isinstance(http, aiohttp.ClientSession)
        assert not http.closed
    assert http.closed


async def test_owned_http_session_is_created_on_first_request_without_enter(
    config: VastAIConfig, mocked: aioresponses
) -> None:
    """Without ``async with``, the first request creates the aiohttp session; close() ends it."""
    mocked.get(USER_URL, payload={"id": 1})
    sess = VastAISession(config, retry=FAST_RETRY)
    assert await sess.request("GET", "/api/v0/users/current") == {"id": 1}
    http = sess._http
    assert http is not None
    await sess.close()
    assert http.closed


async def test_borrowed_http_session_is_never_closed(config: VastAIConfig) -> None:
    """A caller's aiohttp session survives the VastAISession's exit and close()."""
    async with aiohttp.ClientSession() as http:
        async with VastAISession(config, session=http) as sess:
            assert sess._http is http
        await sess.close()
        assert not http.closed


async def test_close_is_idempotent_and_later_requests_fail_cleanly(config: VastAIConfig) -> None:
    """close() twice is fine; a request after close raises APIConnectionError, not RuntimeError."""
    sess = VastAISession(config)
    async with sess:
        pass
    await sess.close()
    await sess.close()
    with pytest.raises(APIConnectionError, match="closed"):
        await sess.request("GET", "/api/v0/users/current")


async def test_borrowed_session_closed_by_its_owner_fails_cleanly(config: VastAIConfig) -> None:
    """A borrowed aiohttp session closed under us gives APIConnectionError."""
    http = aiohttp.ClientSession()
    await http.close()
    sess = VastAISession(config, session=http)
    with pytest.raises(APIConnectionError, match="closed"):
        await sess.request("GET", "/api/v0/users/current")


# -- URLs, headers, bodies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "root"),
    [
        ("https://console.vast.ai/api/v0", "https://console.vast.ai"),
        ("https://console.vast.ai/api/v0/", "https://console.vast.ai"),
        ("https://console.vast.ai", "https://console.vast.ai"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
        ("http://proxy.local/vast/api/v0", "http://proxy.local/vast"),
    ],
)
def test_root_is_resolved_from_either_base_url_form(
    tmp_path: Path, base_url: str, root: str
) -> None:
    """The base URL may be the root or root + /api/v0; v0 and v1 paths hang off the root."""
    sess = VastAISession(make_config(tmp_path, api_base_url=base_url))
    assert sess.root == root
    assert str(sess.url("/api/v0/instances/{id}/", {"id": 7})) == f"{root}/api/v0/instances/7/"
    assert str(sess.url("/api/v1/instances/")) == f"{root}/api/v1/instances/"


def test_path_params_are_quoted_and_templates_must_be_api_paths(config: VastAIConfig) -> None:
    """A path value cannot add path segments or a query; templates outside /api/vN are refused."""
    sess = VastAISession(config)
    assert sess.url("/api/v0/ssh/{id}/", {"id": "a/b?c"}).raw_path == "/api/v0/ssh/a%2Fb%3Fc/"
    with pytest.raises(ValueError, match="api"):
        sess.url("/users/current")


def test_non_http_base_url_is_refused(tmp_path: Path) -> None:
    """A base URL that is not absolute http(s) is refused at construction."""
    with pytest.raises(ValueError, match="http"):
        VastAISession(make_config(tmp_path, api_base_url="console.vast.ai"))


async def test_bearer_header_is_per_request_never_a_session_default(
    session: VastAISession, mocked: aioresponses
) -> None:
    """Authorization is sent on the API request, and the aiohttp session has no default auth."""
    mocked.get(USER_URL, payload={"id": 1})
    await session.request("GET", "/api/v0/users/current")
    [(_, url, kwargs)] = sent(mocked)
    assert kwargs["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert "api_key" not in url.query
    assert session._http is not None
    assert "Authorization" not in session._http.headers


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"owner": "me"}, {"owner": "me"}),
        ({"limit": 25}, {"limit": "25"}),
        ({"flag": True}, {"flag": "true"}),
        (
            {"select_filters": {"label": {"eq": "a b"}}},
            {"select_filters": '{"label":{"eq":"a b"}}'},
        ),
        ({"order_by": [{"col": "id", "dir": "asc"}]}, {"order_by": '[{"col":"id","dir":"asc"}]'}),
    ],
)
async def test_query_values_that_are_not_strings_are_json_encoded(
    session: VastAISession,
    mocked: aioresponses,
    params: dict[str, Any],
    expected: dict[str, str],
) -> None:
    """Plain strings go as they are; other values are JSON-encoded, then URL-encoded."""
    mocked.get(ANY_API, payload={})
    await session.request("GET", "/api/v1/instances/", params=params)
    [(_, url, _)] = sent(mocked)
    assert dict(url.query) == expected
    assert "{" not in url.raw_query_string  # the JSON is URL-encoded on the wire


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_writes_without_a_body_send_an_empty_json_object(
    session: VastAISession, mocked: aioresponses, method: str
) -> None:
    """Every POST/PUT/DELETE carries a JSON body, ``{}`` when there is nothing to say."""
    mocked.add(ANY_API, method=method, payload={"success": True})
    await session.request(method, "/api/v0/instances/reboot/{id}/", path_params={"id": 3})
    [(_, _, kwargs)] = sent(mocked)
    assert kwargs["json"] == {}


async def test_get_sends_no_body(session: VastAISession, mocked: aioresponses) -> None:
    """A GET carries no JSON body."""
    mocked.get(USER_URL, payload={"id": 1})
    await session.request("GET", "/api/v0/users/current")
    assert sent(mocked)[0][2]["json"] is None


async def test_default_timeout_comes_from_timings_and_can_be_overridden(
    tmp_path: Path, mocked: aioresponses
) -> None:
    """Each request gets total=request_timeout_s, connect=connect_timeout_s unless overridden."""
    timings = Timings(request_timeout_s=7.0, connect_timeout_s=2.0)
    mocked.get(USER_URL, payload={"id": 1}, repeat=True)
    async with VastAISession(make_config(tmp_path, timings=timings)) as sess:
        await sess.request("GET", "/api/v0/users/current")
        await sess.request("GET", "/api/v0/users/current", timeout=1.5)
        custom = aiohttp.ClientTimeout(total=99)
        await sess.request("GET", "/api/v0/users/current", timeout=custom)
    timeouts = [kwargs["timeout"] for _, _, kwargs in sent(mocked)]
    assert timeouts == [
        aiohttp.ClientTimeout(total=7.0, connect=2.0),
        aiohttp.ClientTimeout(total=1.5, connect=2.0),
        aiohttp.ClientTimeout(total=99),
    ]


async def test_redirects_are_not_followed(session: VastAISession, mocked: aioresponses) -> None:
    """A 3xx is an error, never followed (a redirect must not carry the key elsewhere)."""
    mocked.get(USER_URL, status=302, headers={"Location": "http://elsewhere.test/x"}, body="")
    with pytest.raises(APIStatusError) as info:
        await session.request("GET", "/api/v0/users/current")
    assert info.value.status == 302
    assert sent(mocked)[0][2]["allow_redirects"] is False


async def test_empty_success_body_reads_as_none(
    session: VastAISession, mocked: aioresponses
) -> None:
    """A 2xx with an empty body returns None instead of failing to parse."""
    mocked.delete(ANY_API, status=204, body="")
    assert await session.request("DELETE", "/api/v0/ssh/{id}/", path_params={"id": 1}) is None


async def test_fetch_external_sends_no_credentials(
    session: VastAISession, mocked: aioresponses
) -> None:
    """A third-party URL (logs result_url) is fetched without Authorization and without the key."""
    url = "http://logs.example/abc.log?X-Signature=s3cr3t"
    mocked.get(url, body="line 1\nline 2\n", content_type="text/plain")
    answer = await session.fetch_external(url)
    assert (answer.status, answer.text) == (200, "line 1\nline 2\n")
    [(_, sent_url, kwargs)] = sent(mocked)
    assert "Authorization" not in (kwargs.get("headers") or {})
    assert API_KEY not in str(sent_url)


async def test_fetch_external_failure_is_an_api_connection_error(
    session: VastAISession, mocked: aioresponses
) -> None:
    """A failed third-party fetch raises APIConnectionError without the URL's query."""
    mocked.get("http://logs.example/a.log?sig=s3cr3t", exception=aiohttp.ServerDisconnectedError())
    with pytest.raises(APIConnectionError) as info:
        await session.fetch_external("http://logs.example/a.log?sig=s3cr3t")
    assert "s3cr3t" not in str(info.value)
    assert isinstance(info.value.__cause__, aiohttp.ServerDisconnectedError)


# -- error mapping (vast-api.md "Rate limits and errors") ------------------------------------

_HTML_502 = "<html><head><style>b{}</style></head><body><h1>502 Bad Gateway</h1></body></html>"

ERROR_TABLE = [
    # (case, method, status, body, expected class, expected code, msg fragment)
    (
        "bad or revoked key",
        "GET",
        401,
        {"error": "auth_error", "msg": "Invalid user key"},
        AuthenticationError,
        "auth_error",
        "Invalid user key",
    ),
    (
        "scoped key lacking permission",
        "GET",
        403,
        {"msg": "forbidden"},
        PermissionDeniedError,
        None,
        "forbidden",
    ),
    (
        "offer gone (404 invalid_args carrying no_such_ask)",
        "PUT",
        404,
        {
            "error": "invalid_args",
            "msg": "error 404/3603: no_such_ask Instance type by id 7 is not available.",
            "ask_id": 7,
        },
        OfferUnavailableError,
        "invalid_args",
        "no_such_ask",
    ),
    (
        "offer gone with cancel_unavail (410 no_such_ask)",
        "PUT",
        410,
        {"error": "no_such_ask", "msg": "gone"},
        OfferUnavailableError,
        "no_such_ask",
        "gone",
    ),
    (
        "bad create args",
        "PUT",
        400,
        {"error": "invalid_args", "msg": "bad disk"},
        BadRequestError,
        "invalid_args",
        "bad disk",
    ),
    (
        "bad price",
        "PUT",
        400,
        {"error": "invalid_price", "msg": "too low"},
        BadRequestError,
        "invalid_price",
        "too low",
    ),
    (
        "no credit",
        "PUT",
        400,
        {"error": "missing_billing", "msg": "You lack credit, see the billing page."},
        InsufficientCreditError,
        "missing_billing",
        "lack credit",
    ),
    (
        "instance not found on DELETE/PUT",
        "DELETE",
        404,
        {"error": "no_such_instance", "msg": "Instance 9 not found"},
        NotFoundError,
        "no_such_instance",
        "not found",
    ),
    ("legacy list gone", "GET", 410, {"msg": "deprecated"}, GoneError, None, "deprecated"),
    (
        "rate limited, plain text",
        "GET",
        429,
        "API requests too frequent endpoint threshold=1.0",
        RateLimitedError,
        None,
        "too frequent",
    ),
    (
        "rate limited, detail",
        "GET",
        429,
        {"detail": "API requests too frequent endpoint threshold=1.0"},
        RateLimitedError,
        None,
        "too frequent",
    ),
    (
        "rate limited, Vast code",
        "GET",
        429,
        {"success": False, "error": "rate_limit_exceeded", "msg": "slow down"},
        RateLimitedError,
        "rate_limit_exceeded",
        "slow down",
    ),
    (
        "200 with success false",
        "PUT",
        200,
        {"success": False, "error": "resources_unavailable", "msg": "GPU busy"},
        APIStatusError,
        "resources_unavailable",
        "GPU busy",
    ),
    ("HTML error page", "GET", 500, _HTML_502, InternalServerError, None, "502 Bad Gateway"),
    ("plain 418", "GET", 418, "I'm a teapot", APIStatusError, None, "teapot"),
]


@pytest.mark.parametrize(
    ("case", "method", "status", "body", "cls", "code", "fragment"),
    ERROR_TABLE,
    ids=[row[0] for row in ERROR_TABLE],
)
async def test_error_answers_map_to_the_error_tree(
    tmp_path: Path,
    mocked: aioresponses,
    case: str,
    method: str,
    status: int,
    body: Any,
    cls: type[APIStatusError],
    code: str | None,
    fragment: str,
) -> None:
    """Each error answer Vast gives becomes the right class, with status, code, msg and template."""
    raw = body if isinstance(body, str) else json.dumps(body)
    kind = "text/html" if raw.startswith("<") else "application/json"
    mocked.add(ANY_API, method=method, status=status, body=raw, content_type=kind, repeat=True)
    template = "/api/v0/instances/{id}/"
    async with VastAISession(make_config(tmp_path), retry=RetryPolicy(attempts=1)) as s:
        with pytest.raises(cls) as info:
            await s.request(method, template, path_params={"id": 9}, kind="read")
    err = info.value
    assert type(err) is cls
    assert (err.status, err.code, err.method, err.path) == (status, code, method, template)
    assert err.instance_id == 9
    assert err.msg is not None
    assert fragment in err.msg
    assert "<" not in err.msg  # HTML tags stripped
    assert len(err.msg) <= 200


async def test_long_text_error_bodies_are_clipped(
    session: VastAISession, mocked: aioresponses
) -> None:
    """A huge error page yields a message of at most 200 characters."""
    mocked.get(USER_URL, status=400, body="x" * 5000, content_type="text/plain")
    with pytest.raises(BadRequestError) as info:
        await session.request("GET", "/api/v0/users/current")
    assert info.value.msg == "x" * 200


async def test_malformed_json_in_a_success_is_a_response_validation_error(
    session: VastAISession, mocked: aioresponses
) -> None:
    """A 200 whose body is not JSON raises ResponseValidationError (never read as empty)."""
    mocked.get(USER_URL, body='{"instances": [', status=200)
    with pytest.raises(ResponseValidationError) as info:
        await session.request("GET", "/api/v0/users/current")
    assert info.value.path == "/api/v0/users/current"
    assert isinstance(info.value.__cause__, ValueError)


async def test_errors_name_the_offer_on_create(
    session: VastAISession, mocked: aioresponses
) -> None:
    """A create's error carries the offer id (and the template, not the URL)."""
    mocked.put(ANY_API, status=404, payload={"error": "no_such_ask", "msg": "gone"})
    with pytest.raises(OfferUnavailableError) as info:
        await session.request("PUT", "/api/v0/asks/{id}/", path_params={"id": 55}, kind="create")
    assert (info.value.offer_id, info.value.path) == (55, "/api/v0/asks/{id}/")


async def test_no_raw_aiohttp_error_escapes(session: VastAISession, mocked: aioresponses) -> None:
    """An unexpected aiohttp error is wrapped in APIConnectionError, its cause kept."""
    mocked.get(USER_URL, exception=aiohttp.InvalidURL("bad"))
    with pytest.raises(APIConnectionError) as info:
        await session.request("GET", "/api/v0/users/current")
    assert isinstance(info.value.__cause__, aiohttp.InvalidURL)


async def test_cancellation_is_not_swallowed(session: VastAISession, mocked: aioresponses) -> None:
    """Cancelling a request propagates CancelledError (it is not mapped to an API error)."""
    started = asyncio.Event()

    async def slow(url: URL, **kwargs: Any) -> None:
        started.set()
        await asyncio.sleep(10)

    mocked.get(USER_URL, callback=slow)
    task = asyncio.create_task(session.request("GET", "/api/v0/users/current"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
