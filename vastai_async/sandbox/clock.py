"""The sandbox's scaled clock: simulated seconds x ``time_scale`` = wall seconds.

Everything that models waiting on the cloud (boot latencies, stuck periods, rate-limit windows,
billing) runs on this clock; network mechanics and epoch stamps stay real (design.md, "Timings
and the sandbox clock"). Simulated time is derived from the event loop's monotonic clock, so it
never jumps when the wall clock is adjusted.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["SimClock"]


class SimClock:
    """Simulated time, measured from the clock's creation.

    Args:
        time_scale: wall seconds per simulated second (0.05 turns a 90 s boot into 4.5 s).
    """

    def __init__(self, time_scale: float) -> None:
        if not time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale!r}")
        self.time_scale = time_scale
        self._t0 = time.monotonic()

    def now(self) -> float:
        """Simulated seconds since the clock started."""
        return (time.monotonic() - self._t0) / self.time_scale

    def wall(self, sim_s: float) -> float:
        """Wall seconds that ``sim_s`` simulated seconds take."""
        return sim_s * self.time_scale

    async def sleep(self, sim_s: float) -> None:
        """Wait ``sim_s`` simulated seconds."""
        await asyncio.sleep(max(0.0, sim_s) * self.time_scale)

    @staticmethod
    def epoch() -> float:
        """Real epoch seconds, for stamps such as ``start_date`` (those are never scaled)."""
        return time.time()
