"""Run many GPU jobs from plain asyncio, bounded in concurrency, never leaking a machine.

Built only on :class:`~vastai_async.AsyncComputeProvider` and :class:`~vastai_async.Rental`
(``run`` / ``put`` / ``get`` / ``terminate``), so it does not depend on Vast specifics.

```python
async with VastAIService() as vast:
    jobs = [JobSpec(job_id=f"render-{i}", commands=["nvidia-smi -L"]) for i in range(100)]
    results = await run_jobs(vast, jobs, concurrency=10)
```

Each job: provision (a race of ``fan_out`` candidates) -> upload -> run commands over SSH ->
download -> destroy the machine. A failed job is reported in its :class:`JobResult` and does not
touch the others unless ``fail_fast`` asks; its machine is destroyed whatever happens, including
a per-job timeout or the caller's cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from vastai_async._teardown import run_uncancellable
from vastai_async.errors import (
    InvalidRequestError,
    NotFoundError,
    SSHCommandError,
    VastAIError,
)
from vastai_async.events import CandidateChosen, Event, InstanceCreated, InstanceDestroyed
from vastai_async.integrations.jobs import (
    CommandOutput,
    JobCancelledError,
    JobFailedError,
    JobResult,
    JobSpec,
    JobTimeoutError,
    JobTimes,
)
from vastai_async.provider import AsyncComputeProvider

if TYPE_CHECKING:
    from vastai_async.rental import Rental

__all__ = ["adopt_previous_try", "run_job", "run_jobs"]

_log = logging.getLogger(__name__)

#: Status a previous try's machine must have to be worth adopting rather than destroying.
_USABLE_STATUS = "running"

ResultCallback = Callable[[JobResult], Awaitable[None] | None]


class _SpendMeter:
    """Estimates a job's spend from its race events: price x time alive, per instance."""

    def __init__(self) -> None:
        self._price_of_offer: dict[int, float] = {}
        # instance id -> (price, created at, destroyed at or None)
        self._alive: dict[int, tuple[float, float, float | None]] = {}

    def on_event(self, event: Event) -> None:
        if isinstance(event, CandidateChosen) and event.dph_total is not None:
            self._price_of_offer[event.offer_id] = event.dph_total
        elif isinstance(event, InstanceCreated):
            price = self._price_of_offer.get(event.offer_id, 0.0)
            self._alive.setdefault(event.instance_id, (price, event.at, None))
        elif isinstance(event, InstanceDestroyed) and event.instance_id in self._alive:
            price, created, _ = self._alive[event.instance_id]
            self._alive[event.instance_id] = (price, created, event.at)

    def hold(self, instance_id: int, price: float | None, since: float) -> None:
        """Count a machine obtained without a race (adopted) from ``since``."""
        self._alive[instance_id] = (price or 0.0, since, None)

    def total_usd(self, now: float) -> float:
        total = 0.0
        for price, start, end in self._alive.values():
            total += price * max(0.0, (end if end is not None else now) - start) / 3600.0
        return total


async def adopt_previous_try(
    provider: AsyncComputeProvider, job_id: str, *, logger: logging.Logger | None = None
) -> Rental | None:
    """Take over what an earlier try of ``job_id`` left, so a retry never runs two machines.

    Every instance labelled with this job (any owner; kept rentals excepted) is looked at: the
    first running one is adopted (relabelled to this provider's owner, SSH login proven); every
    other one, and one whose adoption fails, is destroyed.

    Args:
        provider: the provider (its ``list_rentals``, ``adopt`` and ``terminate_instance``).
        job_id: the job.
        logger: where to say what was found.

    Returns:
        The adopted rental, or ``None`` when nothing usable was left.

    Raises:
        VastAIError: listing or destroying failed (an adopted rental is destroyed first).
    """
    log = logger or _log
    found = [s for s in await provider.list_rentals(job_id=job_id, all_owners=True) if not s.kept]
    # Running ones first: the one worth adopting.
    found.sort(key=lambda s: (s.status != _USABLE_STATUS, s.instance_id))
    rental: Rental | None = None
    try:
        for summary in found:
            if rental is None and summary.status == _USABLE_STATUS:
                try:
                    rental = await provider.adopt(summary.instance_id)
                except VastAIError as err:
                    log.warning(
                        "job %s: cannot adopt instance %s left by an earlier try (%s); "
                        "destroying it",
                        job_id,
                        summary.instance_id,
                        err,
                    )
                except BaseException:
                    # Cancelled mid-adoption: it may carry our label now; nobody else will end it.
                    await run_uncancellable(_destroy(provider, summary.instance_id))
                    raise
                else:
                    log.info("job %s: adopted instance %s", job_id, summary.instance_id)
                    continue
            log.info(
                "job %s: destroying instance %s (%s) left by an earlier try",
                job_id,
                summary.instance_id,
                summary.status,
            )
            await run_uncancellable(_destroy(provider, summary.instance_id))
    except BaseException:
        if rental is not None:
            await run_uncancellable(rental.terminate())
        raise
    return rental


async def _destroy(provider: AsyncComputeProvider, instance_id: int) -> None:
    with contextlib.suppress(NotFoundError):  # already gone: what we wanted
        await provider.terminate_instance(instance_id)


async def run_job(
    provider: AsyncComputeProvider,
    spec: JobSpec,
    *,
    adopt_previous: bool = False,
    logger: logging.Logger | None = None,
) -> JobResult:
    """Run one job and destroy its machine, whatever happens.

    Args:
        provider: an entered provider.
        spec: what to run.
        adopt_previous: first take over what an earlier try of this job left
            (:func:`adopt_previous_try`): needed when the same job may be retried elsewhere.
        logger: where progress goes.

    Returns:
        The result; failures are in ``result.error``, never raised.

    Raises:
        asyncio.CancelledError: when cancelled (after the machine was destroyed).
    """
    log = logger or _log
    meter = _SpendMeter()
    started = time.time()
    rental: Rental | None = None
    adopted = False
    provisioned_at: float | None = None
    outputs: list[CommandOutput] = []
    error: VastAIError | None = None
    deadline = asyncio.timeout(spec.timeout_s)
    try:
        try:
            async with deadline:
                if adopt_previous:
                    rental = await adopt_previous_try(provider, spec.job_id, logger=log)
                if rental is not None:
                    adopted = True
                    meter.hold(rental.instance_id, rental.info.dph_total, time.time())
                else:
                    offers = await provider.search_offers(
                        min_vram_gb=spec.min_vram_gb,
                        gpus=spec.gpus,
                        max_usd_per_hour=spec.max_usd_per_hour,
                    )
                    rental = await provider.provision_instance(
                        job_id=spec.job_id,
                        offers=offers,
                        image=spec.image,
                        extra_env=spec.extra_env or None,
                        fan_out=spec.fan_out,
                        max_spend_usd=spec.max_spend_usd,
                        on_event=meter.on_event,
                    )
                provisioned_at = time.time()
                await _work(rental, spec, outputs)
        except TimeoutError as err:
            if not deadline.expired():
                raise  # not ours: handled below as unexpected
            error = JobTimeoutError(
                f"job {spec.job_id} did not finish within {spec.timeout_s:g} s", job_id=spec.job_id
            )
            error.__cause__ = err
    except VastAIError as err:
        error = err
    except Exception as err:
        error = JobFailedError(
            f"job {spec.job_id} failed: {type(err).__name__}: {err}", job_id=spec.job_id
        )
        error.__cause__ = err
    finally:
        if rental is not None:
            teardown_error = await _teardown(rental)
            if teardown_error is not None and error is None:
                error = teardown_error
    if error is not None:
        log.warning("job %s failed: %s", spec.job_id, error)
    finished = time.time()
    return JobResult(
        job_id=spec.job_id,
        ok=error is None,
        instance_id=None if rental is None else rental.instance_id,
        adopted=adopted,
        outputs=tuple(outputs),
        error=error,
        times=JobTimes(started_at=started, provisioned_at=provisioned_at, finished_at=finished),
        dph_total=None if rental is None else rental.info.dph_total,
        estimated_spend_usd=meter.total_usd(finished),
    )


async def _work(rental: Rental, spec: JobSpec, outputs: list[CommandOutput]) -> None:
    for local, remote in spec.uploads:
        await rental.put(local, remote)
    for command in spec.commands:
        res = await rental.run(command, timeout=spec.command_timeout_s)
        out = CommandOutput(
            command=command, exit_status=res.exit_status, stdout=res.stdout, stderr=res.stderr
        )
        outputs.append(out)
        if spec.check and not out.ok:
            raise SSHCommandError(
                f"command #{len(outputs)} of job {spec.job_id} exited {out.exit_status}",
                exit_status=out.exit_status,
                stderr=out.stderr,
                instance_id=rental.instance_id,
            )
    for remote, local in spec.downloads:
        await rental.get(remote, local)


async def _teardown(rental: Rental) -> VastAIError | None:
    """Destroy the machine even if cancelled meanwhile; a failure is returned, not raised."""
    try:
        await run_uncancellable(rental.terminate())
    except NotFoundError:
        return None
    except VastAIError as err:
        # Not raised: that would replace a cancellation or the job's own error. The
        # instance still carries our label, so ``reap`` finds it.
        _log.error("job %s: teardown of instance %s failed: %s", rental.info.job_id, rental, err)
        return err
    return None


class _FailFast(Exception):
    """Raised inside the task group to cancel the other jobs after a failure."""


async def run_jobs(
    provider: AsyncComputeProvider,
    jobs: Iterable[JobSpec],
    *,
    concurrency: int = 10,
    fail_fast: bool = False,
    adopt_previous: bool = False,
    on_result: ResultCallback | None = None,
    logger: logging.Logger | None = None,
) -> list[JobResult]:
    """Run jobs with at most ``concurrency`` at once; results in the order of ``jobs``.

    Args:
        provider: an entered provider, shared by all jobs (one poller, one pacing per process).
        jobs: the jobs; ids must be unique.
        concurrency: jobs in flight at once (each races ``fan_out`` candidates).
        fail_fast: after the first failed job, cancel the running ones (their machines are
            destroyed) and skip the rest; they are reported with a :class:`JobCancelledError`.
        adopt_previous: each job first takes over what an earlier try left
            (:func:`adopt_previous_try`), e.g. when re-running a batch after a crash.
        on_result: called with each result as it completes (sync or async).
        logger: where progress goes.

    Returns:
        One :class:`JobResult` per job, in the order given.

    Raises:
        InvalidRequestError: duplicate job ids or a bad ``concurrency`` (before anything runs).
        asyncio.CancelledError: when cancelled (after every running job destroyed its machine).
    """
    specs = list(jobs)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidRequestError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    ids = [s.job_id for s in specs]
    if len(set(ids)) != len(ids):
        raise InvalidRequestError("job ids must be unique within a batch")
    slots = asyncio.Semaphore(concurrency)
    results: list[JobResult | None] = [None] * len(specs)

    async def one(index: int, spec: JobSpec) -> None:
        async with slots:
            result = await run_job(provider, spec, adopt_previous=adopt_previous, logger=logger)
        results[index] = result
        if on_result is not None:
            try:
                maybe = on_result(result)
                if maybe is not None:
                    await maybe
            except Exception:
                # A reporting bug must not cancel the other jobs (the task group would).
                (logger or _log).exception("on_result failed for job %s; ignored", spec.job_id)
        if fail_fast and not result.ok:
            raise _FailFast(spec.job_id)

    try:
        async with asyncio.TaskGroup() as group:
            for index, spec in enumerate(specs):
                group.create_task(one(index, spec))
    except* _FailFast:
        pass  # the group cancelled the others; they are reported below as cancelled
    now = time.time()
    return [
        result
        if result is not None
        else JobResult(
            job_id=spec.job_id,
            ok=False,
            instance_id=None,
            adopted=False,
            outputs=(),
            error=JobCancelledError(
                f"job {spec.job_id} cancelled after another job failed", job_id=spec.job_id
            ),
            times=JobTimes(started_at=now, provisioned_at=None, finished_at=now),
            dph_total=None,
            estimated_spend_usd=0.0,
        )
        for spec, result in zip(specs, results, strict=True)
    ]
