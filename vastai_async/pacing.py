"""Per-route minimum intervals between requests: the one published table.

Vast's published OpenAPI spec gives, in the 429 example of most routes, ``threshold=X``
(docs/wire-notes.md). The unit is unstated; we read each figure as a rate in requests per second
per identity, so the minimum interval is ``1 / threshold`` seconds. Every figure below names its
source: a spec line (``L1892``), or "not in spec" with the conservative guess we keep instead.
The sandbox's default rate limits read the same figures; a test compares the sandbox's own table
with this one.

Route keys are ``"METHOD /api/vN/path/{template}/"``.

The table holds each route's *minimum* interval. The SDK paces a margin above it
(:attr:`Pacing.margin`, 10% by default): a client sending at exactly the minimum draws a 429 from
the least delivery jitter between it and the server (seen on the sandbox, which forgives 10%).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

__all__ = ["DEFAULT_MARGIN", "DEFAULT_MIN_INTERVALS", "Pacing", "route_key"]


def route_key(method: str, template: str) -> str:
    """The key of a route in pacing tables: ``"GET /api/v1/instances/"``."""
    return f"{method.upper()} {template}"


#: Minimum seconds between two requests on one route (threshold read as requests/second).
DEFAULT_MIN_INTERVALS: Mapping[str, float] = MappingProxyType(
    {
        route_key("POST", "/api/v0/bundles/"): 1 / 2,  # search: not in spec; guess 2
        route_key("PUT", "/api/v0/asks/{id}/"): 1 / 4.5,  # create: spec 4.5 (L1892)
        route_key("GET", "/api/v1/instances/"): 1 / 1,  # v1 list: spec 1.0 (L8393)
        route_key("GET", "/api/v0/instances/"): 1 / 20,  # legacy list: route not in spec; 20
        route_key("GET", "/api/v0/instances/{id}/"): 1 / 2,  # show one: spec 2.0 (L3927)
        route_key("PUT", "/api/v0/instances/{id}/"): 1 / 1,  # start/stop/label: spec 1.0 (L3872)
        route_key("DELETE", "/api/v0/instances/{id}/"): 1 / 3,  # destroy: spec 3.0 (L3789)
        route_key("DELETE", "/api/v0/instances/"): 1 / 3,  # bulk: route not in spec; as destroy
        route_key("PUT", "/api/v0/instances/bid_price/{id}/"): 1 / 5.5,  # spec 5.5 (L587)
        route_key("PUT", "/api/v0/instances/reboot/{id}/"): 1 / 1,  # spec 1.0 (L5654)
        route_key("PUT", "/api/v0/instances/request_logs/{id}/"): 1 / 1,  # not in spec; guess 1
        route_key("POST", "/api/v0/instances/{id}/ssh/"): 1 / 1,  # attach: not in spec; guess 1
        route_key("GET", "/api/v0/ssh/"): 1 / 1,  # account keys: not in spec; guess 1
        route_key("POST", "/api/v0/ssh/"): 1 / 1,  # add account key: spec 1.0 (L1986)
        route_key("DELETE", "/api/v0/ssh/{id}/"): 1 / 1,  # not in spec; as PUT ssh/{id} (L3540)
        route_key("GET", "/api/v0/users/current"): 1 / 1,  # not in spec; guess 1
        route_key("GET", "/api/v0/template/"): 1 / 3,  # templates: spec 3.0 (L2909)
    }
)


#: How far above each route's minimum interval the SDK paces by default (1.1: 10% slower).
DEFAULT_MARGIN = 1.1


def _margin(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1.0:
        raise ValueError(f"Pacing.margin must be a number >= 1.0, got {value!r}")


def _frozen_mapping(value: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType(dict(value))


@attrs.frozen(kw_only=True)
class Pacing:
    """Per-route minimum intervals, a session setting beside :class:`~vastai_async.Timings`.

    Attributes:
        min_intervals: the least seconds between two requests on a route, by route key (what
            the server enforces).
        default_interval_s: the minimum for routes missing from the table.
        margin: the SDK paces at ``margin`` times the minimum (>= 1.0; default
            :data:`DEFAULT_MARGIN`, 10% above), so steady load never meets the limit exactly.
    """

    min_intervals: Mapping[str, float] = attrs.field(
        default=DEFAULT_MIN_INTERVALS, converter=_frozen_mapping
    )
    default_interval_s: float = 1.0
    margin: float = attrs.field(default=DEFAULT_MARGIN, validator=_margin)

    def min_interval(self, method: str, template: str) -> float:
        """The route's minimum interval, as published (what the server enforces)."""
        return self.min_intervals.get(route_key(method, template), self.default_interval_s)

    def interval(self, method: str, template: str) -> float:
        """The interval the SDK paces one route at: its minimum times :attr:`margin`."""
        return self.min_interval(method, template) * self.margin

    def scaled(self, factor: float) -> Pacing:
        """Every interval multiplied by ``factor`` (the sandbox's time scale)."""
        if not factor > 0:
            raise ValueError(f"scale factor must be > 0, got {factor!r}")
        return Pacing(
            min_intervals={k: v * factor for k, v in self.min_intervals.items()},
            default_interval_s=self.default_interval_s * factor,
            margin=self.margin,
        )
