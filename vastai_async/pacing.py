"""Per-route minimum intervals between requests: the one published table.

Vast's generated API spec gives per-route thresholds whose unit is unclear (vast-api.md). We read
each figure as a rate in requests per second per identity, so the minimum interval is
``1 / threshold`` seconds. Routes the spec does not list get a conservative guess, marked below.
The sandbox's default rate limits and the benchmarks read the same reading; a test compares the
sandbox's own table with this one.

Route keys are ``"METHOD /api/vN/path/{template}/"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

__all__ = ["DEFAULT_MIN_INTERVALS", "Pacing", "route_key"]


def route_key(method: str, template: str) -> str:
    """The key of a route in pacing tables: ``"GET /api/v1/instances/"``."""
    return f"{method.upper()} {template}"


#: Minimum seconds between two requests on one route (threshold read as requests/second).
DEFAULT_MIN_INTERVALS: Mapping[str, float] = MappingProxyType(
    {
        route_key("POST", "/api/v0/bundles/"): 1 / 2,  # search: "burst 2"
        route_key("PUT", "/api/v0/asks/{id}/"): 1 / 4.5,  # create: 4.5 (example value)
        route_key("GET", "/api/v1/instances/"): 1 / 2,  # v1 list: not listed; as show one
        route_key("GET", "/api/v0/instances/"): 1 / 20,  # legacy list: 20
        route_key("GET", "/api/v0/instances/{id}/"): 1 / 2,  # show one: 2
        route_key("PUT", "/api/v0/instances/{id}/"): 1 / 1,  # start/stop/label: 1
        route_key("DELETE", "/api/v0/instances/{id}/"): 1 / 3,  # destroy: 3
        route_key("DELETE", "/api/v0/instances/"): 1 / 3,  # bulk destroy: not listed; as destroy
        route_key("PUT", "/api/v0/instances/bid_price/{id}/"): 1 / 1,  # not listed; as PUT
        route_key("PUT", "/api/v0/instances/reboot/{id}/"): 1 / 1,  # not listed; as PUT
        route_key("PUT", "/api/v0/instances/request_logs/{id}/"): 1 / 1,  # not listed; as PUT
        route_key("POST", "/api/v0/instances/{id}/ssh/"): 1 / 1,  # attach key: not listed
        route_key("GET", "/api/v0/ssh/"): 1 / 1,  # account keys: not listed
        route_key("POST", "/api/v0/ssh/"): 1 / 1,  # not listed
        route_key("DELETE", "/api/v0/ssh/{id}/"): 1 / 1,  # not listed
        route_key("GET", "/api/v0/users/current"): 1 / 1,  # current user: not listed
        route_key("GET", "/api/v0/template/"): 1 / 1.9,  # templates: 1.9
    }
)


def _frozen_mapping(value: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class Pacing:
    """Per-route minimum intervals, a session setting beside :class:`~vastai_async.Timings`.

    Attributes:
        min_intervals: seconds between two requests on a route, by route key.
        default_interval_s: for routes missing from the table.
    """

    min_intervals: Mapping[str, float] = attrs.field(
        default=DEFAULT_MIN_INTERVALS, converter=_frozen_mapping
    )
    default_interval_s: float = 1.0

    def interval(self, method: str, template: str) -> float:
        """Minimum interval for one route."""
        return self.min_intervals.get(route_key(method, template), self.default_interval_s)

    def scaled(self, factor: float) -> Pacing:
        """Every interval multiplied by ``factor`` (the sandbox's time scale)."""
        if not factor > 0:
            raise ValueError(f"scale factor must be > 0, got {factor!r}")
        return Pacing(
            min_intervals={k: v * factor for k, v in self.min_intervals.items()},
            default_interval_s=self.default_interval_s * factor,
        )
