"""Picking offers of the sandbox's market for a test."""

from __future__ import annotations

from vastai_async.models import Offer

__all__ = ["distinct_machines"]


def distinct_machines(offers: list[Offer], n: int) -> list[Offer]:
    """The first ``n`` offers on distinct machines (a race never rents one machine twice)."""
    seen: dict[int | None, Offer] = {}
    for offer in offers:
        seen.setdefault(offer.machine_id, offer)
    picked = list(seen.values())[:n]
    assert len(picked) == n, f"the sandbox market has fewer than {n} machines"
    return picked
