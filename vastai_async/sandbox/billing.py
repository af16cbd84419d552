"""The sandbox's billing ledger, on the simulated clock.

Storage is billed from creation to destruction (``storage_cost`` $/GB/month x disk GB, a month
being 720 hours), GPU time at the rental's $/hour while the instance is running. Figures are
computed from the recorded transitions when asked, never by a ticking task, so they are exact
for a known timeline.
"""

from __future__ import annotations

from typing import Any

import attrs

from vastai_async.sandbox.market import HOURS_PER_MONTH

__all__ = ["Ledger", "LedgerEntry"]


@attrs.define(kw_only=True)
class LedgerEntry:
    """One instance's account: times are simulated seconds since the sandbox started."""

    instance_id: int
    offer_id: int
    machine_id: int
    disk_gb: float
    storage_cost: float  # $/GB/month
    gpu_dph: float  # $/hour while running
    created_at: float
    destroyed_at: float | None = None
    running_since: float | None = None
    running_s_closed: float = 0.0
    gpu_usd_closed: float = 0.0

    @property
    def storage_dph(self) -> float:
        """Storage price in $/hour."""
        return self.storage_cost * self.disk_gb / HOURS_PER_MONTH

    def running_s(self, now: float) -> float:
        """Simulated seconds spent running so far."""
        open_s = 0.0 if self.running_since is None else max(0.0, now - self.running_since)
        return self.running_s_closed + open_s

    def gpu_usd(self, now: float) -> float:
        """GPU cost so far."""
        open_s = 0.0 if self.running_since is None else max(0.0, now - self.running_since)
        return self.gpu_usd_closed + self.gpu_dph * open_s / 3600.0

    def storage_usd(self, now: float) -> float:
        """Storage cost so far."""
        end = now if self.destroyed_at is None else self.destroyed_at
        return self.storage_dph * max(0.0, end - self.created_at) / 3600.0

    def as_dict(self, now: float) -> dict[str, Any]:
        """A plain snapshot for tests and reports."""
        alive = self.destroyed_at is None
        end = now if self.destroyed_at is None else self.destroyed_at
        return {
            "instance_id": self.instance_id,
            "offer_id": self.offer_id,
            "machine_id": self.machine_id,
            "alive": alive,
            "created_at": self.created_at,
            "destroyed_at": self.destroyed_at,
            "lifetime_s": end - self.created_at,
            "running_s": self.running_s(now),
            "running": self.running_since is not None,
            "disk_gb": self.disk_gb,
            "storage_cost": self.storage_cost,
            "gpu_dph": self.gpu_dph,
            "storage_dph": self.storage_dph,
            "storage_usd": self.storage_usd(now),
            "gpu_usd": self.gpu_usd(now),
            "total_usd": self.storage_usd(now) + self.gpu_usd(now),
        }


class Ledger:
    """Every instance's cost and the account balance.

    Args:
        credit: starting balance in dollars.
    """

    def __init__(self, *, credit: float) -> None:
        self.credit = credit
        self.entries: dict[int, LedgerEntry] = {}

    def open(
        self,
        *,
        instance_id: int,
        offer_id: int,
        machine_id: int,
        disk_gb: float,
        storage_cost: float,
        gpu_dph: float,
        now: float,
    ) -> LedgerEntry:
        """Start billing storage for a new instance."""
        entry = LedgerEntry(
            instance_id=instance_id,
            offer_id=offer_id,
            machine_id=machine_id,
            disk_gb=disk_gb,
            storage_cost=storage_cost,
            gpu_dph=gpu_dph,
            created_at=now,
        )
        self.entries[instance_id] = entry
        return entry

    def set_running(self, instance_id: int, running: bool, now: float) -> None:
        """Start or stop the GPU meter."""
        entry = self.entries[instance_id]
        if running and entry.running_since is None and entry.destroyed_at is None:
            entry.running_since = now
        elif not running and entry.running_since is not None:
            span = max(0.0, now - entry.running_since)
            entry.running_s_closed += span
            entry.gpu_usd_closed += entry.gpu_dph * span / 3600.0
            entry.running_since = None

    def set_gpu_dph(self, instance_id: int, dph: float, now: float) -> None:
        """Change the GPU price (a bid change) from ``now`` on."""
        entry = self.entries[instance_id]
        was_running = entry.running_since is not None
        self.set_running(instance_id, False, now)
        entry.gpu_dph = dph
        if was_running:
            self.set_running(instance_id, True, now)

    def close(self, instance_id: int, now: float) -> None:
        """Stop all billing of a destroyed instance."""
        entry = self.entries.get(instance_id)
        if entry is None or entry.destroyed_at is not None:
            return
        self.set_running(instance_id, False, now)
        entry.destroyed_at = now

    def spent(self, now: float) -> float:
        """Dollars spent by every instance so far."""
        return sum(e.storage_usd(now) + e.gpu_usd(now) for e in self.entries.values())

    def balance(self, now: float) -> float:
        """What is left of the credit."""
        return self.credit - self.spent(now)

    def leak_report(self, now: float) -> list[dict[str, Any]]:
        """Instances still existing, with what they cost per hour right now."""
        out = []
        for e in self.entries.values():
            if e.destroyed_at is None:
                dph = e.storage_dph + (e.gpu_dph if e.running_since is not None else 0.0)
                out.append(
                    {
                        "instance_id": e.instance_id,
                        "offer_id": e.offer_id,
                        "running": e.running_since is not None,
                        "dph_now": dph,
                        "spent_usd": e.storage_usd(now) + e.gpu_usd(now),
                    }
                )
        return out
