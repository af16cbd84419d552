"""The sandbox's own per-route rate limits and the real service's 429 answers.

Thresholds are the published spec's 429 figures (vast-api.md's where the spec names none), read
as requests per second per identity (an API key, or the client address for unauthenticated
search), so the minimum interval between two requests on one route is ``1 / threshold``
simulated seconds, i.e. ``time_scale / threshold`` wall seconds. The SDK's pacing table
(``vastai_async.pacing``) uses the same reading; a test compares the two. The sandbox keeps its
own copy on purpose: a mistake in one is caught by the other.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from types import MappingProxyType

from vastai_async.sandbox.clock import SimClock

__all__ = ["DEFAULT_THRESHOLDS", "RateLimiter", "rate_limit_body"]

#: Requests per second per identity, by ``"METHOD /api/vN/template/"``.
DEFAULT_THRESHOLDS: Mapping[str, float] = MappingProxyType(
    {
        "POST /api/v0/bundles/": 2.0,  # not in the spec; vast-api.md's "burst 2"
        "PUT /api/v0/asks/{id}/": 4.5,  # spec L1892
        "GET /api/v1/instances/": 1.0,  # spec L8393
        "GET /api/v0/instances/": 20.0,  # legacy list
        "GET /api/v0/instances/{id}/": 2.0,
        "PUT /api/v0/instances/{id}/": 1.0,
        "DELETE /api/v0/instances/{id}/": 3.0,
        "DELETE /api/v0/instances/": 3.0,  # not listed; as destroy
        "PUT /api/v0/instances/bid_price/{id}/": 5.5,  # spec L587
        "PUT /api/v0/instances/reboot/{id}/": 1.0,
        "PUT /api/v0/instances/request_logs/{id}/": 1.0,
        "POST /api/v0/instances/{id}/ssh/": 1.0,
        "GET /api/v0/ssh/": 1.0,
        "POST /api/v0/ssh/": 1.0,
        "DELETE /api/v0/ssh/{id}/": 1.0,
        "GET /api/v0/users/current": 1.0,
        "GET /api/v0/template/": 3.0,  # spec L2909
    }
)
DEFAULT_THRESHOLD = 1.0


def rate_limit_body(threshold: float, variant: int) -> tuple[bytes, str]:
    """One of the three 429 bodies the real service sends, and its content type."""
    text = f"API requests too frequent endpoint threshold={threshold}"
    if variant == 0:
        return text.encode(), "text/plain"
    if variant == 1:
        return json.dumps({"detail": text}).encode(), "application/json"
    body = {"success": False, "error": "rate_limit_exceeded", "msg": text}
    return json.dumps(body).encode(), "application/json"


class RateLimiter:
    """Minimum interval per route and identity, on the simulated clock.

    Args:
        clock: the sandbox clock.
        thresholds: requests/second by route key; unknown routes get ``default_threshold``.
        tolerance: fraction of the interval forgiven, so a client pacing at exactly the interval
            is not punished by event-loop jitter.
        seed: picks the 429 body variant.
    """

    def __init__(
        self,
        *,
        clock: SimClock,
        thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
        default_threshold: float = DEFAULT_THRESHOLD,
        tolerance: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.clock = clock
        self.thresholds = dict(thresholds)
        self.default_threshold = default_threshold
        self.tolerance = tolerance
        self.enabled = True
        self.rejected = 0
        self._last: dict[tuple[str, str], float] = {}
        self._rng = random.Random(f"429:{seed}")

    def threshold(self, route: str) -> float:
        """Requests per second allowed on ``route``."""
        return self.thresholds.get(route, self.default_threshold)

    def min_interval_s(self, route: str) -> float:
        """Simulated seconds between two requests on ``route``."""
        return 1.0 / self.threshold(route)

    def admit(self, route: str, identity: str) -> bool:
        """Record a request; False when it came too soon (answer 429)."""
        if not self.enabled:
            return True
        now = self.clock.now()
        key = (route, identity)
        last = self._last.get(key)
        if last is not None and now - last < self.min_interval_s(route) * (1 - self.tolerance):
            self.rejected += 1
            return False
        self._last[key] = now
        return True

    def body(self, route: str) -> tuple[bytes, str]:
        """A 429 body for ``route`` (variant chosen by the seeded generator)."""
        return rate_limit_body(self.threshold(route), self._rng.randrange(3))
