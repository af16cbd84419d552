"""The SDK paces a documented margin above each route's minimum interval (never at it)."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path

import pytest
from aioresponses import aioresponses

from tests.unit.conftest import FAST_RETRY, ROOT, make_config
from vastai_async.pacing import DEFAULT_MARGIN, DEFAULT_MIN_INTERVALS, Pacing, route_key
from vastai_async.sandbox.clock import SimClock
from vastai_async.sandbox.ratelimit import RateLimiter
from vastai_async.session import VastAISession

ANY_API = re.compile(rf"^{re.escape(ROOT)}/api/.*$")


def test_default_margin_is_at_least_ten_percent_above_every_minimum() -> None:
    pacing = Pacing()
    assert DEFAULT_MARGIN >= 1.1
    for key, minimum in DEFAULT_MIN_INTERVALS.items():
        method, template = key.split(" ", 1)
        assert pacing.min_interval(method, template) == pytest.approx(minimum)
        assert pacing.interval(method, template) >= 1.1 * minimum - 1e-12
    assert pacing.interval("GET", "/unknown") == pytest.approx(1.1 * pacing.default_interval_s)


def test_scaling_keeps_the_margin() -> None:
    scaled = Pacing(margin=1.25).scaled(0.1)
    assert scaled.margin == 1.25
    key = route_key("PUT", "/api/v0/asks/{id}/")
    assert scaled.interval("PUT", "/api/v0/asks/{id}/") == pytest.approx(
        DEFAULT_MIN_INTERVALS[key] * 0.1 * 1.25
    )


@pytest.mark.parametrize("margin", [0.9, 0.0, -1.0, True, "1.2"])
def test_a_margin_below_one_is_refused(margin: object) -> None:
    with pytest.raises(ValueError, match="margin"):
        Pacing(margin=margin)  # type: ignore[arg-type]


def test_the_sandbox_still_enforces_the_table_minimum() -> None:
    """The margin is the client's: the sandbox's limits stay the published minimums."""
    limiter = RateLimiter(clock=SimClock(1.0))
    for key, minimum in DEFAULT_MIN_INTERVALS.items():
        assert limiter.min_interval_s(key) == pytest.approx(minimum)
    assert limiter.tolerance == 0.1


async def test_sends_are_spaced_by_the_margin_not_the_minimum(
    tmp_path: Path, mocked: aioresponses
) -> None:
    times: list[float] = []

    def record(url: object, **kwargs: object) -> None:
        times.append(asyncio.get_running_loop().time())

    mocked.get(ANY_API, payload={}, callback=record, repeat=True)
    minimum = 0.02
    pacing = Pacing(min_intervals={route_key("GET", "/api/v0/users/current"): minimum})
    async with VastAISession(make_config(tmp_path, pacing=pacing), retry=FAST_RETRY) as s:
        await asyncio.gather(*(s.request("GET", "/api/v0/users/current") for _ in range(10)))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= minimum * DEFAULT_MARGIN - 1e-6
