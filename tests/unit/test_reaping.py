"""What reap destroys and spares, decided without any I/O."""

from __future__ import annotations

import subprocess
import sys

from vastai_async._owners import _owner_for, default_owner, pid_namespace
from vastai_async._reaping import plan_reap
from vastai_async.models import Instance

NOW = 1_800_000_000.0


def _dead_owner() -> str:
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return _owner_for(pid_namespace(), int(out.stdout), "abc123")


def test_plan_reap_destroys_named_dead_and_old_and_spares_the_rest() -> None:
    alive = default_owner()
    dead = _dead_owner()
    instances = [
        Instance(id=1, label=f"vastai-async:{alive}:job-a:r1", start_date=NOW - 10),
        Instance(id=2, label=f"vastai-async:{dead}:job-b:r2", start_date=NOW - 10),
        Instance(id=3, label="vastai-async:kept:job-a", start_date=NOW - 10_000),
        Instance(id=4, label="someone-else", start_date=NOW - 10_000),
        Instance(id=5, label=None),
        Instance(id=6, label="vastai-async:worker-9:job-c:r3", start_date=NOW - 7200),
        Instance(id=7, label="vastai-async:worker-9:job-d:r4", start_date=NOW - 60),
        Instance(id=8, label=f"vastai-async:{alive}:job-a:r5", start_date=NOW - 10),
    ]
    report = plan_reap(instances, job_id="job-a", owner=None, older_than_s=3600, live={8}, now=NOW)
    destroyed = dict(report.destroyed)
    spared = dict(report.spared)
    assert destroyed == {1: "job job-a", 2: f"owner {dead} is dead", 6: "older than 3600 s"}
    assert spared[3] == "kept on purpose"
    assert spared[4] == spared[5] == "not a vastai-async label"
    assert "not named" in spared[7]
    assert spared[8] == "in a live race of this service"


def test_plan_reap_by_owner_only_touches_that_owner() -> None:
    instances = [
        Instance(id=1, label="vastai-async:worker-1:j:r"),
        Instance(id=2, label="vastai-async:worker-2:j:r"),
    ]
    report = plan_reap(
        instances, job_id=None, owner="worker-1", older_than_s=None, live=set(), now=NOW
    )
    assert [i for i, _ in report.destroyed] == [1]
    assert [i for i, _ in report.spared] == [2]
