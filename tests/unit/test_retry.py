"""Retries: one table of failures and what the session does with each, plus the wait rules."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from tests.unit.conftest import ROOT, connector_error, make_config, sent
from vastai_async._retry import RetryableFailure, RetryPolicy, server_wait_s
from vastai_async.errors import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    CreateOutcomeUnknownError,
    InternalServerError,
    RateLimitedError,
    VastAIError,
)
from vastai_async.session import VastAISession

ANY_API = re.compile(rf"^{re.escape(ROOT)}/api/.*$")
OK: dict[str, Any] = {"success": True}

# What the mock answers, one item per attempt.
Answer = dict[str, Any]


def status(code: int, **extra: Any) -> Answer:
    return {"status": code, "payload": {"success": False, "msg": f"status {code}"}, **extra}


def raises(exc: BaseException) -> Answer:
    return {"exception": exc}


ok: Answer = {"status": 200, "payload": OK}
quota = {"status": 429, "payload": {"success": False, "error": "search_quota_exceeded"}}

# (case, request kind, answers, expected outcome, attempts made)
# Outcome: "ok" or an exception class. Every row uses RetryPolicy(attempts=2, initial_s=0).
RETRY_TABLE: list[tuple[str, str, list[Answer], Any, int]] = [
    ("429 without Retry-After is retried", "read", [status(429), ok], "ok", 2),
    (
        "429 with Retry-After is retried",
        "read",
        [status(429, headers={"Retry-After": "0"}), ok],
        "ok",
        2,
    ),
    ("429 twice gives RateLimitedError", "read", [status(429), status(429)], RateLimitedError, 2),
    (
        "Retry-After longer than the budget gives up at once",
        "read",
        [status(429, headers={"Retry-After": "3600"}), ok],
        RateLimitedError,
        1,
    ),
    (
        "search quota exceeded, reset far away: never retried before it",
        "read",
        [{**quota, "headers": {"X-RateLimit-Reset": str(int(time.time()) + 7200)}}, ok],
        RateLimitedError,
        1,
    ),
    ("search quota exceeded, reset unknown: not retried", "read", [quota, ok], RateLimitedError, 1),
    ("502 on a read is retried", "read", [status(502), ok], "ok", 2),
    (
        "503 with Retry-After past the budget gives up at once",
        "read",
        [status(503, headers={"Retry-After": "3600"}), ok],
        InternalServerError,
        1,
    ),
    ("503 on a read is retried", "read", [status(503), ok], "ok", 2),
    ("504 on a read is retried", "read", [status(504), ok], "ok", 2),
    (
        "503 twice gives InternalServerError",
        "read",
        [status(503), status(503)],
        InternalServerError,
        2,
    ),
    ("500 is not retried", "read", [status(500), ok], InternalServerError, 1),
    ("400 is not retried", "read", [status(400), ok], BadRequestError, 1),
    ("connection refused is retried", "read", [raises(connector_error()), ok], "ok", 2),
    (
        "connection reset is retried",
        "read",
        [raises(aiohttp.ClientOSError(104, "reset")), ok],
        "ok",
        2,
    ),
    (
        "server disconnect is retried",
        "read",
        [raises(aiohttp.ServerDisconnectedError()), ok],
        "ok",
        2,
    ),
    ("timeout is retried", "read", [raises(TimeoutError()), ok], "ok", 2),
    (
        "timeout twice gives APITimeoutError",
        "read",
        [raises(TimeoutError())] * 2,
        APITimeoutError,
        2,
    ),
    (
        "refused twice gives APIConnectionError",
        "read",
        [raises(connector_error())] * 2,
        APIConnectionError,
        2,
    ),
    ("idempotent write: 503 is retried", "idempotent", [status(503), ok], "ok", 2),
    ("idempotent write: timeout is retried", "idempotent", [raises(TimeoutError()), ok], "ok", 2),
    ("create: connection refused is retried", "create", [raises(connector_error()), ok], "ok", 2),
    (
        "create: connect timeout is retried",
        "create",
        [raises(aiohttp.ConnectionTimeoutError()), ok],
        "ok",
        2,
    ),
    ("create: 429 is retried", "create", [status(429), ok], "ok", 2),
    (
        "create: timeout is an unknown outcome",
        "create",
        [raises(TimeoutError()), ok],
        CreateOutcomeUnknownError,
        1,
    ),
    (
        "create: read timeout is an unknown outcome",
        "create",
        [raises(aiohttp.SocketTimeoutError()), ok],
        CreateOutcomeUnknownError,
        1,
    ),
    (
        "create: dropped connection is an unknown outcome",
        "create",
        [raises(aiohttp.ServerDisconnectedError()), ok],
        CreateOutcomeUnknownError,
        1,
    ),
    (
        "create: reset after send is an unknown outcome",
        "create",
        [raises(aiohttp.ClientOSError(104, "reset")), ok],
        CreateOutcomeUnknownError,
        1,
    ),
    (
        "create: 502 is an unknown outcome",
        "create",
        [status(502), ok],
        CreateOutcomeUnknownError,
        1,
    ),
    (
        "create: 503 is an unknown outcome",
        "create",
        [status(503), ok],
        CreateOutcomeUnknownError,
        1,
    ),
    (
        "create: 504 is an unknown outcome",
        "create",
        [status(504), ok],
        CreateOutcomeUnknownError,
        1,
    ),
    (
        "create: 500 is an unknown outcome",
        "create",
        [status(500), ok],
        CreateOutcomeUnknownError,
        1,
    ),
    (
        "non-idempotent write: timeout is not retried",
        "write",
        [raises(TimeoutError()), ok],
        APITimeoutError,
        1,
    ),
    (
        "non-idempotent write: 503 is not retried",
        "write",
        [status(503), ok],
        InternalServerError,
        1,
    ),
    ("non-idempotent write: refused is retried", "write", [raises(connector_error()), ok], "ok", 2),
]

_REQUESTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "read": ("GET", "/api/v0/instances/{id}/", {}),
    "idempotent": ("DELETE", "/api/v0/instances/{id}/", {"idempotent": True}),
    "write": ("PUT", "/api/v0/instances/reboot/{id}/", {}),
    "create": ("PUT", "/api/v0/asks/{id}/", {"kind": "create"}),
}


@pytest.mark.parametrize(
    ("case", "kind", "answers", "outcome", "attempts"),
    RETRY_TABLE,
    ids=[row[0] for row in RETRY_TABLE],
)
async def test_retry_table(
    tmp_path: Path,
    mocked: aioresponses,
    case: str,
    kind: str,
    answers: list[Answer],
    outcome: Any,
    attempts: int,
) -> None:
    """Each failure is retried, or not, as the table says; creates only when surely unsent."""
    method, template, options = _REQUESTS[kind]
    for answer in answers:
        mocked.add(ANY_API, method=method, **answer)
    async with VastAISession(
        make_config(tmp_path), retry=RetryPolicy(attempts=2, initial_s=0)
    ) as s:
        call = s.request(method, template, path_params={"id": 4}, **options)
        if outcome == "ok":
            assert await call == OK
        else:
            with pytest.raises(outcome) as info:
                await call
            assert isinstance(info.value, VastAIError)  # never the internal RetryableFailure
    assert len(sent(mocked)) == attempts


async def test_create_outcome_unknown_carries_facts_and_cause(
    tmp_path: Path, mocked: aioresponses
) -> None:
    """CreateOutcomeUnknownError names the offer and template and keeps the transport cause."""
    mocked.put(ANY_API, exception=aiohttp.ServerDisconnectedError())
    async with VastAISession(
        make_config(tmp_path), retry=RetryPolicy(attempts=3, initial_s=0)
    ) as s:
        with pytest.raises(CreateOutcomeUnknownError) as info:
            await s.request("PUT", "/api/v0/asks/{id}/", path_params={"id": 77}, kind="create")
    err = info.value
    assert (err.offer_id, err.path, err.method) == (77, "/api/v0/asks/{id}/", "PUT")
    assert isinstance(err.__cause__, APIConnectionError)
    assert isinstance(err.__cause__.__cause__, aiohttp.ServerDisconnectedError)


def _waits(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [getattr(r, "vastai_wait", -1.0) for r in caplog.records if hasattr(r, "vastai_wait")]


@pytest.mark.parametrize(
    ("headers", "expected_wait"),
    [
        ({"Retry-After": "0.05"}, 0.05),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "0.05", "X-RateLimit-Reset": "99999999999"}, 0.05),  # Retry-After wins
    ],
)
@pytest.mark.parametrize("status_code", [429, 503])
async def test_server_wait_is_honoured_exactly_without_jitter(
    tmp_path: Path,
    mocked: aioresponses,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, str],
    expected_wait: float,
    status_code: int,
) -> None:
    """A Retry-After (on 429 or 503) is slept as given: no jitter, no exponential."""
    caplog.set_level(logging.DEBUG, logger="vastai_async")
    mocked.get(ANY_API, status=status_code, payload={"detail": "busy"}, headers=headers)
    mocked.get(ANY_API, payload=OK)
    policy = RetryPolicy(attempts=3, initial_s=5.0, jitter=True, seed=3)
    async with VastAISession(make_config(tmp_path), retry=policy) as s:
        started = time.monotonic()
        assert await s.request("GET", "/api/v0/users/current") == OK
        elapsed = time.monotonic() - started
    assert _waits(caplog) == [expected_wait]
    assert elapsed >= expected_wait


async def test_ratelimit_reset_epoch_is_honoured(
    tmp_path: Path, mocked: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    """X-RateLimit-Reset (epoch seconds) sets the wait to the time left until the reset."""
    caplog.set_level(logging.DEBUG, logger="vastai_async")
    reset = time.time() + 0.08
    mocked.get(ANY_API, status=429, payload={}, headers={"X-RateLimit-Reset": f"{reset:.3f}"})
    mocked.get(ANY_API, payload=OK)
    async with VastAISession(make_config(tmp_path), retry=RetryPolicy(attempts=2)) as s:
        assert await s.request("GET", "/api/v0/users/current") == OK
    [wait] = _waits(caplog)
    assert 0.0 <= wait <= 0.08
    assert time.time() >= reset - 0.002


async def test_search_quota_within_budget_waits_for_the_reset(
    tmp_path: Path, mocked: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    """search_quota_exceeded is retried only after its X-RateLimit-Reset, never before."""
    caplog.set_level(logging.DEBUG, logger="vastai_async")
    reset = time.time() + 0.05
    mocked.post(ANY_API, **{**quota, "headers": {"X-RateLimit-Reset": f"{reset:.3f}"}})
    mocked.post(ANY_API, payload={"offers": []})
    async with VastAISession(make_config(tmp_path), retry=RetryPolicy(attempts=2)) as s:
        await s.request("POST", "/api/v0/bundles/", json={}, idempotent=True)
    assert time.time() >= reset - 0.002
    assert len(_waits(caplog)) == 1


async def test_wait_longer_than_budget_raises_at_once_with_retry_after(
    tmp_path: Path, mocked: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    """Asked to wait past the budget, the session does not sleep: RateLimitedError(retry_after)."""
    caplog.set_level(logging.DEBUG, logger="vastai_async")
    mocked.get(ANY_API, status=429, payload={}, headers={"Retry-After": "5"}, repeat=True)
    policy = RetryPolicy(attempts=5, initial_s=0, max_time_s=1.0)
    async with VastAISession(make_config(tmp_path), retry=policy) as s:
        with pytest.raises(RateLimitedError) as info:
            await s.request("GET", "/api/v0/users/current")
    assert _waits(caplog) == []  # no wait was even started (not a wall-clock bound)
    assert info.value.retry_after == 5.0
    assert "retry_after=5s" in str(info.value)
    assert len(sent(mocked)) == 1


async def test_backoff_logs_nothing_at_error_level(
    tmp_path: Path, mocked: aioresponses, caplog: pytest.LogCaptureFixture
) -> None:
    """backoff's own logger stays silent (logger=None); our DEBUG lines say attempt and wait."""
    caplog.set_level(logging.DEBUG)
    mocked.get(ANY_API, status=503, body="busy", repeat=True)
    async with VastAISession(
        make_config(tmp_path), retry=RetryPolicy(attempts=3, initial_s=0)
    ) as s:
        with pytest.raises(InternalServerError):
            await s.request("GET", "/api/v0/users/current")
    assert not [r for r in caplog.records if r.name == "backoff"]
    ours = [r for r in caplog.records if r.name.startswith("vastai_async")]
    assert all(r.levelno == logging.DEBUG for r in ours)
    assert [getattr(r, "vastai_attempt", None) for r in ours if hasattr(r, "vastai_status")] == [
        1,
        2,
        3,
    ]
    assert [getattr(r, "vastai_attempt", None) for r in ours if hasattr(r, "vastai_wait")] == [1, 2]
    assert "GET /api/v0/users/current -> 503 (attempt 1)" in caplog.text


# -- the wait rules, without HTTP -----------------------------------------------------------


def test_computed_waits_are_capped_exponential_with_full_jitter() -> None:
    """Without jitter the ceilings double up to max_delay; with it each wait is in [0, ceiling]."""
    plain = RetryPolicy(initial_s=0.5, max_delay_s=3.0, jitter=False)
    rng = random.Random(0)
    assert [plain.computed_wait_s(n, rng) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittered = RetryPolicy(initial_s=0.5, max_delay_s=3.0, jitter=True)
    rng = random.Random(7)
    waits = [jittered.computed_wait_s(n, rng) for n in range(200)]
    assert all(0.0 <= w <= 3.0 for w in waits)
    assert len(set(waits)) > 150  # really randomised


def test_jitter_is_reproducible_with_a_seed() -> None:
    """Two generators from the same seeded policy produce the same waits."""
    from vastai_async._retry import _wait_gen

    policy = RetryPolicy(seed=42)
    failure = RetryableFailure(APIConnectionError("x"))
    runs = []
    for _ in range(2):
        gen = _wait_gen(policy)
        gen.send(None)
        runs.append([gen.send(failure) for _ in range(4)])
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "12"}, 12.0),
        ({"Retry-After": " 1.5 "}, 1.5),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": email.utils.formatdate(1_000_030, usegmt=True)}, 30.0),
        ({"X-RateLimit-Reset": "1000045"}, 45.0),
        ({"X-RateLimit-Reset": "999000"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"X-RateLimit-Reset": "tomorrow"}, None),
    ],
)
def test_server_wait_reads_seconds_http_dates_and_epoch_resets(
    headers: dict[str, str], expected: float | None
) -> None:
    """Retry-After as seconds or HTTP date, X-RateLimit-Reset as epoch; junk reads as unknown."""
    assert server_wait_s(headers, now=1_000_000.0) == expected


@pytest.mark.parametrize(
    "changes", [{"attempts": 0}, {"initial_s": -1.0}, {"max_delay_s": -1.0}, {"max_time_s": -1.0}]
)
def test_retry_policy_rejects_nonsense(changes: dict[str, Any]) -> None:
    """A policy with no attempt or a negative time is refused."""
    with pytest.raises(ValueError, match="must be"):
        RetryPolicy(**changes)


async def test_retries_are_paced_like_first_attempts(tmp_path: Path, mocked: aioresponses) -> None:
    """A retry waits for the route's pacing interval even when backoff asks for no wait."""
    from vastai_async.pacing import Pacing, route_key

    times: list[float] = []

    def record(url: Any, **kwargs: Any) -> None:
        times.append(asyncio.get_running_loop().time())

    pacing = Pacing(min_intervals={route_key("GET", "/api/v0/users/current"): 0.05})
    mocked.get(ANY_API, status=429, payload={}, callback=record)
    mocked.get(ANY_API, payload=OK, callback=record)
    config = make_config(tmp_path, pacing=pacing)
    async with VastAISession(config, retry=RetryPolicy(attempts=2, initial_s=0)) as s:
        await s.request("GET", "/api/v0/users/current")
    assert times[1] - times[0] >= 0.05 - 1e-6  # one clock tick
