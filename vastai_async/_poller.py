"""The service-wide status poller: one listing per tick for every watched instance that is due.

Every race of a service shares one poller, so ``k`` candidates cost ``ceil(k / 25)`` list
requests per tick (the v1 list's page size), never one request per instance. Each instance has a
cadence in ticks: every tick while it loads, and a slower one once its SSH probes run (the
probes find the login; the status only has to catch a fatal state). Slowed instances are listed
at the ticks that are multiples of their cadence, together; a tick at which no watched instance
is due sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from vastai_async._logging import get_logger
from vastai_async.errors import VastAIError
from vastai_async.models import Instance

__all__ = ["InstancePoller"]

_log = get_logger(__name__)


class InstancePoller:
    """One status poller per service: each tick lists every due instance in few calls.

    The v1 list returns at most 25 rows a page, so ``k`` due instances cost ``ceil(k / 25)``
    list requests per tick, never one request per instance. A failed listing is never read as
    "no instances": the tick is skipped and waiters keep waiting.

    Attributes:
        ticks: listings made (ticks at which at least one instance was due and listed).
        wakes: ticks elapsed while something was watched, listed or not.
    """

    def __init__(
        self,
        list_by_ids: Callable[[list[int]], Awaitable[list[Instance]]],
        *,
        interval_s: float,
        logger: logging.Logger | None = None,
    ) -> None:
        self._list_by_ids = list_by_ids
        self._interval_s = interval_s
        self._log = logger or _log
        self._watched: dict[int, int] = {}
        self._every: dict[int, int] = {}  # instance id -> list it every this many ticks
        self._listed_wake: dict[int, int] = {}  # instance id -> wake of its last listing
        self._listed_gen: dict[int, int] = {}  # instance id -> generation of its last listing
        self._snapshots: dict[int, Instance] = {}
        self._generation = 0
        self._cond = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.wakes = 0

    @property
    def interval_s(self) -> float:
        """Seconds between two ticks."""
        return self._interval_s

    def watch(self, instance_id: int) -> None:
        """Start listing this instance every tick (reference counted)."""
        self._watched[instance_id] = self._watched.get(instance_id, 0) + 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="vastai-async-poller")
            self._task.add_done_callback(self._on_done)
        self._wake.set()

    def ticks_for(self, interval_s: float) -> int:
        """Whole ticks (at least one) closest to ``interval_s``."""
        return max(1, round(interval_s / self._interval_s)) if self._interval_s > 0 else 1

    def slow_down(self, instance_id: int, interval_s: float) -> int:
        """List this instance only about every ``interval_s`` from now on (whole ticks).

        Returns:
            The cadence in ticks (1 means every tick: ``interval_s`` is not above the tick).
        """
        every = self.ticks_for(interval_s)
        if instance_id in self._watched:
            self._every[instance_id] = every
        return every

    def every(self, instance_id: int) -> int:
        """This instance's cadence in ticks (1 unless slowed down)."""
        return self._every.get(instance_id, 1)

    def unwatch(self, instance_id: int) -> None:
        """Stop listing this instance once nobody watches it."""
        count = self._watched.get(instance_id, 0) - 1
        if count <= 0:
            self._watched.pop(instance_id, None)
            self._snapshots.pop(instance_id, None)
            self._every.pop(instance_id, None)
            self._listed_wake.pop(instance_id, None)
            self._listed_gen.pop(instance_id, None)
        else:
            self._watched[instance_id] = count

    async def wait(self, instance_id: int, seen: int) -> tuple[int, Instance | None]:
        """Wait for a listing of this instance newer than ``seen``; return it and the snapshot.

        ``None`` means the instance was not in that listing: too new to be listed yet, or gone.
        Callers decide which (gone once it had been seen).
        """
        async with self._cond:
            await self._cond.wait_for(lambda: self._listed_gen.get(instance_id, 0) > seen)
            return self._listed_gen[instance_id], self._snapshots.get(instance_id)

    def _due(self) -> list[int]:
        # A slowed instance is listed at ticks that are multiples of its cadence: slowed
        # instances of every race share those listings instead of each costing its own.
        due = []
        for instance_id in sorted(self._watched):
            every = self._every.get(instance_id, 1)
            last = self._listed_wake.get(instance_id)
            if last is None or every == 1 or (self.wakes % every == 0 and self.wakes > last):
                due.append(instance_id)
        return due

    def _on_done(self, task: asyncio.Task[None]) -> None:
        # A bug in a tick must not pass silently: waiters would only see their deadlines.
        if not task.cancelled() and task.exception() is not None:
            self._log.error("status poller stopped", exc_info=task.exception())

    async def close(self) -> None:
        """Stop polling (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if not self._watched:
                self._wake.clear()
                await self._wake.wait()
                next_at = loop.time()
                continue
            self.wakes += 1
            ids = self._due()
            if ids:
                await self._tick(ids)
            # Fixed-rate ticks: a slow listing (paced, retried) does not stretch the cadence;
            # a tick that overran its slot is followed at once, never by a burst.
            next_at = max(next_at + self._interval_s, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def _tick(self, ids: list[int]) -> None:
        try:
            instances = await self._list_by_ids(ids)
        except VastAIError as err:
            self._log.warning("status poll failed, will retry next tick: %s", err)
            return
        found = {inst.id: inst for inst in instances}
        self.ticks += 1
        async with self._cond:
            self._generation += 1
            for instance_id in ids:
                if instance_id not in self._watched:
                    continue  # unwatched while the listing was in flight
                snap = found.get(instance_id)
                if snap is not None:
                    self._snapshots[instance_id] = snap
                else:
                    self._snapshots.pop(instance_id, None)
                self._listed_wake[instance_id] = self.wakes
                self._listed_gen[instance_id] = self._generation
            self._cond.notify_all()
