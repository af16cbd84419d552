"""The chaos engine shared by the reliability tests and ``python -m tests.reliability.chaos``.

One *scenario* is a fresh sandbox, a seeded choice of faults from :data:`FAULTS`, one
provision (optionally cut by a cancellation at the Nth API request), ``true`` run on the
winner, and its termination. The outcome records what the caller saw and what the sandbox's
ledger says is still alive: success or a typed ``VastAIError`` is fine, a leak, an untyped
exception, an unhandled task exception or a 429 we did not inject is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from vastai_async import ProvisioningError, Rental, VastAIError, VastAIService
from vastai_async.config import VastAIConfig, get_vastai_config
from vastai_async.models import Offer
from vastai_async.sandbox import HTTPFault, LifecycleFault, Sandbox, SSHFaults
from vastai_async.timings import Timings

__all__ = [
    "FAULTS",
    "LoopWatch",
    "Outcome",
    "Scenario",
    "Tripwire",
    "chaos_timings",
    "draw_scenario",
    "pick_offers",
    "run_scenario",
    "sandbox_config",
    "unexpected_429s",
]

TIME_SCALE = 0.02
#: Wall seconds of a ``slow`` answer; the scenario's request timeout is shorter.
SLOW_DELAY_S = 1.6
REQUEST_TIMEOUT_S = 0.8

Installer = Callable[[Sandbox, list[Offer]], None]


def _ssh(offer_index: int, **faults: Any) -> Installer:
    def install(sb: Sandbox, offers: list[Offer]) -> None:
        # Epoch fields are relative here: "refuse auth for 1 s from now".
        if "refuse_auth_for_s" in faults:
            extra = dict(faults)
            extra["refuse_auth_until"] = time.time() + extra.pop("refuse_auth_for_s")
            sb.set_ssh_faults(offers[offer_index].id, SSHFaults(**extra))
        else:
            sb.set_ssh_faults(offers[offer_index].id, SSHFaults(**faults))

    return install


def _http(**kw: Any) -> Installer:
    def install(sb: Sandbox, offers: list[Offer]) -> None:
        sb.add_fault(HTTPFault(**kw))

    return install


def _http_offer(offer_index: int, **kw: Any) -> Installer:
    def install(sb: Sandbox, offers: list[Offer]) -> None:
        sb.add_fault(HTTPFault(target=offers[offer_index].id, **kw))

    return install


def _life(offer_index: int, **kw: Any) -> Installer:
    def install(sb: Sandbox, offers: list[Offer]) -> None:
        sb.set_lifecycle_fault(offers[offer_index].id, LifecycleFault(**kw))

    return install


def _take(offer_index: int) -> Installer:
    def install(sb: Sandbox, offers: list[Offer]) -> None:
        sb.take_offer(offers[offer_index].id)

    return install


_CREATE = "PUT /api/v0/asks/{id}/"
_LIST = "GET /api/v1/instances/"
_DELETE_ONE = "DELETE /api/v0/instances/{id}/"
_DELETE_MANY = "DELETE /api/v0/instances/"

#: Every fault the sandbox can inject, by name. Offer-bound faults hit the first candidate.
FAULTS: dict[str, Installer] = {
    "rate_limit_storm": _http(kind="rate_limit", times=8, probability=0.5),
    "search_quota_on_create": _http(kind="rate_limit", route=_CREATE, times=2),
    "server_503": _http(kind="status", status=503, times=4, probability=0.5),
    "server_500": _http(kind="status", status=500, times=2, probability=0.3),
    "html_502": _http(kind="html", times=2, probability=0.5),
    "connection_reset": _http(kind="reset", times=3, probability=0.4),
    "slow_answer": _http(kind="slow", delay_s=SLOW_DELAY_S, times=2, probability=0.5),
    # The first candidate's create times out while another candidate wins: regression for a
    # create task abandoned by its cancelled candidate ("Task exception was never retrieved").
    "slow_create_loses": _http_offer(0, kind="slow", route=_CREATE, delay_s=SLOW_DELAY_S),
    "malformed_list": _http(kind="malformed", route=_LIST, times=1),
    "offer_taken_at_create": _http(kind="taken", route=_CREATE, times=1),
    "offer_vanished": _take(0),
    "lost_create_answer": _http(kind="lost_answer", route=_CREATE, times=1),
    "destroy_503": _http(kind="status", status=503, route=_DELETE_ONE, times=2),
    "bulk_destroy_503": _http(kind="status", status=503, route=_DELETE_MANY, times=2),
    "destroy_500": _http(kind="status", status=500, route=_DELETE_ONE, times=1),
    "bulk_destroy_500": _http(kind="status", status=500, route=_DELETE_MANY, times=1),
    "stuck_loading": _life(0, stuck_loading=True),
    "oci_error": _life(0, oci_error=True),
    # Both strike as the instance would start running, before its SSH accepts a login: the
    # race must see the fatal status and move on, whatever the machine's speed. A host that
    # drops after the win is test_fault_matrix's winner_drops_after_the_win test.
    "offline": _life(0, offline_after_s=0.0),
    "outbid": _life(0, outbid_after_s=0.0),
    "ssh_refuse": _ssh(0, refuse=True),
    "ssh_hang_before_banner": _ssh(0, hang_before_banner=True),
    "ssh_refuse_auth_for_a_while": _ssh(0, refuse_auth_for_s=0.8),
    "ssh_direct_firewalled": _ssh(0, firewall_direct=True),
}


def chaos_timings(base: Timings) -> Timings:
    """Sandbox-scaled timings, shortened so a fault costs at most a couple of wall seconds."""
    return base.replace(
        overall_s=12.0,
        loading_s=2.0,
        ssh_s=2.0,
        connect_timeout_s=0.5,
        login_timeout_s=0.5,
        request_timeout_s=REQUEST_TIMEOUT_S,
        teardown_budget_s=8.0,
    )


def sandbox_config(sb: Sandbox, key_path: Path, state_dir: Path) -> VastAIConfig:
    """A config for ``sb`` as the ``vastai_config`` fixture builds it (sandbox clock)."""
    config = get_vastai_config(
        api_key=sb.api_key,
        api_base_url=sb.url,
        ssh_key_path=key_path,
        state_dir=state_dir,
        max_bid_usd_per_hour=50.0,
        min_vram_gb=0,
        preferred_gpus=(),
    )
    return config.scaled(sb.time_scale)


def pick_offers(offers: list[Offer], n: int) -> list[Offer]:
    """The first ``n`` offers on distinct machines."""
    picked: list[Offer] = []
    machines: set[int | None] = set()
    for offer in offers:
        if offer.machine_id not in machines:
            machines.add(offer.machine_id)
            picked.append(offer)
        if len(picked) == n:
            break
    return picked


def unexpected_429s(sb: Sandbox) -> int:
    """429 answers the sandbox's own rate limiter gave (not injected by a fault).

    The SDK paces every route at the sandbox's (scaled) thresholds, so the limiter itself
    must never have to refuse a request.
    """
    answered = sum(1 for r in sb.requests if r.status == 429)
    injected = sum(1 for _, kind in sb.faults.log if kind in ("rate_limit", "search_quota"))
    return answered - injected


class LoopWatch:
    """Records what the event loop reports as unhandled (task exceptions, pending tasks destroyed).

    Use as a context manager inside the running loop; :meth:`finish` collects garbage so a
    destroyed pending task is reported before it is read.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def __enter__(self) -> LoopWatch:
        self._loop = asyncio.get_running_loop()
        self._previous = self._loop.get_exception_handler()
        self._loop.set_exception_handler(self._record)
        return self

    def _record(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        self.errors.append(f"{context.get('message')}: {exc!r}")

    def finish(self) -> list[str]:
        """Collect garbage (so destroyed tasks report) and return the errors recorded."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        self.errors.extend(f"warning: {w.message}" for w in caught)
        return list(self.errors)

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.set_exception_handler(self._previous)


class Tripwire(list[Any]):
    """A stand-in for the sandbox's request record that calls ``action`` at given request counts.

    Installed as ``sandbox.state.requests``; the sandbox appends every request it receives, so
    ``action`` runs at exact request counts without any sleeping.
    """

    def __init__(self, items: list[Any], at: Sequence[int], action: Callable[[], object]) -> None:
        super().__init__(items)
        self._at = sorted(at)
        self._action = action
        self.fired = 0

    def disarm(self) -> None:
        """Drop the cut points not reached yet."""
        self._at.clear()

    def append(self, item: Any) -> None:
        super().append(item)
        while self._at and len(self) >= self._at[0]:
            self._at.pop(0)
            self.fired += 1
            self._action()


@attrs.frozen(kw_only=True)
class Scenario:
    """One seeded chaos run.

    Attributes:
        seed: seeds the sandbox and every draw.
        faults: names from :data:`FAULTS`.
        fan_out: candidates in flight.
        candidates: offers given to the race.
        cancel_at_request: cancel the provision (or the terminate) at this API request count.
        boots: simulated boot latency of each candidate.
    """

    seed: int
    faults: tuple[str, ...]
    fan_out: int
    candidates: int
    cancel_at_request: int | None = None
    boots: tuple[float, ...] = ()


def draw_scenario(seed: int, *, cancel: bool = False) -> Scenario:
    """A seeded random combination of one to three faults (and a cut point if ``cancel``)."""
    rng = random.Random(f"chaos:{seed}")
    faults = tuple(sorted(rng.sample(sorted(FAULTS), rng.randint(1, 3))))
    candidates = rng.randint(2, 4)
    return Scenario(
        seed=seed,
        faults=faults,
        fan_out=rng.randint(1, candidates),
        candidates=candidates,
        cancel_at_request=rng.randint(2, 28) if cancel else None,
        boots=tuple(rng.uniform(5.0, 40.0) for _ in range(candidates)),
    )


Kind = Literal["success", "typed_failure", "cancelled", "untyped_failure"]


@attrs.frozen(kw_only=True)
class Outcome:
    """What one scenario ended as.

    Attributes:
        scenario: what ran.
        kind: ``success`` (``true`` ran on the rental), ``typed_failure`` (a ``VastAIError``),
            ``cancelled`` (the cut point fired) or ``untyped_failure`` (anything else: a bug).
        error: the exception's type and text, if any.
        leaked: instance ids the sandbox still has after everything ended.
        loop_errors: unhandled task exceptions and destroyed pending tasks.
        unexpected_429: rate-limit answers the sandbox's own limiter gave (see docs: loop
            jitter at the scaled intervals; survived by retries, so counted, not failed).
        attempts_without_reason: a ``ProvisioningError`` record with an empty reason.
        pacing_excess: requests beyond the paced rate in the worst window (see
            :func:`pacing_excess`).
        reasons: the per-offer reasons of a ``ProvisioningError``.
        cut_phase: where the first cancellation landed: ``provision`` or ``exit`` (the
            rental's ``__aexit__``, i.e. its terminate).
    """

    scenario: Scenario
    kind: Kind
    error: str | None
    leaked: tuple[int, ...]
    loop_errors: tuple[str, ...]
    unexpected_429: int
    attempts_without_reason: int = 0
    pacing_excess: int = 0
    reasons: tuple[str, ...] = ()
    cut_phase: str | None = None

    @property
    def ok(self) -> bool:
        """No leak, no untyped failure, nothing unhandled, pacing kept."""
        return (
            not self.leaked
            and self.kind != "untyped_failure"
            and not self.loop_errors
            and self.pacing_excess == 0
            and self.attempts_without_reason == 0
        )


async def run_scenario(scenario: Scenario, key_path: Path, state_dir: Path) -> Outcome:
    """Run one scenario on a fresh sandbox and report what happened (never raises for SDK errors).

    Args:
        scenario: faults, fan-out, cut point.
        key_path: an SSH private key (mode 0600) with ``.pub`` beside it.
        state_dir: a folder for pinned host keys.
    """
    with LoopWatch() as watch:
        # The emulated shell: scenarios time faults in tens of milliseconds, and what they test
        # is the race, not the commands (a fork per probe under load only adds jitter).
        sandbox = Sandbox(seed=scenario.seed, offers=12, time_scale=TIME_SCALE, shell="emulated")  # noqa: S604
        async with sandbox as sb:
            config = sandbox_config(sb, key_path, state_dir)
            timings = chaos_timings(config.timings)
            kind: Kind
            error: str | None = None
            without_reason = 0
            reasons: tuple[str, ...] = ()
            phase: list[str] = []
            async with VastAIService(config=config, timings=timings) as service:
                offers = pick_offers(await service.search_offers(), scenario.candidates)
                for offer, boot in zip(offers, scenario.boots, strict=False):
                    sb.set_boot_latency(offer.id, boot)
                for name in scenario.faults:
                    FAULTS[name](sb, offers)
                bid = 20.0 if "outbid" in scenario.faults else None
                try:
                    kind = await _provision_and_use(service, sb, scenario, offers, bid, phase)
                except asyncio.CancelledError:
                    kind = "cancelled"
                    # Absorb the extra cut points' cancel requests so the run can go on.
                    task = asyncio.current_task()
                    while task is not None and task.uncancel() > 0:
                        pass
                except VastAIError as err:
                    kind = "typed_failure"
                    error = f"{type(err).__name__}: {err}"
                    if isinstance(err, ProvisioningError):
                        without_reason = sum(1 for a in err.attempts if not a.reason)
                        reasons = tuple(str(a.reason) for a in err.attempts)
                except Exception as err:  # the bug class this harness exists to find
                    kind = "untyped_failure"
                    error = f"{type(err).__name__}: {err}"
                finally:
                    if isinstance(sb.state.requests, Tripwire):
                        sb.state.requests.disarm()
            # Closing the service finished its late sweeps. A request the sandbox still holds
            # (a ``slow`` fault) lands within SLOW_DELAY_S of its arrival: wait until the last
            # one has, so a create carried out after everything returned is seen.
            if any(k == "slow" for _, k in sb.faults.log):
                landed_by = max(r.at for r in sb.requests) + SLOW_DELAY_S + 0.05
                await asyncio.sleep(max(0.0, landed_by - time.time()))
            # What a user does after a typed failure: nothing. The ledger must be clean.
            leaked = tuple(sorted(sb.alive_instance_ids()))
            if leaked:
                # Clean the sandbox so the next run starts fresh; the leak is reported.
                sb.faults.clear()
                async with VastAIService(config=config) as cleaner:
                    with contextlib.suppress(VastAIError):
                        await cleaner.client.destroy_instances(list(leaked))
            late_429 = unexpected_429s(sb)
            excess = pacing_excess(sb, config.pacing)
        loop_errors = tuple(watch.finish())
    return Outcome(
        scenario=scenario,
        kind=kind,
        error=error,
        leaked=leaked,
        loop_errors=loop_errors,
        unexpected_429=late_429,
        attempts_without_reason=without_reason,
        pacing_excess=sum(excess.values()),
        reasons=reasons,
        cut_phase=phase[1] if len(phase) > 1 else None,
    )


async def _provision_and_use(
    service: VastAIService,
    sb: Sandbox,
    scenario: Scenario,
    offers: list[Offer],
    bid: float | None,
    phase: list[str],
) -> Kind:
    # phase[0] is where we are; phase[1] where the first cancellation landed.
    phase.append("provision")
    task = asyncio.current_task()
    assert task is not None
    if scenario.cancel_at_request is not None:
        first = len(sb.requests) + scenario.cancel_at_request

        def cut() -> None:
            if len(phase) == 1:
                phase.append(phase[0])
            task.cancel()

        # Cut again 2 and 5 requests later: a cancellation during the teardown itself.
        sb.state.requests = Tripwire(sb.state.requests, (first, first + 2, first + 5), cut)
    rental: Rental = await service.provision_instance(
        job_id=f"chaos-{scenario.seed}",
        offers=offers,
        fan_out=scenario.fan_out,
        bid_usd_per_hour=bid,
    )
    async with rental:
        result = await rental.run("true")
        if result.exit_status != 0:
            raise AssertionError(f"`true` exited {result.exit_status} on the winner")
        phase[0] = "exit"
    return "success"


#: Window of the pacing check, in route intervals, and the requests forgiven in it. Arrival
#: stamps are taken inside the sandbox's handlers, which share the event loop with the SDK and
#: the SSH servers: a few milliseconds of scheduling jitter is the size of a scaled interval.
PACING_WINDOW = 10
PACING_SLACK = 2


def pacing_excess(sb: Sandbox, pacing: Any) -> dict[str, int]:
    """Per route, how many requests beyond the paced rate arrived in the worst window.

    For each request on a route with interval ``I``, the requests arriving within
    ``PACING_WINDOW * I`` from it must number at most ``PACING_WINDOW + PACING_SLACK``.

    Args:
        sb: the sandbox (its recorded requests carry arrival times).
        pacing: the client's :class:`~vastai_async.pacing.Pacing` (already scaled).
    """
    arrivals: dict[str, list[float]] = {}
    for record in sb.requests:
        arrivals.setdefault(record.route, []).append(record.at)
    excess: dict[str, int] = {}
    for route, times in arrivals.items():
        method, _, template = route.partition(" ")
        window = PACING_WINDOW * pacing.interval(method, template)
        times.sort()
        j = 0
        worst = 0
        for i, start in enumerate(times):
            j = max(j, i)
            while j < len(times) and times[j] < start + window:
                j += 1
            worst = max(worst, (j - i) - (PACING_WINDOW + PACING_SLACK))
        if worst > 0:
            excess[route] = worst
    return excess
