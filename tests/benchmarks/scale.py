"""Many concurrent provisions in one process against one standalone sandbox process.

Run as its own process (``python -m tests.benchmarks.scale``) so its peak RSS is the SDK's
alone. It starts ``python -m vastai_async sandbox`` (its SSH servers then do not share our event
loop), searches once, gives each provision a disjoint slice of the offers, runs them all at once
on one :class:`VastAIService`, terminates the winners and lists what is left. Every HTTP request
is traced (aiohttp ``TraceConfig``) to count requests and 429s and to check the per-route gaps
against the pacing table. A ticker task measures event-loop lag. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp

from tests.benchmarks.scenario import percentile
from vastai_async.errors import TeardownError, VastAIError
from vastai_async.events import Event, WinnerChosen
from vastai_async.models import Offer
from vastai_async.pacing import route_key
from vastai_async.rental import Rental
from vastai_async.sandbox_link import read_sandbox_record, sandbox_config
from vastai_async.service import VastAIService

__all__ = ["run_scale"]

_NUMBER = re.compile(r"/\d+(?=/|$)")


class RequestTrace:
    """Every request's route, start time and status, from aiohttp's tracing hooks."""

    def __init__(self) -> None:
        self.starts: dict[str, list[float]] = {}
        self.statuses: dict[int, int] = {}
        self.route_statuses: dict[str, int] = {}
        self.config = aiohttp.TraceConfig()
        self.config.on_request_start.append(self._start)
        self.config.on_request_end.append(self._end)

    async def _start(self, session: Any, ctx: SimpleNamespace, params: Any) -> None:
        template = _NUMBER.sub("/{id}", params.url.path)
        route = route_key(params.method, template)
        self.starts.setdefault(route, []).append(time.monotonic())

    async def _end(self, session: Any, ctx: SimpleNamespace, params: Any) -> None:
        status = params.response.status
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 400:
            where = f"{status} {params.method} {_NUMBER.sub('/{id}', params.url.path)}"
            self.route_statuses[where] = self.route_statuses.get(where, 0) + 1

    def too_close(self, intervals: dict[str, float], tolerance: float = 0.1) -> dict[str, int]:
        """Per route, how many request starts came sooner than the pacing interval allows."""
        out: dict[str, int] = {}
        for route, starts in self.starts.items():
            floor = intervals.get(route, 0.0) * (1 - tolerance)
            ordered = sorted(starts)
            n = sum(1 for a, b in itertools.pairwise(ordered) if b - a < floor)
            if n:
                out[route] = n
        return out


async def _ticker(lags: list[float], stop: asyncio.Event, period: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(period)
        lags.append(loop.time() - before - period)
        if os.environ.get("BENCH_LAG_DEBUG") and lags[-1] > 0.04:
            print(f"lag {lags[-1] * 1000:.0f} ms at {time.time():.2f}", file=sys.stderr)


def _start_sandbox(state: Path, machines: int, time_scale: float, seed: int) -> Any:
    env = {**os.environ, "VASTAI_STATE_DIR": str(state)}
    cmd = [
        sys.executable,
        "-m",
        "vastai_async",
        "sandbox",
        "--offers",
        str(machines),
        "--time-scale",
        str(time_scale),
        "--seed",
        str(seed),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603 -- our own interpreter and arguments
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr is not None else ""
            raise RuntimeError(f"sandbox exited: {err[-400:]}")
        try:
            return proc, read_sandbox_record(state)
        except VastAIError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("sandbox did not start within 60 s")


async def run_scale(
    *, provisions: int, machines: int, time_scale: float, fan_out: int, per_race: int, seed: int
) -> dict[str, Any]:
    """Run the load test; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="vastai-bench-scale-") as tmp:
        state = Path(tmp)
        proc, record = _start_sandbox(state, machines, time_scale, seed)
        try:
            result = await _drive(
                record,
                state,
                provisions=provisions,
                time_scale=time_scale,
                fan_out=fan_out,
                per_race=per_race,
            )
            return {"machines": machines, "seed": seed, **result}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _drive(
    record: Any, state: Path, *, provisions: int, time_scale: float, fan_out: int, per_race: int
) -> dict[str, Any]:
    config = sandbox_config(
        record.url,
        record.api_key,
        time_scale=time_scale,
        state_dir=state,
        max_bid_usd_per_hour=50.0,
        min_vram_gb=0,
        preferred_gpus=(),
    )
    trace = RequestTrace()
    lags: list[float] = []
    stop = asyncio.Event()
    wins: dict[str, WinnerChosen] = {}

    def on_event(event: Event) -> None:
        if isinstance(event, WinnerChosen):
            wins[event.job_id] = event

    async with (
        aiohttp.ClientSession(trace_configs=[trace.config]) as http,
        VastAIService(config=config, http_session=http, on_event=on_event) as service,
    ):
        query = {
            "rentable": {"eq": True},
            "disk_space": {"gte": config.default_disk_gb},
            "order": [["dph_total", "asc"]],
            "limit": 10_000,
        }
        offers = await service.client.search_offers(query)
        distinct: list[Offer] = []
        seen: set[int | None] = set()
        for offer in offers:
            if offer.machine_id not in seen:
                seen.add(offer.machine_id)
                distinct.append(offer)
        # Round-robin slices: every provision gets cheap and dear offers alike.
        slices = [distinct[i::provisions][:per_race] for i in range(provisions)]
        # Lag is measured while the provisions run (not during the one big search).
        ticker = asyncio.create_task(_ticker(lags, stop))
        t0 = time.time()
        ended: dict[str, float] = {}

        async def one(i: int) -> Rental:
            job = f"scale-{i}"
            try:
                return await service.provision_instance(
                    job_id=job, offers=slices[i], fan_out=fan_out
                )
            finally:
                ended[job] = time.time()

        results = await asyncio.gather(*(one(i) for i in range(provisions)), return_exceptions=True)
        all_done = time.time()
        rentals = [r for r in results if isinstance(r, Rental)]
        typed = [r for r in results if isinstance(r, VastAIError)]
        untyped = [
            f"{type(r).__name__}: {r}"
            for r in results
            if isinstance(r, BaseException) and not isinstance(r, VastAIError)
        ]
        await asyncio.gather(*(service.terminate_instance(r.instance_id) for r in rentals))
        # What the SDK left behind, and whether its TeardownErrors named all of it.
        left = [inst.id for inst in await service.client.list_instances()]
        named = {i for e in typed if isinstance(e, TeardownError) for i in e.instance_ids}
        # The documented recovery for a TeardownError: reap finds them by label.
        reaped = await service.reap(owner=service.owner)
        after_reap = [inst.id for inst in await service.client.list_instances()]
    stop.set()
    await ticker
    to_ssh = [(w.at - t0) / time_scale for w in wins.values()]
    teardown = [ended[j] - w.at for j, w in wins.items() if j in ended]
    return {
        "provisions": provisions,
        "offers_searched": len(offers),
        "time_scale": time_scale,
        "fan_out": fan_out,
        "candidates_per_provision": per_race,
        "succeeded": len(rentals),
        "failed_typed": len(typed),
        "failed_typed_reasons": sorted({str(e)[:160] for e in typed})[:5],
        "failed_untyped": untyped[:5],
        "untyped_count": len(untyped),
        "left_after_provisions": left,
        "left_unnamed_by_errors": sorted(set(left) - named),
        "reaped": len(reaped.destroyed),
        "leaked_after_reap": after_reap,
        "wall_s_all_done": all_done - t0,
        "sim_s_all_done": (all_done - t0) / time_scale,
        "time_to_ssh_sim_s": {"p50": percentile(to_ssh, 0.5), "p95": percentile(to_ssh, 0.95)},
        "teardown_wall_s": {"p50": percentile(teardown, 0.5), "p99": percentile(teardown, 0.99)},
        "requests": sum(len(v) for v in trace.starts.values()),
        "requests_by_route": {k: len(v) for k, v in sorted(trace.starts.items())},
        "statuses": {str(k): v for k, v in sorted(trace.statuses.items())},
        "rate_limited_429": trace.statuses.get(429, 0),
        "errors_by_route": dict(sorted(trace.route_statuses.items())),
        "requests_over_pacing": trace.too_close(dict(config.pacing.min_intervals)),
        "loop_lag_ms": {
            "p50": 1000 * (percentile(lags, 0.5) or 0.0),
            "p99": 1000 * (percentile(lags, 0.99) or 0.0),
            "max": 1000 * max(lags, default=0.0),
        },
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--provisions", type=int, default=200)
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--fan-out", type=int, default=2)
    parser.add_argument("--per-race", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = asyncio.run(
        run_scale(
            provisions=args.provisions,
            machines=args.machines,
            time_scale=args.time_scale,
            fan_out=args.fan_out,
            per_race=args.per_race,
            seed=args.seed,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
