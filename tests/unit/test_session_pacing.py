"""Pacing: per-route minimum intervals shared by every coroutine using one session."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from aioresponses import aioresponses

from tests.unit.conftest import FAST_RETRY, ROOT, make_config
from vastai_async.pacing import DEFAULT_MIN_INTERVALS, Pacing, route_key
from vastai_async.session import VastAISession

ANY_API = re.compile(rf"^{re.escape(ROOT)}/api/.*$")
INTERVAL = 0.01
# The gate stamps the next slot after the send, so sends are a full interval apart; asyncio may
# only wake a sleeper up to one clock tick (1 ns on Linux) early.
CLOCK_SLACK = 1e-6


def _recorder(times: list[float]) -> Any:
    def record(url: Any, **kwargs: Any) -> None:
        times.append(asyncio.get_running_loop().time())

    return record


async def test_100_concurrent_calls_never_closer_than_the_interval(
    tmp_path: Path, mocked: aioresponses
) -> None:
    """100 coroutines on one route are sent one interval apart at least, all of them answered."""
    times: list[float] = []
    mocked.get(ANY_API, payload={"id": 1}, callback=_recorder(times), repeat=True)
    pacing = Pacing(min_intervals={route_key("GET", "/api/v0/users/current"): INTERVAL})
    async with VastAISession(make_config(tmp_path, pacing=pacing), retry=FAST_RETRY) as s:
        results = await asyncio.gather(
            *(s.request("GET", "/api/v0/users/current") for _ in range(100))
        )
    assert results == [{"id": 1}] * 100
    assert len(times) == 100
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= INTERVAL - CLOCK_SLACK
    # (No upper bound on the run's length: that is a speed figure, which a saturated machine
    # breaks; tests/benchmarks measure it.)


async def test_routes_are_paced_separately(tmp_path: Path, mocked: aioresponses) -> None:
    """A slow route does not hold back another route (pacing is per route, not global)."""
    slow: list[float] = []
    fast: list[float] = []
    mocked.get(f"{ROOT}/api/v0/users/current", payload={}, callback=_recorder(slow), repeat=True)
    mocked.get(f"{ROOT}/api/v0/ssh/", payload=[], callback=_recorder(fast), repeat=True)
    pacing = Pacing(
        min_intervals={route_key("GET", "/api/v0/users/current"): 0.2}, default_interval_s=0.0
    )
    async with VastAISession(make_config(tmp_path, pacing=pacing), retry=FAST_RETRY) as s:
        await asyncio.gather(
            s.request("GET", "/api/v0/users/current"),
            s.request("GET", "/api/v0/users/current"),
            *(s.request("GET", "/api/v0/ssh/") for _ in range(5)),
        )
    assert slow[1] - slow[0] >= 0.2 - CLOCK_SLACK
    assert max(fast) < slow[1]  # all five unpaced calls went out during the slow route's wait


async def test_route_is_the_template_not_the_url(tmp_path: Path, mocked: aioresponses) -> None:
    """Calls on different instance ids share the route ``GET /api/v0/instances/{id}/``."""
    times: list[float] = []
    mocked.get(ANY_API, payload={"instances": None}, callback=_recorder(times), repeat=True)
    pacing = Pacing(min_intervals={route_key("GET", "/api/v0/instances/{id}/"): 0.03})
    async with VastAISession(make_config(tmp_path, pacing=pacing), retry=FAST_RETRY) as s:
        await asyncio.gather(
            *(s.request("GET", "/api/v0/instances/{id}/", path_params={"id": i}) for i in range(4))
        )
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.03 - CLOCK_SLACK


def test_session_uses_the_config_pacing_unless_given_one(tmp_path: Path) -> None:
    """The config's pacing (scaled with the sandbox clock) is the default; an argument wins."""
    config = make_config(tmp_path, pacing=Pacing()).scaled(0.5)
    sess = VastAISession(config)
    key = route_key("PUT", "/api/v0/asks/{id}/")
    assert sess.pacing.min_intervals[key] == pytest.approx(DEFAULT_MIN_INTERVALS[key] * 0.5)
    other = Pacing(min_intervals={}, default_interval_s=0.0)
    assert VastAISession(config, pacing=other).pacing is other


def test_every_route_the_client_calls_has_a_published_interval() -> None:
    """Each endpoint template of the client has its own row in the pacing table."""
    from vastai_async import client

    templates = {
        value
        for name, value in vars(client).items()
        if name.startswith("_") and isinstance(value, str) and value.startswith("/api/")
    }
    assert len(templates) >= 12
    table_paths = {key.split(" ", 1)[1] for key in DEFAULT_MIN_INTERVALS}
    assert templates <= table_paths


async def test_waiters_are_served_first_come_first_served(
    tmp_path: Path, mocked: aioresponses
) -> None:
    """Coroutines queued on one route are sent in the order they asked (no starvation)."""
    order: list[str] = []

    def record(url: Any, **kwargs: Any) -> None:
        order.append(url.path.rsplit("/", 2)[-2])

    mocked.get(ANY_API, payload={"instances": None}, callback=record, repeat=True)
    pacing = Pacing(min_intervals={route_key("GET", "/api/v0/instances/{id}/"): 0.005})
    async with VastAISession(make_config(tmp_path, pacing=pacing), retry=FAST_RETRY) as s:
        tasks = []
        for i in range(20):
            tasks.append(
                asyncio.create_task(
                    s.request("GET", "/api/v0/instances/{id}/", path_params={"id": i})
                )
            )
            await asyncio.sleep(0)  # each task reaches the gate before the next one starts
        await asyncio.gather(*tasks)
    assert order == [str(i) for i in range(20)]
