"""GPU jobs from an arq queue on Redis: start workers (on as many machines as you like), enqueue.

Needs the ``arq`` extra (``pip install -e '/path/to/vastai-async[arq]'`` from a clone: not on
PyPI yet) and a Redis server.

    python examples/arq_worker.py --sandbox worker                  # one or more, anywhere
    python examples/arq_worker.py --sandbox enqueue --jobs 6        # prints each job's result

Each worker has its own owner id (``<deployment>-<host>-<pid>-w<random>``) written into its
rental labels and a heartbeat key in Redis, which it refreshes (and re-registers) every quarter
TTL. Live workers reap on a tick: what a dead worker of the same deployment left (its heartbeat
expired) is destroyed within about two TTLs, with no restart, and nothing else is touched. A
retried job adopts the machine an earlier try left, under a Redis lease that keeps reapers off
it, instead of renting a second one. Stop a worker with Ctrl-C: it destroys its rentals and
removes its heartbeat. docs/scale.md ("Fleet custody") has the details.
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings

from _common import example_config, example_parser, run_example
from arq.connections import RedisSettings, create_pool
from arq.worker import run_worker

from vastai_async import VastAIService
from vastai_async.integrations import JobSpec
from vastai_async.integrations.arq import WorkerOptions, enqueue_gpu_job, worker_settings

#: The default job: real work in python3 on the rented machine (on the sandbox too, which runs
#: commands with a real shell), reading what Vast.ai tells a container about itself.
JOB = (
    'python3 -c "import os, subprocess; '
    "gpus = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True).stdout; "
    "print('instance', os.environ.get('CONTAINER_ID'), 'GPUs', gpus.count('GPU '), "
    "'sum of squares', sum(i * i for i in range(100000)))\""
)


def worker(args: argparse.Namespace) -> None:
    # arq 0.28 closes its pool with redis' deprecated close(); harmless, but not our warning.
    warnings.filterwarnings("ignore", "Call to deprecated close", DeprecationWarning)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

    def provider(owner: str) -> VastAIService:
        return VastAIService(config=example_config(sandbox=args.sandbox, owner=owner))

    options = WorkerOptions(
        deployment=args.deployment,
        provider_factory=provider,
        heartbeat_ttl_s=args.heartbeat_ttl,
        heartbeat_interval_s=args.heartbeat_ttl / 4,
        reap_interval_s=args.reap_interval,
    )
    settings = worker_settings(
        options,
        redis_settings=RedisSettings.from_dsn(args.redis),
        queue_name=args.queue,
        max_jobs=args.max_jobs,
        job_timeout=args.job_timeout,
        burst=args.burst,
    )
    run_worker(settings)


async def enqueue(args: argparse.Namespace) -> None:
    redis = await create_pool(RedisSettings.from_dsn(args.redis))
    try:
        jobs = []
        for i in range(args.jobs):
            spec = JobSpec(
                job_id=f"{args.prefix}-{i:03d}",
                commands=[args.command, f"echo job {i} done"],
                timeout_s=args.job_timeout - 30 if args.job_timeout > 60 else None,
            )
            job = await enqueue_gpu_job(redis, spec, _queue_name=args.queue)
            if job is None:
                print(f"{spec.job_id}: already queued or finished recently")
                continue
            jobs.append(job)
        print(f"enqueued {len(jobs)} jobs on {args.queue}")
        failed = 0
        for job in jobs:
            result = await job.result(timeout=args.wait, poll_delay=0.1)
            said = " | ".join(o["stdout"].strip() for o in result["outputs"])
            status = "ok" if result["ok"] else f"FAILED: {result['error']['message']}"
            failed += not result["ok"]
            print(f"  {result['job_id']}: {status} (worker {result['owner']}): {said}")
        if failed:
            raise SystemExit(1)
    finally:
        await redis.aclose()


if __name__ == "__main__":
    parser = example_parser(__doc__ or "")
    parser.add_argument(
        "--redis",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"),
        help="Redis URL (default $REDIS_URL or redis://127.0.0.1:6379)",
    )
    parser.add_argument("--queue", default="vastai-async:jobs", help="arq queue name")
    parser.add_argument("--job-timeout", type=float, default=3600.0, help="arq job timeout (s)")
    sub = parser.add_subparsers(dest="role", required=True)
    w = sub.add_parser("worker", help="run a worker until Ctrl-C")
    w.add_argument("--deployment", default="demo", help="shared by all workers of a deployment")
    w.add_argument("--max-jobs", type=int, default=10, help="jobs in flight in this worker")
    w.add_argument("--heartbeat-ttl", type=float, default=60.0, help="seconds before presumed dead")
    w.add_argument(
        "--reap-interval",
        type=float,
        default=None,
        help="reaper tick in seconds (default: half the heartbeat TTL)",
    )
    w.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    e = sub.add_parser("enqueue", help="enqueue jobs and print their results")
    e.add_argument("--jobs", type=int, default=4, help="number of jobs")
    e.add_argument(
        "--command", default=JOB, help="first command of each job (default: a python3 job)"
    )
    e.add_argument("--prefix", default="arq-demo", help="job id prefix (also the arq job id)")
    e.add_argument("--wait", type=float, default=3600.0, help="seconds to wait for results")
    arguments = parser.parse_args()
    if arguments.role == "worker":
        worker(arguments)  # arq runs its own event loop
    else:
        run_example(enqueue(arguments))
