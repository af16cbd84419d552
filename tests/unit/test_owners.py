"""Owner ids: unique per process, and proven dead only for this host's finished processes."""

from __future__ import annotations

import subprocess
import sys

from vastai_async._owners import _owner_for, default_owner, owner_is_dead
from vastai_async.config import OWNER_PATTERN


def test_default_owner_is_label_safe_and_unique() -> None:
    a, b = default_owner(), default_owner()
    assert a != b
    assert OWNER_PATTERN.fullmatch(a)


def test_owner_of_a_finished_process_on_this_host_is_dead() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(proc.stdout)
    assert owner_is_dead(_owner_for(pid, "abc123"))


def test_live_owner_is_not_dead() -> None:
    assert not owner_is_dead(default_owner())
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as proc:
        try:
            assert not owner_is_dead(_owner_for(proc.pid, "abc123"))
        finally:
            proc.kill()


def test_other_hosts_and_custom_owners_are_never_presumed_dead() -> None:
    assert not owner_is_dead("some-other-host-99999999-abc123")
    assert not owner_is_dead("worker-7")
    assert not owner_is_dead("")
