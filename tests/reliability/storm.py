"""Load storms for the chaos run: 100+ concurrent provisions in one service, under faults.

One storm is a fresh sandbox with a large market, one service, and ``provisions`` concurrent
``provision_instance`` calls (fan-out 1 to 3) while creates are slow, answer late (carried out at
once, answered later: a listing shows the instance first) or lose their answers; a
seeded third of the calls is cancelled at seeded request counts, and in some storms the service
is closed with races still in flight. Afterwards, every instance still alive must be named by a
``TeardownError`` the calls or ``close()`` raised, by its id or by its label (a create still in
flight when the error was raised; ideally nothing is alive), and every failure must
be typed. An instance whose create lost its answer and landed after custody's watch window is
named by the WARNING custody logs (its label and the reap command): it counts as named too, and
is reported separately.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import attrs

from tests.reliability._harness import REQUEST_TIMEOUT_S, sandbox_config
from vastai_async import Rental, TeardownError, VastAIError, VastAIService
from vastai_async.sandbox import HTTPFault, Sandbox

__all__ = ["StormOutcome", "run_storm"]

_CREATE = "PUT /api/v0/asks/{id}/"
#: Below the lost-create window (2 x the request timeout after the timeout): a create held this
#: long is a lost answer on our side, carried out while custody still sweeps its label.
_SLOW_S = REQUEST_TIMEOUT_S * 1.5
#: Within the request timeout: the answer arrives, after the instance is already listed.
_LATE_S = REQUEST_TIMEOUT_S * 0.5


@attrs.frozen(kw_only=True)
class StormOutcome:
    """What one storm ended as."""

    seed: int
    provisions: int
    closed_in_flight: bool
    success: int
    typed: int
    cancelled: int
    untyped: tuple[str, ...]
    leaked: tuple[int, ...]
    unnamed: tuple[int, ...]
    warned: tuple[int, ...] = ()
    #: Named by a TeardownError's labels only (its create was in flight when it was raised).
    by_label: tuple[int, ...] = ()
    #: Instances custody's label sweep saw while their create's answer was still on the way.
    reclaimed: int = 0

    @property
    def ok(self) -> bool:
        """No untyped failure and nothing alive that no error named."""
        return not self.untyped and not self.unnamed


class _Cuts(list[Any]):
    """The sandbox's request record: cancels a task at its seeded request count."""

    def __init__(self, items: list[Any], cuts: dict[int, asyncio.Task[Any]]) -> None:
        super().__init__(items)
        self.cuts = cuts

    def append(self, item: Any) -> None:
        super().append(item)
        task = self.cuts.pop(len(self), None)
        if task is not None:
            task.cancel()


class _Warnings(logging.Handler):
    """Collects the labels custody's WARNINGs name (a lost create's window closed)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.labels: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if "lost its answer" in record.getMessage() and isinstance(args, tuple) and args:
            self.labels.add(str(args[0]))


async def run_storm(seed: int, key_path: Path, state_dir: Path) -> StormOutcome:
    """Run one seeded storm; never raises for SDK errors (they are counted)."""
    warnings = _Warnings()
    logger = logging.getLogger("vastai_async")
    logger.addHandler(warnings)
    try:
        return await _storm(seed, key_path, state_dir, warnings)
    finally:
        logger.removeHandler(warnings)


async def _storm(seed: int, key_path: Path, state_dir: Path, warnings: _Warnings) -> StormOutcome:
    rng = random.Random(f"storm:{seed}")
    provisions = rng.randint(100, 150)
    closed_in_flight = rng.random() < 0.3
    # The emulated shell: a probe's `true` forks no process (hundreds of probes per storm).
    async with Sandbox(seed=seed, offers=600, time_scale=0.02, shell="emulated") as sb:  # noqa: S604
        config = sandbox_config(sb, key_path, state_dir)
        timings = config.timings.replace(request_timeout_s=REQUEST_TIMEOUT_S, overall_s=30.0)
        sb.add_fault(HTTPFault(kind="slow", route=_CREATE, delay_s=_SLOW_S, probability=0.1,
                               times=None))  # fmt: skip
        sb.add_fault(HTTPFault(kind="lost_answer", route=_CREATE, probability=0.05, times=None))
        sb.add_fault(HTTPFault(kind="late_answer", route=_CREATE, delay_s=_LATE_S, probability=0.1,
                               times=None))  # fmt: skip
        results: list[Any] = []
        close_error: BaseException | None = None
        try:
            events: dict[str, list[str]] = {}

            def record(event: Any) -> None:
                events.setdefault(event.job_id, []).append(f"{time.time():.3f} {event!r}")

            async with VastAIService(config=config, timings=timings, on_event=record) as vast:
                offers = await vast.search_offers()
                tasks = [
                    asyncio.create_task(_one(vast, f"s{seed}-{i}", offers, rng.randint(1, 3)))
                    for i in range(provisions)
                ]
                base = len(sb.requests)
                cuts = {
                    base + rng.randint(5, 4 * provisions): task
                    for task in tasks
                    if rng.random() < 1 / 3
                }
                sb.state.requests = _Cuts(sb.state.requests, cuts)
                if closed_in_flight:
                    # Leave the block while a seeded part of the calls still runs.
                    done_target = rng.randint(0, provisions // 2)
                    while sum(t.done() for t in tasks) < done_target:
                        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.wait(tasks)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        except TeardownError as err:  # close() could not drain: it names what is left
            close_error = err
            results = await asyncio.gather(*tasks, return_exceptions=True)
        if isinstance(sb.state.requests, _Cuts):
            sb.state.requests.cuts.clear()
        # A create the sandbox still holds lands within _SLOW_S of its arrival.
        landed_by = max((r.at for r in sb.requests), default=0.0) + _SLOW_S + 0.05
        await asyncio.sleep(max(0.0, landed_by - time.time()))
        alive = set(sb.alive_instance_ids())
        errors = [r for r in [*results, close_error] if isinstance(r, TeardownError)]
        # An error names an instance by id, or by label while its create was still in flight.
        named_labels = {label for err in errors for label in err.labels}
        by_id = {i for err in errors for i in err.instance_ids}
        by_label = {i for i in alive - by_id if sb.instance(i).label in named_labels}
        named = by_id | by_label
        warned = {i for i in alive - named if sb.instance(i).label in warnings.labels}
        if alive - named - warned and (dump := os.environ.get("STORM_DEBUG")):
            jobs = {f"s{seed}-{i}": r for i, r in enumerate(results)}
            _dump(Path(dump), sb, alive - named - warned, events, jobs)
        if alive:
            sb.faults.clear()
            async with VastAIService(config=config) as cleaner:
                await cleaner.client.destroy_instances(sorted(alive))
    return StormOutcome(
        seed=seed,
        provisions=provisions,
        closed_in_flight=closed_in_flight,
        success=sum(r == "success" for r in results),
        typed=sum(isinstance(r, VastAIError) for r in results),
        cancelled=sum(isinstance(r, asyncio.CancelledError) for r in results),
        untyped=tuple(
            f"{type(r).__name__}: {r}"
            for r in results
            if isinstance(r, BaseException)
            and not isinstance(r, VastAIError | asyncio.CancelledError)
        ),
        leaked=tuple(sorted(alive)),
        unnamed=tuple(sorted(alive - named - warned)),
        warned=tuple(sorted(warned)),
        by_label=tuple(sorted(by_label)),
        # A counter kept for this run, not public API (absent from older custody code).
        reclaimed=getattr(vast._custody, "reclaimed", -1),
    )


async def _one(vast: VastAIService, job_id: str, offers: list[Any], fan_out: int) -> str:
    rental: Rental = await vast.provision_instance(job_id=job_id, offers=offers, fan_out=fan_out)
    async with rental:
        pass
    return "success"


def _dump(
    path: Path,
    sb: Sandbox,
    ids: set[int],
    events: dict[str, list[str]],
    results: dict[str, Any],
) -> None:
    # Diagnostics for an unnamed leak: the instance's log, label, and every request about it.
    with path.open("a") as out:
        for iid in sorted(ids):
            inst = sb.instance(iid)
            label = inst.label or ""
            related = [
                {"route": r.route, "path": r.path, "at": r.at, "status": r.status,
                 "body": r.body[:300]}
                for r in sb.requests
                if str(iid) in r.path or str(iid) in r.body or str(iid) in json.dumps(r.query)
                or (label and label in r.body) or (label and label in json.dumps(r.query))
            ]  # fmt: skip
            job = label.split(":")[2] if label.count(":") >= 3 else ""
            record = {
                "id": iid,
                "label": label,
                "offer": inst.offer_id,
                "log": inst.log,
                "result": repr(results.get(job)),
                "events": events.get(job, []),
            }
            out.write(json.dumps({**record, "requests": related}, default=str) + "\n")
