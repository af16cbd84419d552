"""Redaction: the API key is never in logs, reprs, exception strings or third-party requests."""

from __future__ import annotations

import logging
import re
import traceback

import aiohttp
import pytest
from aioresponses import aioresponses

from tests.unit.conftest import API_KEY, FAST_RETRY, ROOT, connector_error, sent
from vastai_async._logging import REDACTED, RedactingFilter, get_logger, redact
from vastai_async.client import VastAIClient
from vastai_async.config import VastAIConfig
from vastai_async.errors import APIError
from vastai_async.session import VastAISession

ANY_API = re.compile(rf"^{re.escape(ROOT)}/api/.*$")
LOGS_URL = "http://logs.example.net/abc/logs.txt"


@pytest.mark.parametrize(
    "line",
    [
        f"Authorization: Bearer {API_KEY}",
        f"{{'Authorization': 'Bearer {API_KEY}', 'Accept': 'application/json'}}",
        f"GET https://console.vast.ai/api/v0/instances/?owner=me&api_key={API_KEY}&x=1",
        f'{{"api_key": "{API_KEY}"}}',
        f"api_key='{API_KEY}'",
        "Authorization: Bearer some-other-token-123456",
        "GET /x?api_key=another-key-abcdef",
    ],
)
def test_redact_masks_bearer_tokens_and_api_key_values(line: str) -> None:
    """Header, query, JSON and keyword forms of a key are masked, registered or not."""
    cleaned = redact(line)
    assert REDACTED in cleaned
    assert API_KEY not in cleaned
    assert "some-other-token-123456" not in cleaned
    assert "another-key-abcdef" not in cleaned


def test_redact_leaves_ordinary_text_alone() -> None:
    """Text without secrets passes unchanged."""
    text = "PUT /api/v0/instances/{id}/ -> 200 (attempt 1) label=vastai-async:o:j:r"
    assert redact(text) == text


def test_filter_redacts_records_of_child_loggers(caplog: pytest.LogCaptureFixture) -> None:
    """Every logger from get_logger carries the filter (parent filters miss child records)."""
    caplog.set_level(logging.DEBUG, logger="vastai_async")
    log = get_logger("vastai_async.some_module")
    assert any(isinstance(f, RedactingFilter) for f in log.filters)
    assert any(isinstance(f, RedactingFilter) for f in logging.getLogger("vastai_async").filters)
    log.debug("headers=%s", {"Authorization": f"Bearer {API_KEY}"})
    try:
        raise RuntimeError(f"boom api_key={API_KEY}")
    except RuntimeError:
        log.exception("failed")
    assert API_KEY not in caplog.text
    assert REDACTED in caplog.text


async def test_a_whole_exchange_never_logs_the_key(
    config: VastAIConfig, mocked: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    """DEBUG logs of requests, retries and errors say method, template, status; never the key."""
    caplog.set_level(logging.DEBUG)
    mocked.get(ANY_API, status=503, body=f"upstream said api_key={API_KEY}")
    mocked.get(ANY_API, status=401, payload={"error": "auth_error", "msg": f"bad key {API_KEY}"})
    async with VastAISession(config, retry=FAST_RETRY) as s:
        with pytest.raises(APIError) as info:
            await s.request("GET", "/api/v1/instances/", params={"limit": 25})
    assert "GET /api/v1/instances/ -> 503 (attempt 1)" in caplog.text
    assert "GET /api/v1/instances/ -> 401 (attempt 2)" in caplog.text
    assert API_KEY not in caplog.text
    for text in (str(info.value), repr(info.value), info.value.msg or ""):
        assert API_KEY not in text
    formatted = "".join(traceback.format_exception(info.value))
    assert API_KEY not in formatted


@pytest.mark.parametrize(
    "exc",
    [connector_error(), aiohttp.ServerDisconnectedError(), TimeoutError(), aiohttp.ClientOSError()],
)
async def test_connection_errors_carry_no_key_nor_url(
    config: VastAIConfig, mocked: aioresponses, exc: BaseException
) -> None:
    """Transport failures name the template and the failure kind; never the key or a full URL."""
    mocked.get(ANY_API, exception=exc, repeat=True)
    async with VastAISession(config, retry=FAST_RETRY) as s:
        with pytest.raises(APIError) as info:
            await s.request("GET", "/api/v0/instances/{id}/", path_params={"id": 5})
    text = str(info.value)
    assert API_KEY not in text
    assert ROOT not in text
    assert "/api/v0/instances/{id}/" in text


async def test_reprs_hide_the_key(config: VastAIConfig) -> None:
    """Neither the config, the session nor the client shows the key in its repr."""
    async with VastAISession(config, retry=FAST_RETRY) as s:
        client = VastAIClient(s)
        for obj in (config, s, client):
            assert API_KEY not in repr(obj)
            assert API_KEY not in str(obj)


async def test_key_never_sent_to_a_third_party_url(
    config: VastAIConfig, mocked: aioresponses
) -> None:
    """The logs result_url (another origin) gets no Authorization header and no key anywhere."""
    mocked.put(ANY_API, payload={"success": True, "result_url": LOGS_URL})
    mocked.get(LOGS_URL, body="hello\n", content_type="text/plain")
    async with VastAISession(config, retry=FAST_RETRY) as s:
        assert await VastAIClient(s).request_logs(3, poll_interval_s=0.01) == "hello\n"
    requests = sent(mocked)
    assert len(requests) == 2
    api, logs = requests
    assert api[2]["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert logs[1].host == "logs.example.net"
    assert "Authorization" not in (logs[2].get("headers") or {})
    for _, url, _ in requests:
        assert API_KEY not in str(url)


async def test_api_key_is_never_put_in_a_url(config: VastAIConfig, mocked: aioresponses) -> None:
    """Unlike older official clients, no request carries ``api_key`` in its query string."""
    mocked.get(ANY_API, payload={"instances": [], "next_token": None}, repeat=True)
    async with VastAISession(config, retry=FAST_RETRY) as s:
        await VastAIClient(s).list_instances()
    for _, url, _ in sent(mocked):
        assert "api_key" not in url.query
        assert API_KEY not in str(url)
