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

How a deployment stays clean (the Redis protocol is in :mod:`vastai_async.integrations.fleet`):

- Each worker gets its own owner id ``<deployment>-<host>-<pid>-w<random>``; its provider
  writes it into every rental label, so anyone can tell whose machine an instance is.
- Each worker beats: it keeps ``<heartbeat prefix><owner id>`` alive in Redis with a TTL and
  re-registers in the deployment's members set every beat (so it survives Redis losing data).
- Each worker ticks: one worker at a time (a short Redis lock) reaps the machines of the
  deployment's workers whose heartbeat expired, registered or found by label, and nothing else:
  not a live worker's machines, not another deployment's, not plain SDK use, not kept ones, not
  one another worker is adopting (it holds the instance's lease).
- At shutdown a worker destroys its own rentals, then unregisters and deletes its heartbeat.
- A job run looks first for what an earlier try of the same job left (arq retries after a
  worker died): a running machine is adopted under its lease, anything else destroyed, so two
  machines of one job are never alive at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
from typing import Any

import attrs
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job
from arq.worker import Retry, func
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vastai_async._owners import this_host
from vastai_async.errors import (
    APIConnectionError,
    InternalServerError,
    NotFoundError,
    RateLimitedError,
    VastAIError,
)
from vastai_async.integrations.asyncio_runner import run_job
from vastai_async.integrations.fleet import (
    HEARTBEAT_PREFIX,
    WorkerOptions,
    deployment_of,
    heartbeat_forever,
    reap_dead_workers,
    reap_if_turn,
    reaper_forever,
    vast_provider_factory,
    worker_owner_id,
)
from vastai_async.integrations.jobs import JobSpec
from vastai_async.integrations.leases import InstanceLeasedError, LeasedProvider
from vastai_async.provider import AsyncComputeProvider

__all__ = [
    "FUNCTION_NAME",
    "HEARTBEAT_PREFIX",
    "InstanceLeasedError",
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
#: Where the worker's state lives in arq's ``ctx``.
CTX_KEY = "vastai_async"

#: Failures worth another try: the account was busy or the API briefly unreachable.
_TRANSIENT = (RateLimitedError, APIConnectionError, InternalServerError)

#: How long a worker rides out a Redis outage (a restart): each command retries with backoff.
_REDIS_RETRIES = 40
_REDIS_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)


@attrs.define(kw_only=True)
class WorkerState:
    """What ``startup`` put in arq's ``ctx[CTX_KEY]``.

    Attributes:
        owner: this worker's owner id.
        provider: the shared, entered provider.
        options: the worker's options.
        reaped: instances this worker's startup destroyed (dead workers' leftovers).
        leases: the instance lease keys this worker holds (refreshed by its heartbeat).
        tasks: the heartbeat and reaper tasks.
    """

    owner: str
    provider: AsyncComputeProvider
    options: WorkerOptions
    reaped: tuple[int, ...] = ()
    leases: set[str] = attrs.Factory(set)
    tasks: list[asyncio.Task[None]] = attrs.Factory(list)


def _riding_out_outages(settings: RedisSettings | None) -> RedisSettings:
    """arq's Redis settings, retrying commands through a Redis restart unless told otherwise.

    Without retries, a Redis restart (the data-loss case the fleet survives) stops the arq
    worker: its poll fails, and arq's ``close()`` fails before our shutdown runs.
    """
    settings = settings or RedisSettings()
    if settings.retry is not None or settings.retry_on_error is not None:
        return settings
    return dataclasses.replace(
        settings,
        # OSError: a refused connect while Redis restarts is not a redis ConnectionError.
        retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
        retry=RedisRetry(_REDIS_BACKOFF, _REDIS_RETRIES),
    )


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
    settings["redis_settings"] = _riding_out_outages(redis_settings)
    settings.update(overrides)
    return settings


async def worker_startup(ctx: dict[str, Any], options: WorkerOptions) -> None:
    """arq ``on_startup``: owner id, heartbeat, one shared provider, a first reap, the reaper."""
    redis: ArqRedis = ctx["redis"]
    owner = worker_owner_id(options.deployment)
    key = options.heartbeat_key(owner)
    value = json.dumps({"owner": owner, "host": this_host(), "pid": os.getpid()})
    # Registered, with a heartbeat, before any machine carries this owner id.
    await redis.set(key, value, px=options.ttl_ms)
    await redis.sadd(options.members_key, owner)  # type: ignore[misc]
    state = WorkerState(owner=owner, provider=options.provider_factory(owner), options=options)
    state.tasks.append(
        asyncio.create_task(heartbeat_forever(redis, options, owner, value, state.leases))
    )
    try:
        await state.provider.__aenter__()
        state.reaped = await reap_if_turn(state.provider, redis, options, own=owner) or ()
    except BaseException:
        await _stop(state, redis, key)
        raise
    state.tasks.append(
        asyncio.create_task(reaper_forever(state.provider, redis, options, own=owner, rng=_rng()))
    )
    ctx[CTX_KEY] = state
    _log.info("worker %s started (reaped %d instances of dead workers)", owner, len(state.reaped))


def _rng() -> random.Random:
    # Each worker its own jitter: seeded per process so two workers never tick in step.
    return random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "big"))


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
        # The heartbeat goes anyway: a peer's reaper destroys what is left.
        _log.error("worker %s: shutdown teardown failed: %s", state.owner, err)
    else:
        with contextlib.suppress(RedisError, OSError):
            await redis.srem(options.members_key, state.owner)  # type: ignore[misc]
    finally:
        await _stop(state, redis, options.heartbeat_key(state.owner))


async def _stop(state: WorkerState, redis: ArqRedis, key: str) -> None:
    for task in state.tasks:
        task.cancel()
    for task in state.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    try:
        await state.provider.close()
    finally:
        with contextlib.suppress(RedisError, OSError):
            await redis.delete(key)


async def run_gpu_job(ctx: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The arq job: run a :class:`JobSpec` payload on this worker's provider.

    What an earlier try of the same job left is adopted (under the instance's lease, held until
    the job ends) or destroyed first, so a retry never rents a second machine while the first
    one lives, and a peer's reaper never destroys the machine being adopted.

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
    leased = LeasedProvider(
        state.provider,
        ctx["redis"],
        lease_key=state.options.lease_key,
        holder=state.owner,
        ttl_ms=state.options.ttl_ms,
        held=state.leases,
    )
    try:
        result = await run_job(leased, spec, adopt_previous=True)
    finally:
        # The machine is destroyed (or its teardown failed and it carries our label).
        with contextlib.suppress(RedisError, OSError):
            await leased.release_all()
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
