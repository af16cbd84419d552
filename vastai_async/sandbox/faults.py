"""HTTP fault injection: what a request meets instead of (or besides) its normal answer.

A fault names a route (or every route), when it fires (from the Nth matching request on, how
many times, with what seeded probability) and what happens. Counting requests instead of
waiting lets a test cut in at an exact point ("the 2nd destroy fails") without sleeping.
Lifecycle faults (stuck loading, OCI error, offline, outbid) live in ``lifecycle.py``; SSH
faults in ``sshd.SSHFaults``.
"""

from __future__ import annotations

import random
from typing import Literal

import attrs

__all__ = ["FaultKind", "FaultPlan", "HTTPFault"]

FaultKind = Literal[
    "status",  # an error status with a JSON error body (5xx by default)
    "reset",  # the connection is dropped before any answer
    "slow",  # the answer comes after delay_s wall seconds
    "malformed",  # 200 with a truncated JSON body
    "html",  # an HTML error page (a proxy in front of the API)
    "rate_limit",  # 429 with one of the real bodies
    "search_quota",  # 429 search_quota_exceeded with X-RateLimit-Reset
    "lost_answer",  # the request is carried out, then the connection drops
    "late_answer",  # the request is carried out at once; its answer leaves delay_s later
    "taken",  # create only: the offer is rented by someone else just before
]


@attrs.define(kw_only=True)
class HTTPFault:
    """One fault rule.

    Attributes:
        kind: what happens (see :data:`FaultKind`).
        route: route key such as ``"PUT /api/v0/asks/{id}/"``; ``None`` for every route.
        target: only requests whose ``{id}`` is this number (an offer id on create, an
            instance id on instance routes); ``None`` for any.
        nth: the first matching request (1-based) it may fire on.
        times: how many times it fires; ``None`` for no limit.
        probability: chance to fire on an eligible request (seeded).
        status: HTTP status of ``status`` faults.
        delay_s: wall seconds of a ``slow`` or ``late_answer`` fault (network time is real,
            not scaled).
        reset_in_s: simulated seconds until a search quota resets.
        fired: how many times it has fired so far.
        seen: matching requests seen so far.
    """

    kind: FaultKind
    route: str | None = None
    target: int | None = None
    nth: int = 1
    times: int | None = 1
    probability: float = 1.0
    status: int = 500
    delay_s: float = 0.0
    reset_in_s: float = 3600.0
    fired: int = 0
    seen: int = 0


class FaultPlan:
    """The active HTTP faults of a sandbox.

    Args:
        seed: seeds the probability draws.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.rules: list[HTTPFault] = []
        self.log: list[tuple[str, str]] = []  # (route, kind) of every fault fired
        self._rng = random.Random(f"faults:{seed}")

    def add(self, fault: HTTPFault) -> HTTPFault:
        """Activate a fault; returns it so a test can read ``fired`` later."""
        self.rules.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault."""
        self.rules.clear()

    def pick(self, route: str, target: int | None = None) -> HTTPFault | None:
        """The fault (if any) that hits this request; counts the request for every rule.

        Args:
            route: the request's route key.
            target: the number in the path's ``{id}``, if any.
        """
        chosen: HTTPFault | None = None
        for rule in self.rules:
            if rule.route is not None and rule.route != route:
                continue
            if rule.target is not None and rule.target != target:
                continue
            rule.seen += 1
            if chosen is not None or rule.seen < rule.nth:
                continue
            if rule.times is not None and rule.fired >= rule.times:
                continue
            if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                continue
            rule.fired += 1
            chosen = rule
        if chosen is not None:
            self.log.append((route, chosen.kind))
        return chosen
