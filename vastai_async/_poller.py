"""The service-wide status poller: one listing per tick for every watched instance.

Every race of a service shares one poller, so ``k`` candidates cost ``ceil(k / 25)`` list
requests per tick (the v1 list's page size), never one request per instance.
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
    """One status poller per service: each tick lists every watched instance in few calls.

    The v1 list returns at most 25 rows a page, so ``k`` watched instances cost
    ``ceil(k / 25)`` list requests per tick, never one request per instance. A failed listing is
    never read as "no instances": the tick is skipped and waiters keep waiting.
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
        self._snapshots: dict[int, Instance] = {}
        self._generation = 0
        self._cond = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0

    def watch(self, instance_id: int) -> None:
        """Start listing this instance every tick (reference counted)."""
        self._watched[instance_id] = self._watched.get(instance_id, 0) + 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="vastai-async-poller")
            self._task.add_done_callback(self._on_done)
        self._wake.set()

    def unwatch(self, instance_id: int) -> None:
        """Stop listing this instance once nobody watches it."""
        count = self._watched.get(instance_id, 0) - 1
        if count <= 0:
            self._watched.pop(instance_id, None)
            self._snapshots.pop(instance_id, None)
        else:
            self._watched[instance_id] = count

    async def wait(self, instance_id: int, seen: int) -> tuple[int, Instance | None]:
        """Wait for a tick newer than ``seen``; return it and the instance's snapshot.

        ``None`` means the instance was not in that tick's listing: too new to be listed yet,
        or gone. Callers decide which (gone once it had been seen).
        """
        async with self._cond:
            await self._cond.wait_for(lambda: self._generation > seen)
            return self._generation, self._snapshots.get(instance_id)

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
        while True:
            ids = sorted(self._watched)
            if not ids:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                instances = await self._list_by_ids(ids)
            except VastAIError as err:
                self._log.warning("status poll failed, will retry next tick: %s", err)
            else:
                found = {inst.id: inst for inst in instances}
                for instance_id in ids:
                    snap = found.get(instance_id)
                    if snap is not None:
                        self._snapshots[instance_id] = snap
                    else:
                        self._snapshots.pop(instance_id, None)
                self.ticks += 1
                async with self._cond:
                    self._generation += 1
                    self._cond.notify_all()
            await asyncio.sleep(self._interval_s)
