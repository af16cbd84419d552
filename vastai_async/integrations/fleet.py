"""Fleet custody on Redis: workers that heartbeat, heal their registration and reap dead peers.

The protocol (docs/scale.md, "Fleet custody", says it for users):

- A worker's owner id is ``<deployment>-<host>-<pid>-w<6 hex>``; its provider writes it into
  every rental label, so the label alone says which deployment and worker own an instance.
- Every ``heartbeat_interval_s`` a worker sets its heartbeat key (TTL ``heartbeat_ttl_s``),
  re-adds itself to the deployment's members set and refreshes the instance leases it holds.
  So a Redis that lost its data (restart without persistence, flush, failover to an empty
  replica) knows every live worker again one interval later.
- Every worker ticks at a random point of each ``reap_interval_s`` (jitter: between half and
  all of it). A tick reaps only if it wins the deployment's reaper lock (``SET NX``, expiring
  after half an interval), so one worker at a time reaps, at most twice per interval.
- A reap lists the account's instances once. Candidates are the registered members and every
  owner named in an instance label with this deployment's worker shape. A candidate with a
  heartbeat is alive. One without is recorded as a suspect (first seen, Redis server time);
  it is dead once a suspect for half a reap interval if registered, for ``orphan_grace_s`` if
  found only by label (a live worker re-registers within one heartbeat interval).
- A dead owner's instances are destroyed under their leases: the reaper takes each instance's
  lease, lists again, and destroys those still labelled with the dead owner. An instance whose
  lease another worker holds (it is adopting it) is left alone, and its owner stays a suspect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
from redis.asyncio import Redis
from redis.exceptions import RedisError

from vastai_async._owners import this_host
from vastai_async.errors import InvalidRequestError, NotFoundError
from vastai_async.integrations.leases import REAPER_PREFIX, release_lease, take_lease
from vastai_async.provider import AsyncComputeProvider

__all__ = [
    "HEARTBEAT_PREFIX",
    "PeerReapPlan",
    "WorkerOptions",
    "beat",
    "deployment_of",
    "heartbeat_forever",
    "plan_peer_reap",
    "reap_dead_workers",
    "reap_if_turn",
    "reaper_forever",
    "vast_provider_factory",
    "worker_owner_id",
]

_log = logging.getLogger(__name__)

#: Redis key prefix of heartbeats (and of the deployment's other keys); the owner id follows.
HEARTBEAT_PREFIX = "vastai-async:heartbeat:"

# No "-" in a deployment name: the first "-" of an owner id ends it, so deployment "prod"
# never claims "prod-eu"'s workers.
_DEPLOYMENT_RE = re.compile(r"^[A-Za-z0-9_.]{1,24}$")
# A default SDK owner id ends in "-<pid>-<6 hex>"; a worker's in "-<pid>-w<6 hex>", so a plain
# SDK user on a host named like the deployment is never taken for a worker.
_WORKER_RE = re.compile(r"^(?P<deployment>[A-Za-z0-9_.]{1,24})-[A-Za-z0-9._-]+-\d+-w[0-9a-f]{6}$")
_MAX_OWNER = 64
_TERMINATE_CONCURRENCY = 8
# A registered suspect is dead on a later reap, about half a tick on (reaps are at least half a
# tick apart; a little less absorbs the Redis round trips between lock and clock).
_SECOND_LOOK = 0.45

ProviderFactory = Callable[[str], AsyncComputeProvider]


def vast_provider_factory(owner: str) -> AsyncComputeProvider:
    """The default factory: a :class:`~vastai_async.VastAIService` from ``VASTAI_*`` settings."""
    from vastai_async.config import get_vastai_config
    from vastai_async.service import VastAIService

    return VastAIService(config=get_vastai_config(owner=owner))


def _deployment(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _DEPLOYMENT_RE.match(value):
        raise InvalidRequestError(
            f"deployment must be 1-24 characters of [A-Za-z0-9_.] (no '-'), got {value!r}"
        )


def _positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None and attribute.default is None:
        return
    if isinstance(value, bool) or not (isinstance(value, int | float) and value > 0):
        raise InvalidRequestError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class WorkerOptions:
    """How a worker of a deployment identifies itself, heartbeats, reaps and gets a provider.

    Attributes:
        deployment: the name shared by all workers of one deployment (owner id prefix).
        provider_factory: builds the worker's provider (not yet entered) from its owner id.
        heartbeat_ttl_s: a worker silent for this long is dead: its machines may be reaped.
        heartbeat_interval_s: how often the heartbeat is refreshed (at most half the TTL).
        heartbeat_prefix: Redis key prefix of heartbeats and the deployment's other keys.
        reap_interval_s: the reaper tick (default: twice the heartbeat interval); each worker
            tries to reap once per tick, at a random point of its second half.
        orphan_grace_s: how long an owner found only in instance labels (not registered: Redis
            lost its data) must stay without a heartbeat before its machines are reaped
            (default: the heartbeat TTL).
        retry_transient_after_s: a job that failed on a transient API error (rate limit,
            connection, 5xx) raises ``arq.Retry`` to run again after this many seconds
            (doubling per try); ``None`` returns the failed result instead.
    """

    deployment: str = attrs.field(validator=_deployment)
    provider_factory: ProviderFactory = vast_provider_factory
    heartbeat_ttl_s: float = attrs.field(default=60.0, validator=_positive)
    heartbeat_interval_s: float = attrs.field(default=15.0, validator=_positive)
    heartbeat_prefix: str = HEARTBEAT_PREFIX
    reap_interval_s: float | None = attrs.field(default=None, validator=_positive)
    orphan_grace_s: float | None = attrs.field(default=None, validator=_positive)
    retry_transient_after_s: float | None = 2.0

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_interval_s * 2 > self.heartbeat_ttl_s:
            raise InvalidRequestError("heartbeat_interval_s must be at most half the TTL")

    @property
    def tick_s(self) -> float:
        """The reaper tick: ``reap_interval_s`` or twice the heartbeat interval."""
        return self.reap_interval_s or 2 * self.heartbeat_interval_s

    @property
    def grace_s(self) -> float:
        """How long an owner found only by label waits: ``orphan_grace_s`` or the TTL."""
        return self.orphan_grace_s or self.heartbeat_ttl_s

    @property
    def ttl_ms(self) -> int:
        """The heartbeat (and lease) TTL in milliseconds."""
        return max(1, int(self.heartbeat_ttl_s * 1000))

    @property
    def max_machine_life_after_death_s(self) -> float:
        """How long a registered worker's machines may outlive it: TTL + 2 ticks (+ the reap)."""
        return self.heartbeat_ttl_s + 2 * self.tick_s

    def heartbeat_key(self, owner: str) -> str:
        """The Redis key of ``owner``'s heartbeat."""
        return self.heartbeat_prefix + owner

    @property
    def members_key(self) -> str:
        """The Redis set of the owner ids registered as workers of this deployment."""
        return f"{self.heartbeat_prefix}members:{self.deployment}"

    @property
    def suspects_key(self) -> str:
        """The Redis hash owner id -> when a reaper first saw it without a heartbeat."""
        return f"{self.heartbeat_prefix}suspects:{self.deployment}"

    @property
    def reap_lock_key(self) -> str:
        """The deployment's reaper lock."""
        return f"{self.heartbeat_prefix}reaper:{self.deployment}"

    def lease_key(self, instance_id: int) -> str:
        """The lease key of an instance (see :mod:`vastai_async.integrations.leases`)."""
        return f"{self.heartbeat_prefix}lease:{self.deployment}:{instance_id}"


def worker_owner_id(deployment: str) -> str:
    """A fresh owner id ``<deployment>-<host>-<pid>-w<6 hex>``, at most 64 characters."""
    _deployment(None, attrs.fields(WorkerOptions).deployment, deployment)
    suffix = f"-{os.getpid()}-w{secrets.token_hex(3)}"
    host = this_host()[: _MAX_OWNER - len(deployment) - 1 - len(suffix)].strip("-") or "host"
    return f"{deployment}-{host}{suffix}"


def deployment_of(owner: str) -> str | None:
    """The deployment named by a worker owner id (``None`` for any other owner id)."""
    match = _WORKER_RE.match(owner)
    return match["deployment"] if match else None


@attrs.frozen(kw_only=True)
class PeerReapPlan:
    """What one reap decided about the deployment's other owners.

    Attributes:
        dead: owners whose machines are to be destroyed now.
        suspected: owners seen without a heartbeat for the first time (record when).
        cleared: suspects that are alive again or no longer candidates (forget them).
    """

    dead: tuple[str, ...] = ()
    suspected: tuple[str, ...] = ()
    cleared: tuple[str, ...] = ()


def plan_peer_reap(
    *,
    candidates: Iterable[str],
    registered: set[str],
    alive: set[str],
    suspects: Mapping[str, float],
    now: float,
    registered_grace_s: float,
    orphan_grace_s: float,
) -> PeerReapPlan:
    """Decide which owners are dead (a pure function: the reaper only carries it out).

    Args:
        candidates: the deployment's other owners (registered or named in a label).
        registered: those in the members set.
        alive: those with a heartbeat.
        suspects: owner -> when a reaper first saw it without a heartbeat.
        now: the current time on the same clock as ``suspects`` (Redis server time).
        registered_grace_s: how long a registered suspect waits (a second look).
        orphan_grace_s: how long a suspect found only by label waits.
    """
    dead: list[str] = []
    suspected: list[str] = []
    cleared: list[str] = []
    seen = set()
    for owner in sorted(set(candidates)):
        seen.add(owner)
        first = suspects.get(owner)
        if owner in alive:
            if first is not None:
                cleared.append(owner)
            continue
        if first is None:
            suspected.append(owner)
            continue
        grace = registered_grace_s if owner in registered else orphan_grace_s
        if now - first >= grace:
            dead.append(owner)
    cleared.extend(sorted(o for o in suspects if o not in seen))
    return PeerReapPlan(dead=tuple(dead), suspected=tuple(suspected), cleared=tuple(cleared))


async def reap_dead_workers(
    provider: AsyncComputeProvider, redis: Redis, options: WorkerOptions, *, own: str
) -> tuple[int, ...]:
    """One reap: destroy the instances of this deployment's dead workers (see the module doc).

    Never touches a live worker's instances, another deployment's, plain SDK or CLI use (their
    owner ids do not have the worker shape), kept instances, or an instance under another
    worker's lease.

    Returns:
        The instance ids destroyed.
    """
    # The Redis clock, read before the listing: reaps start at least half a tick apart (the
    # lock), so a suspect recorded by one reap is ripe at the next, however long listing takes.
    seconds, micros = await redis.time()
    now = seconds + micros / 1e6
    listed: dict[str, list[int]] = {}
    for summary in await provider.list_rentals(all_owners=True):
        if summary.owner and not summary.kept:
            listed.setdefault(summary.owner, []).append(summary.instance_id)
    members = {_text(m) for m in await redis.smembers(options.members_key)}  # type: ignore[misc]
    registered = {m for m in members if m.startswith(options.deployment + "-")}
    labelled = {o for o in listed if deployment_of(o) == options.deployment}
    candidates = sorted((registered | labelled) - {own})
    async with redis.pipeline(transaction=False) as pipe:
        for owner in candidates:
            pipe.exists(options.heartbeat_key(owner))
        pipe.hgetall(options.suspects_key)
        replies = await pipe.execute()
    alive = {owner for owner, n in zip(candidates, replies, strict=False) if n}
    suspects = {_text(k): float(_text(v)) for k, v in replies[-1].items()}
    plan = plan_peer_reap(
        candidates=candidates,
        registered=registered,
        alive=alive,
        suspects=suspects,
        now=now,
        registered_grace_s=options.tick_s * _SECOND_LOOK,
        orphan_grace_s=options.grace_s,
    )
    if plan.suspected or plan.cleared:
        async with redis.pipeline(transaction=False) as pipe:
            for owner in plan.suspected:
                _log.info("worker %s has no heartbeat: suspect", owner)
                pipe.hsetnx(options.suspects_key, owner, repr(now))
            if plan.cleared:
                pipe.hdel(options.suspects_key, *plan.cleared)
            await pipe.execute()
    if not plan.dead:
        return ()
    dead = {owner: listed.get(owner, []) for owner in plan.dead}
    destroyed, unfinished = await _destroy_under_leases(provider, redis, options, own, dead)
    done = [owner for owner in plan.dead if owner not in unfinished]
    if done:
        # Dead and without machines: forget it, so the set and the hash stay small.
        async with redis.pipeline(transaction=False) as pipe:
            pipe.srem(options.members_key, *done)
            pipe.hdel(options.suspects_key, *done)
            await pipe.execute()
    return destroyed


async def _destroy_under_leases(
    provider: AsyncComputeProvider,
    redis: Redis,
    options: WorkerOptions,
    own: str,
    dead: Mapping[str, list[int]],
) -> tuple[tuple[int, ...], set[str]]:
    """Destroy the dead owners' instances that no adopter holds; returns (destroyed, unfinished)."""
    holder = REAPER_PREFIX + own
    leased: list[tuple[str, int]] = []
    unfinished: set[str] = set()
    try:
        for owner, instance_ids in dead.items():
            for instance_id in instance_ids:
                if await take_lease(redis, options.lease_key(instance_id), holder, options.ttl_ms):
                    leased.append((owner, instance_id))
                else:
                    _log.info("instance %s of dead worker %s is leased: spared", instance_id, owner)
                    unfinished.add(owner)
        if not leased:
            return (), unfinished
        # Look again under the leases: whoever adopted it before we held the lease relabelled it.
        now_owner = {s.instance_id: s.owner for s in await provider.list_rentals(all_owners=True)}
        targets = [(o, i) for o, i in leased if now_owner.get(i) == o]
        gate = asyncio.Semaphore(_TERMINATE_CONCURRENCY)

        async def destroy(owner: str, instance_id: int) -> None:
            async with gate:
                _log.warning("reaping instance %s of dead worker %s", instance_id, owner)
                with contextlib.suppress(NotFoundError):  # gone already: what we wanted
                    await provider.terminate_instance(instance_id)

        results = await asyncio.gather(*(destroy(o, i) for o, i in targets), return_exceptions=True)
        destroyed: list[int] = []
        for (owner, instance_id), result in zip(targets, results, strict=True):
            if isinstance(result, BaseException):
                _log.error("reaping instance %s failed (%s); next tick again", instance_id, result)
                unfinished.add(owner)
            else:
                destroyed.append(instance_id)
        return tuple(destroyed), unfinished
    finally:
        for _, instance_id in leased:
            with contextlib.suppress(RedisError, OSError):
                await release_lease(redis, options.lease_key(instance_id), holder)


async def reap_if_turn(
    provider: AsyncComputeProvider, redis: Redis, options: WorkerOptions, *, own: str
) -> tuple[int, ...] | None:
    """Reap if this worker wins the reaper lock (held half a tick); ``None`` when it did not."""
    lock_ms = max(1, int(options.tick_s * 500))
    if not await redis.set(options.reap_lock_key, own, nx=True, px=lock_ms):
        return None
    return await reap_dead_workers(provider, redis, options, own=own)


async def reaper_forever(
    provider: AsyncComputeProvider,
    redis: Redis,
    options: WorkerOptions,
    *,
    own: str,
    rng: random.Random | None = None,
) -> None:
    """Tick until cancelled: in the second half of each tick, reap if it is our turn."""
    rng = rng or random.Random()
    while True:
        await asyncio.sleep(options.tick_s * rng.uniform(0.5, 1.0))
        try:
            destroyed = await reap_if_turn(provider, redis, options, own=own)
        except Exception:  # a reaper that stops leaves dead workers' machines billing
            _log.exception("worker %s: peer reaping failed; trying again next tick", own)
            continue
        if destroyed:
            _log.warning("worker %s reaped %d instances of dead workers", own, len(destroyed))


async def beat(
    redis: Redis, options: WorkerOptions, owner: str, value: str, held: set[str]
) -> bool:
    """One heartbeat: refresh the heartbeat, re-register, refresh held leases.

    Returns:
        ``False`` when the heartbeat had lapsed and was set again (Redis lost its data, or this
        worker stalled for longer than the TTL and its peers may have reaped its machines).
    """
    key = options.heartbeat_key(owner)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(key, value, px=options.ttl_ms, xx=True)
        pipe.sadd(options.members_key, owner)
        refreshed, _ = await pipe.execute()
    if not refreshed:
        await redis.set(key, value, px=options.ttl_ms)
    for lease in sorted(held):
        if not await take_lease(redis, lease, owner, options.ttl_ms):
            _log.error("lease %s was taken by another worker while this one held it", lease)
    return bool(refreshed)


async def heartbeat_forever(
    redis: Redis, options: WorkerOptions, owner: str, value: str, held: set[str]
) -> None:
    """Beat every ``heartbeat_interval_s`` until cancelled; Redis errors are logged, not fatal."""
    while True:
        await asyncio.sleep(options.heartbeat_interval_s)
        try:
            if not await beat(redis, options, owner, value, held):
                _log.error(
                    "heartbeat of %s had lapsed (Redis lost its data, or this worker stalled "
                    "past the TTL: its rentals may have been reaped); registered again",
                    owner,
                )
        except (RedisError, OSError) as err:
            _log.warning("heartbeat refresh failed (%s); retrying", err)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
