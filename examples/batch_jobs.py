"""Run a batch of GPU jobs at bounded concurrency; every machine is destroyed, whatever fails.

Each job rents a machine (racing ``--fan-out`` offers), runs its commands over SSH, collects the
output and destroys the machine. A failing job is reported and does not stop the others (unless
``--fail-fast``); Ctrl-C destroys the machines of the jobs in flight before exiting.

    python examples/batch_jobs.py --sandbox --jobs 12 --concurrency 4
    python examples/batch_jobs.py --jobs 3 --command "nvidia-smi -L"
"""

from __future__ import annotations

import argparse
import sys

from _common import example_config, example_parser, run_example

from vastai_async import VastAIService
from vastai_async.integrations import JobResult, JobSpec, run_jobs


def show(result: JobResult) -> None:
    if result.ok:
        out = result.outputs[-1].stdout.strip() if result.outputs else ""
        took = result.times.total_s
        print(f"  {result.job_id}: ok on instance {result.instance_id} in {took:.1f} s: {out}")
    else:
        print(f"  {result.job_id}: FAILED: {result.error}")


async def main(args: argparse.Namespace) -> None:
    config = example_config(sandbox=args.sandbox)
    jobs = [
        JobSpec(
            job_id=f"{args.prefix}-{i:03d}",
            commands=[args.command, f"echo job {i} done"],
            fan_out=args.fan_out,
            timeout_s=args.timeout,
        )
        for i in range(args.jobs)
    ]
    print(f"running {len(jobs)} jobs, {args.concurrency} at a time")
    async with VastAIService(config=config) as vast:
        results = await run_jobs(
            vast, jobs, concurrency=args.concurrency, fail_fast=args.fail_fast, on_result=show
        )
    ok = sum(r.ok for r in results)
    spend = sum(r.estimated_spend_usd for r in results)
    print(f"{ok}/{len(results)} jobs succeeded; estimated spend ${spend:.4f}")
    if ok != len(results):
        sys.exit(1)


if __name__ == "__main__":
    parser = example_parser(__doc__ or "")
    parser.add_argument("--jobs", type=int, default=8, help="number of jobs")
    parser.add_argument("--concurrency", type=int, default=4, help="jobs in flight at once")
    parser.add_argument("--fan-out", type=int, default=2, help="offers raced per job")
    parser.add_argument("--command", default="nvidia-smi -L", help="first command of each job")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per job")
    parser.add_argument("--prefix", default="batch", help="job id prefix (labels)")
    parser.add_argument("--fail-fast", action="store_true", help="stop after the first failure")
    run_example(main(parser.parse_args()))
