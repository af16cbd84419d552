"""Race several offers with live progress; keep the first that logs in, run a command, tear down.

Every candidate is a real (billed) instance until the race destroys it: the first one whose SSH
login works wins, the others are destroyed at once. ``on_event`` shows each step.

    python examples/race_offers.py --sandbox --fan-out 3
    python examples/race_offers.py --gpu 4090 --gpu A100 --command "nvidia-smi -L"
"""

from __future__ import annotations

import argparse
import time

from _common import example_config, example_parser, run_example

from vastai_async import VastAIService
from vastai_async.events import (
    CandidateChosen,
    CandidateFailed,
    CreateFailed,
    Event,
    InstanceCreated,
    InstanceDestroyed,
    ProbeAttempt,
    RaceFailed,
    RaceStarted,
    SpendUpdate,
    StatusChanged,
    WinnerChosen,
)


class ProgressPrinter:
    """An ``on_event`` callback: one line per race step, with the time since the race began."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.spend_usd = 0.0
        self.last_probe_failure: dict[int, str | None] = {}

    def __call__(self, event: Event) -> None:
        line = self.describe(event)
        if line:
            print(f"[{time.monotonic() - self.started:6.2f}s] {line}", flush=True)

    def describe(self, event: Event) -> str | None:
        match event:
            case RaceStarted(candidates=n, fan_out=k):
                return f"race {event.race_id}: {n} candidates, {k} at once"
            case CandidateChosen(offer_id=offer, gpu_name=gpu, dph_total=price):
                return f"offer {offer}: creating ({gpu}, {price} $/h)"
            case InstanceCreated(offer_id=offer, instance_id=iid):
                return f"offer {offer}: instance {iid} created"
            case CreateFailed(offer_id=offer, reason=reason):
                return f"offer {offer}: create refused ({reason})"
            case StatusChanged(instance_id=iid, old=old, new=new):
                return f"instance {iid}: {old or 'new'} -> {new}"
            case ProbeAttempt(instance_id=iid, kind=kind, attempt=n, ok=True):
                return f"instance {iid}: SSH login via {kind} works (probe {n})"
            case ProbeAttempt(instance_id=iid, kind=kind, attempt=n, reason=reason):
                # Probes repeat every few seconds while a machine boots: show only changes.
                if self.last_probe_failure.get(iid) == reason:
                    return None
                self.last_probe_failure[iid] = reason
                return f"instance {iid}: SSH probe {n} via {kind}: not yet ({reason})"
            case WinnerChosen(instance_id=iid, elapsed_s=elapsed):
                return f"instance {iid}: WINNER after {elapsed:.1f} s"
            case CandidateFailed(instance_id=iid, reason=reason):
                return f"instance {iid}: dropped ({reason})"
            case InstanceDestroyed(instance_id=iid, reason=reason):
                return f"instance {iid}: destroyed ({reason})"
            case SpendUpdate(total_usd=total):
                self.spend_usd = total
                return None
            case RaceFailed(reason=reason):
                return f"race failed: {reason}"
        return None


async def main(args: argparse.Namespace) -> None:
    config = example_config(sandbox=args.sandbox)
    progress = ProgressPrinter()
    async with VastAIService(config=config) as vast:
        offers = await vast.search_offers(gpus=args.gpu or None)
        print(f"{len(offers)} offers match; racing the best {min(args.fan_out, len(offers))}")
        rental = await vast.provision_instance(
            job_id=args.job_id, offers=offers, fan_out=args.fan_out, on_event=progress
        )
        async with rental:  # destroys the winner on exit, even on error or Ctrl-C
            result = await rental.run(args.command, check=True)
            print(f"$ {args.command}\n{result.stdout.rstrip()}")
        print(f"instance {rental.instance_id} destroyed")
        print(f"race spend, all candidates (estimated): ${progress.spend_usd:.4f}")


if __name__ == "__main__":
    parser = example_parser(__doc__ or "")
    parser.add_argument("--fan-out", type=int, default=3, help="candidates in flight at once")
    parser.add_argument("--gpu", action="append", help="GPU name, e.g. 4090 (repeatable)")
    parser.add_argument("--job-id", default="race-demo", help="job id written into the labels")
    parser.add_argument("--command", default="nvidia-smi -L", help="run this on the winner")
    run_example(main(parser.parse_args()))
