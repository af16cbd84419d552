"""RoutePacer: per-route minimum intervals between sends, shared by all users of a session.

Route = method + path template (every instance id shares ``GET /api/v0/instances/{id}/``).
Each route has a FIFO gate (``asyncio.Lock`` wakes its waiters in order) and the time of its next
slot. The gate is held from the slot until the request is on its way, so the interval separates
sends, not merely turns at the gate.
"""

from __future__ import annotations

import asyncio

import attrs

from vastai_async.pacing import Pacing, route_key

__all__ = ["RoutePacer"]


@attrs.define
class _Gate:
    lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)
    next_at: float = 0.0


def _reopen(gate: _Gate, loop: asyncio.AbstractEventLoop, interval: float) -> None:
    gate.next_at = loop.time() + interval
    gate.lock.release()


class RoutePacer:
    """Paces requests per route according to a :class:`~vastai_async.pacing.Pacing` table.

    Args:
        pacing: the per-route minimum intervals.
    """

    def __init__(self, pacing: Pacing) -> None:
        self.pacing = pacing
        self._gates: dict[str, _Gate] = {}

    async def wait(self, method: str, template: str) -> None:
        """Wait for this route's next slot; call right before sending.

        The gate reopens from a ``call_soon`` callback, which runs once the calling task first
        suspends: after aiohttp has written the request on a pooled connection (or started
        connecting on a new one). The next slot is stamped then.
        """
        interval = self.pacing.interval(method, template)
        if interval <= 0:
            return
        gate = self._gates.setdefault(route_key(method, template), _Gate())
        loop = asyncio.get_running_loop()
        await gate.lock.acquire()
        try:
            delay = gate.next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        except BaseException:
            gate.lock.release()
            raise
        loop.call_soon(_reopen, gate, loop, interval)
