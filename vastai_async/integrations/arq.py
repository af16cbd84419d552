"""Run GPU jobs from an arq queue (Redis), with many workers on many machines, leaking nothing.

Needs the ``arq`` extra. Built only on :class:`~vastai_async.AsyncComputeProvider`.

```python
# worker.py: `python worker.py` on each machine
from arq.connections import RedisSettings
from arq.worker import run_worker
from vastai_async.integrations.arq import WorkerOptions, worker_settings

run_worker(worker_settings(WorkerOptions(deployment="render"),
                           redis_settings=RedisSettings(host="redis.internal")))

# producer
await enqueue_gpu_job(redis, JobSpec(job_id="frame-0042", commands=["render 42"]))
```

How a deployment stays clean:

- Each worker gets its own owner id ``<deployment>-<host>-<pid>-<random>``; its provider writes
  it into every rental label, so anyone can tell whose machine an instance is.
- Each worker keeps ``<heartbeat prefix><owner id>`` alive in Redis with a TTL, refreshed by a
  background task. A worker that dies (SIGKILL, OOM, lost host) stops refreshing it.
- Each worker registers its owner id in a Redis set of the deployment's workers.
- At startup a worker reaps the instances of registered workers of *its deployment* whose
  heartbeat expired, and nothing else: not a live worker's machines, not another deployment's,
  not plain SDK use, not kept ones.
- At shutdown a worker destroys its own rentals, then unregisters and deletes its heartbeat.
- A job run looks first for what an earlier try of the same job left (arq retries after a
  worker died): a running machine is adopted, anything else destroyed, so two machines of one
  job are never alive at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
from collections.abc import Callable
from typing import Any

import attrs
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job
from arq.worker import Retry, func
from redis.exceptions import RedisError

from vastai_async._owners import this_host
from vastai_async.errors import (
    APIConnectionError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    RateLimitedError,
    VastAIError,
)
from vastai_async.integrations.asyncio_runner import run_job
from vastai_async.integrations.jobs import JobSpec
from vastai_async.provider import AsyncComputeProvider

__all__ = [
    "FUNCTION_NAME",
    "HEARTBEAT_PREFIX",
    "WorkerOptions",
    "WorkerState",
    "deployment_of",
    "enqueue_gpu_job",
    "reap_dead_workers",
    "run_gpu_job",
    "vast_provider_factory",
    "worker_owner_id",
    "worker_settings",
]

_log = logging.getLogger(__name__)

#: The arq function name jobs are enqueued under.
FUNCTION_NAME = "vastai_run_job"
#: Redis key prefix of worker heartbeats; the owner id follows.
HEARTBEAT_PREFIX = "vastai-async:heartbeat:"
#: Where the worker's state lives in arq's ``ctx``.
CTX_KEY = "vastai_async"

# No "-" in a deployment name: the first "-" of an owner id ends it, so deployment "prod"
# never claims "prod-eu"'s workers.
_DEPLOYMENT_RE = re.compile(r"^[A-Za-z0-9_.]{1,24}$")
_MAX_OWNER = 64

ProviderFactory = Callable[[str], AsyncComputeProvider]

#: Failures worth another try: the account was busy or the API briefly unreachable.
_TRANSIENT = (RateLimitedError, APIConnectionError, InternalServerError)


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


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (isinstance(value, int | float) and value > 0):
        raise InvalidRequestError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class WorkerOptions:
    """How a worker of a deployment identifies itself, keeps its heartbeat and gets a provider.

    Attributes:
        deployment: the name shared by all workers of one deployment (owner id prefix).
        provider_factory: builds the worker's provider (not yet entered) from its owner id.
        heartbeat_ttl_s: a worker silent for this long is dead: its machines may be reaped.
        heartbeat_interval_s: how often the heartbeat is refreshed (well below the TTL).
        heartbeat_prefix: Redis key prefix of heartbeats.
        retry_transient_after_s: a job that failed on a transient API error (rate limit,
            connection, 5xx) raises ``arq.Retry`` to run again after this many seconds
            (doubling per try); ``None`` returns the failed result instead.
    """

    deployment: str = attrs.field(validator=_deployment)
    provider_factory: ProviderFactory = vast_provider_factory
    heartbeat_ttl_s: float = attrs.field(default=60.0, validator=_positive)
    heartbeat_interval_s: float = attrs.field(default=15.0, validator=_positive)
    heartbeat_prefix: str = HEARTBEAT_PREFIX
    retry_transient_after_s: float | None = 2.0

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_interval_s * 2 > self.heartbeat_ttl_s:
            raise InvalidRequestError("heartbeat_interval_s must be at most half the TTL")

    def heartbeat_key(self, owner: str) -> str:
        """The Redis key of ``owner``'s heartbeat."""
        return self.heartbeat_prefix + owner

    @property
    def members_key(self) -> str:
        """The Redis set of the owner ids that started as workers of this deployment."""
        return f"{self.heartbeat_prefix}members:{self.deployment}"


@attrs.define(kw_only=True)
class WorkerState:
    """What ``startup`` put in arq's ``ctx[CTX_KEY]``.

    Attributes:
        owner: this worker's owner id.
        provider: the shared, entered provider.
        reaped: instances this worker's startup destroyed (dead workers' leftovers).
    """

    owner: str
    provider: AsyncComputeProvider
    options: WorkerOptions
    reaped: tuple[int, ...] = ()
    heartbeat: asyncio.Task[None] | None = None


def worker_owner_id(deployment: str) -> str:
    """A fresh owner id ``<deployment>-<host>-<pid>-<6 hex>``, at most 64 characters."""
    _deployment(None, attrs.fields(WorkerOptions).deployment, deployment)
    suffix = f"-{os.getpid()}-{secrets.token_hex(3)}"
    host = this_host()[: _MAX_OWNER - len(deployment) - 1 - len(suffix)]
    return f"{deployment}-{host}{suffix}"


def deployment_of(owner: str) -> str | None:
    """The deployment named by a worker owner id (``None`` for other owner ids)."""
    head, sep, _ = owner.partition("-")
    return head if sep and _DEPLOYMENT_RE.match(head) else None


async def reap_dead_workers(
    provider: AsyncComputeProvider, redis: ArqRedis, options: WorkerOptions, *, own: str
) -> tuple[int, ...]:
    """Destroy the instances of this deployment's workers whose heartbeat expired.

    An owner is considered only when its id starts with ``<deployment>-`` *and* it registered
    as a worker of this deployment in Redis (so a plain SDK user on a host that happens to be
    named like the deployment is never taken for a worker). Each dead one is reaped with
    ``provider.reap(owner=..., dry_run=True)`` (which spares kept instances and this
    provider's live races) and only that owner's instances are destroyed, never an instance
    ``reap`` would pick for another reason.

    Returns:
        The instance ids destroyed.
    """
    summaries = await provider.list_rentals(all_owners=True)
    members = {_text(m) for m in await redis.smembers(options.members_key)}  # type: ignore[misc]
    listed = {s.owner for s in summaries if s.owner}
    destroyed: list[int] = []
    for owner in sorted(members - {own}):
        if deployment_of(owner) != options.deployment:
            continue
        if await redis.exists(options.heartbeat_key(owner)):
            continue  # alive: its machines are its own business
        if owner in listed:
            theirs = {s.instance_id for s in summaries if s.owner == owner}
            report = await provider.reap(owner=owner, dry_run=True)
            for instance_id, _ in report.destroyed:
                if instance_id not in theirs:
                    continue
                _log.warning("reaping instance %s of dead worker %s", instance_id, owner)
                with contextlib.suppress(NotFoundError):
                    await provider.terminate_instance(instance_id)
                destroyed.append(instance_id)
        # Dead and (now) without machines: forget it, so the set stays small.
        await redis.srem(options.members_key, owner)  # type: ignore[misc]
    return tuple(destroyed)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _beat(redis: ArqRedis, key: str, value: str, options: WorkerOptions) -> None:
    ttl_ms = int(options.heartbeat_ttl_s * 1000)
    while True:
        await asyncio.sleep(options.heartbeat_interval_s)
        try:
            if not await redis.set(key, value, px=ttl_ms, xx=True):
                # Our heartbeat expired: other workers may already have reaped our machines.
                _log.error("heartbeat %s had expired; this worker's rentals may be gone", key)
                await redis.set(key, value, px=ttl_ms)
        except (RedisError, OSError) as err:
            _log.warning("heartbeat refresh failed (%s); retrying", err)


def worker_settings(
    options: WorkerOptions, *, redis_settings: RedisSettings | None = None, **overrides: Any
) -> dict[str, Any]:
    """arq worker settings running :func:`run_gpu_job` with this deployment's hygiene.

    Pass the result to ``arq.worker.run_worker`` (or ``Worker(**settings)``).

    Args:
        options: deployment, heartbeat and provider.
        redis_settings: where Redis is (arq's default: localhost:6379).
        **overrides: any other ``arq.worker.Worker`` argument (``max_jobs``, ``job_timeout``,
            ``queue_name`` ...). Keep ``job_timeout`` above your jobs' ``timeout_s``.

    Returns:
        A settings dict for arq.
    """

    async def startup(ctx: dict[str, Any]) -> None:
        await worker_startup(ctx, options)

    async def shutdown(ctx: dict[str, Any]) -> None:
        await worker_shutdown(ctx, options)

    settings: dict[str, Any] = {
        "functions": [func(run_gpu_job, name=FUNCTION_NAME)],
        "on_startup": startup,
        "on_shutdown": shutdown,
    }
    if redis_settings is not None:
        settings["redis_settings"] = redis_settings
    settings.update(overrides)
    return settings


async def worker_startup(ctx: dict[str, Any], options: WorkerOptions) -> None:
    """arq ``on_startup``: owner id, heartbeat, one shared provider, reap dead workers."""
    redis: ArqRedis = ctx["redis"]
    owner = worker_owner_id(options.deployment)
    key = options.heartbeat_key(owner)
    value = json.dumps({"owner": owner, "host": this_host(), "pid": os.getpid()})
    # Registered, with a heartbeat, before any machine carries this owner id.
    await redis.set(key, value, px=int(options.heartbeat_ttl_s * 1000))
    await redis.sadd(options.members_key, owner)  # type: ignore[misc]
    state = WorkerState(owner=owner, provider=options.provider_factory(owner), options=options)
    state.heartbeat = asyncio.create_task(_beat(redis, key, value, options))
    try:
        await state.provider.__aenter__()
        state.reaped = await reap_dead_workers(state.provider, redis, options, own=owner)
    except BaseException:
        await _stop(state, redis, key)
        raise
    ctx[CTX_KEY] = state
    _log.info("worker %s started (reaped %d instances of dead workers)", owner, len(state.reaped))


async def worker_shutdown(ctx: dict[str, Any], options: WorkerOptions) -> None:
    """arq ``on_shutdown``: destroy this worker's rentals, close the provider, end the heartbeat."""
    state: WorkerState | None = ctx.pop(CTX_KEY, None)
    if state is None:
        return
    redis: ArqRedis = ctx["redis"]
    try:
        for summary in await state.provider.list_rentals():  # this owner's only
            if summary.kept:
                continue
            with contextlib.suppress(NotFoundError):
                await state.provider.terminate_instance(summary.instance_id)
    except VastAIError as err:
        # The heartbeat goes anyway: the next worker's startup reaps what is left.
        _log.error("worker %s: shutdown teardown failed: %s", state.owner, err)
    else:
        with contextlib.suppress(RedisError, OSError):
            await redis.srem(options.members_key, state.owner)  # type: ignore[misc]
    finally:
        await _stop(state, redis, options.heartbeat_key(state.owner))


async def _stop(state: WorkerState, redis: ArqRedis, key: str) -> None:
    if state.heartbeat is not None:
        state.heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state.heartbeat
    try:
        await state.provider.close()
    finally:
        with contextlib.suppress(RedisError, OSError):
            await redis.delete(key)


async def run_gpu_job(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The arq job: run a :class:`JobSpec` payload on this worker's provider.

    What an earlier try of the same job left is adopted or destroyed first, so a retry never
    rents a second machine while the first one lives.

    Returns:
        :meth:`JobResult.to_payload` plus ``owner`` and ``job_try`` (failures included: the
        job's ``ok`` says how it went).

    Raises:
        arq.worker.Retry: the job failed on a transient API error (rate limit, connection,
            5xx) and ``retry_transient_after_s`` is set; arq runs it again later.
    """
    state: WorkerState = ctx[CTX_KEY]
    spec = JobSpec.from_payload(payload)
    job_try = ctx.get("job_try", 1)
    if job_try > 1:
        _log.info("job %s: try %d", spec.job_id, job_try)
    result = await run_job(state.provider, spec, adopt_previous=True)
    _log.info("job %s: ok=%s in %.2f s", spec.job_id, result.ok, result.times.total_s)
    defer = state.options.retry_transient_after_s
    if defer is not None and isinstance(result.error, _TRANSIENT):
        # Its machine is destroyed already; the next try adopts whatever a teardown missed.
        raise Retry(defer=defer * 2 ** (job_try - 1))
    payload_out = result.to_payload()
    payload_out["owner"] = state.owner
    payload_out["job_try"] = job_try
    return payload_out


async def enqueue_gpu_job(redis: ArqRedis, spec: JobSpec, **enqueue_kwargs: Any) -> Job | None:
    """Enqueue ``spec`` under its own job id (arq refuses a duplicate id: ``None``).

    Args:
        redis: an ``arq.create_pool(...)`` pool.
        spec: the job; its ``job_id`` becomes the arq job id.
        **enqueue_kwargs: ``_queue_name``, ``_defer_by`` ... as ``ArqRedis.enqueue_job`` takes.
    """
    return await redis.enqueue_job(
        FUNCTION_NAME, spec.to_payload(), _job_id=spec.job_id, **enqueue_kwargs
    )
