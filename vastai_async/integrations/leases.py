"""Instance leases in Redis: who may adopt or destroy an instance another owner left.

A worker that is about to adopt an instance (an arq retry taking over what an earlier try left)
or a reaper that is about to destroy a dead worker's instance first takes the instance's lease:
one Redis key per instance, set only when absent or already held by the same holder
(``SET NX PX`` in effect, re-entrant). Whoever holds it may act on the instance; everybody else
leaves it alone. The adopter holds its lease as long as its job uses the machine (its heartbeat
refreshes it) and releases it when the job ends; a holder that dies loses it after the TTL.

:class:`LeasedProvider` wraps a job's provider so the job runner's ``adopt_previous_try`` goes
through this protocol without knowing about it: instances leased by someone else are not listed
for the job, adopting takes the lease first, destroying a leftover takes it too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis

from vastai_async.errors import VastAIError
from vastai_async.provider import AsyncComputeProvider, ReapReport, RentalSummary

if TYPE_CHECKING:
    from vastai_async.rental import Rental

__all__ = [
    "REAPER_PREFIX",
    "InstanceLeasedError",
    "LeasedProvider",
    "lease_holders",
    "release_lease",
    "take_lease",
]

_log = logging.getLogger(__name__)

#: A reaper's lease holder is this prefix and its worker's owner id.
REAPER_PREFIX = "reaper:"

# Set when absent or ours (re-entrant, and the refresh of a held lease); 1 when we hold it.
_TAKE = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Delete only when ours: a lease that expired and was taken by another is not ours to drop.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class InstanceLeasedError(VastAIError):
    """Another worker holds the instance's lease (it is adopting or destroying it)."""

    def __init__(self, message: str, *, instance_id: int, holder: str | None) -> None:
        super().__init__(message)
        self.instance_id = instance_id
        self.holder = holder


async def take_lease(redis: Redis, key: str, holder: str, ttl_ms: int) -> bool:
    """Take (or refresh) the lease ``key`` for ``holder``; ``False`` when another holds it."""
    return bool(await redis.eval(_TAKE, 1, key, holder, str(ttl_ms)))  # type: ignore[misc]


async def release_lease(redis: Redis, key: str, holder: str) -> None:
    """Drop the lease ``key`` if ``holder`` still holds it."""
    await redis.eval(_RELEASE, 1, key, holder)  # type: ignore[misc]


async def lease_holders(redis: Redis, keys: Sequence[str]) -> list[str | None]:
    """The holder of each lease key (``None`` when free), in order."""
    if not keys:
        return []
    values = await redis.mget(list(keys))
    return [v.decode() if isinstance(v, bytes) else v for v in values]


class LeasedProvider(AsyncComputeProvider):
    """A job's view of its worker's provider: adopting and destroying others' machines take leases.

    Args:
        inner: the worker's shared, entered provider (not closed by this wrapper).
        redis: where the leases live.
        lease_key: the lease key of an instance id.
        holder: the holder written into leases (the worker's owner id).
        ttl_ms: lease TTL; the worker's heartbeat refreshes every lease in ``held``.
        held: the worker's set of lease keys it holds; this job adds to and removes from it.
    """

    def __init__(
        self,
        inner: AsyncComputeProvider,
        redis: Redis,
        *,
        lease_key: Callable[[int], str],
        holder: str,
        ttl_ms: int,
        held: set[str],
    ) -> None:
        self.inner = inner
        self.redis = redis
        self.lease_key = lease_key
        self.holder = holder
        self.ttl_ms = ttl_ms
        self.held = held
        self.mine: set[str] = set()  # this job's leases, released by release_all()

    async def close(self) -> None:
        """Nothing to close: the worker owns the inner provider."""

    async def release_all(self) -> None:
        """Release every lease this job took (its machine is destroyed or no longer used)."""
        for key in sorted(self.mine):
            self.held.discard(key)
            await release_lease(self.redis, key, self.holder)
        self.mine.clear()

    async def _take(self, instance_id: int) -> bool:
        key = self.lease_key(instance_id)
        if not await take_lease(self.redis, key, self.holder, self.ttl_ms):
            return False
        self.mine.add(key)
        self.held.add(key)
        return True

    async def _drop(self, instance_id: int) -> None:
        key = self.lease_key(instance_id)
        self.mine.discard(key)
        self.held.discard(key)
        await release_lease(self.redis, key, self.holder)

    async def list_rentals(
        self, *, job_id: str | None = None, owner: str | None = None, all_owners: bool = False
    ) -> list[RentalSummary]:
        """The inner listing without the instances someone else holds a lease on.

        While a reaper holds the lease of a listed instance (it is destroying it), this waits
        for the reaper to finish (at most one lease TTL) and lists again: a retry then never
        rents while its job's previous machine is still alive.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.ttl_ms / 1000
        while True:
            found = await self.inner.list_rentals(job_id=job_id, owner=owner, all_owners=all_owners)
            keys = [self.lease_key(s.instance_id) for s in found]
            holders = await lease_holders(self.redis, keys)
            reaping = [
                s.instance_id
                for s, h in zip(found, holders, strict=True)
                if h is not None and h.startswith(REAPER_PREFIX)
            ]
            if not reaping or loop.time() >= give_up:
                break
            _log.info("instances %s are being reaped: waiting for the reaper", reaping)
            await asyncio.sleep(min(0.5, self.ttl_ms / 20_000))
        visible = []
        for summary, holder in zip(found, holders, strict=True):
            if holder is None or holder == self.holder:
                visible.append(summary)
            else:
                _log.info(
                    "instance %s is leased by %s: leaving it alone", summary.instance_id, holder
                )
        return visible

    async def _while_reaped(self, key: str) -> None:
        """Wait (at most one lease TTL) while a reaper holds ``key``."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.ttl_ms / 1000
        while loop.time() < give_up:
            [holder] = await lease_holders(self.redis, [key])
            if holder is None or not holder.startswith(REAPER_PREFIX):
                return
            await asyncio.sleep(min(0.5, self.ttl_ms / 20_000))

    async def adopt(self, instance_id: int) -> Rental:
        """Take the instance's lease, then adopt it; the lease stays held until released.

        Raises:
            InstanceLeasedError: another worker holds its lease (when a reaper, once it is
                done or one lease TTL passed).
        """
        if not await self._take(instance_id):
            key = self.lease_key(instance_id)
            [holder] = await lease_holders(self.redis, [key])
            if holder is not None and holder.startswith(REAPER_PREFIX):
                # Let the reaper finish: the caller then finds the machine gone, not dying.
                await self._while_reaped(key)
            raise InstanceLeasedError(
                f"instance {instance_id} is leased by {holder}",
                instance_id=instance_id,
                holder=holder,
            )
        try:
            return await self.inner.adopt(instance_id)
        except BaseException:
            await _quietly(self._drop(instance_id))
            raise

    async def terminate_instance(self, instance_id: int) -> bool:
        """Destroy it under its lease; ``False`` (untouched) when another worker holds the lease."""
        key = self.lease_key(instance_id)
        if key in self.mine:
            return await self.inner.terminate_instance(instance_id)
        if not await self._take(instance_id):
            _log.info("instance %s is leased by another worker: not destroying it", instance_id)
            return False
        try:
            return await self.inner.terminate_instance(instance_id)
        finally:
            await _quietly(self._drop(instance_id))

    async def search_offers(self, **kwargs: Any) -> list[Any]:
        """As the inner provider."""
        return await self.inner.search_offers(**kwargs)

    async def provision_instance(self, **kwargs: Any) -> Rental:
        """As the inner provider."""
        return await self.inner.provision_instance(**kwargs)

    async def get_rental(self, instance_id: int) -> Rental:
        """As the inner provider."""
        return await self.inner.get_rental(instance_id)

    async def reap(self, **kwargs: Any) -> ReapReport:
        """As the inner provider."""
        return await self.inner.reap(**kwargs)


async def _quietly(step: Any) -> None:
    try:
        await step
    except Exception as err:  # a lease left behind expires after its TTL
        _log.warning("lease release failed (%s); it expires by itself", err)
