"""Owner ids: unique per process, and proven dead only for this host's finished processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vastai_async._owners import OwnerLock, _owner_for, default_owner, owner_is_dead, pid_namespace
from vastai_async.config import OWNER_PATTERN
from vastai_async.errors import InvalidRequestError


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
    assert owner_is_dead(_owner_for(pid_namespace(), pid, "abc123"))


def test_live_owner_is_not_dead() -> None:
    assert not owner_is_dead(default_owner())
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as proc:
        try:
            assert not owner_is_dead(_owner_for(pid_namespace(), proc.pid, "abc123"))
        finally:
            proc.kill()


def test_other_hosts_and_custom_owners_are_never_presumed_dead() -> None:
    assert not owner_is_dead("some-other-host-f0000000-99999999-abc123")
    assert not owner_is_dead("worker-7")
    assert not owner_is_dead("")


def _other_namespace_owner(pid: int) -> str:
    other_ns = format(int(pid_namespace(), 16) + 1, "x")
    return _owner_for(other_ns, pid, "abc123")


def test_a_gone_pid_of_another_pid_namespace_proves_nothing(tmp_path: Path) -> None:
    """Containers sharing a host name: a pid we cannot see is not a dead owner."""
    assert not owner_is_dead(_other_namespace_owner(999_999), tmp_path)


def test_a_held_owner_lock_proves_life_and_a_free_one_proves_death(tmp_path: Path) -> None:
    """The lock works whatever the pid or namespace: PID 1 of another container included."""
    owner = _other_namespace_owner(1)
    lock = OwnerLock.acquire(tmp_path, owner)
    assert not owner_is_dead(owner, tmp_path)
    lock.release()
    assert owner_is_dead(owner, tmp_path)


def test_two_live_services_cannot_share_an_owner_id(tmp_path: Path) -> None:
    owner = default_owner()
    lock = OwnerLock.acquire(tmp_path, owner)
    try:
        with pytest.raises(InvalidRequestError, match="in use by another live process"):
            OwnerLock.acquire(tmp_path, owner)
    finally:
        lock.release()


def test_the_owner_lock_of_another_host_is_never_trusted(tmp_path: Path) -> None:
    owner = "some-other-host-f0000000-1-abc123"
    (tmp_path / "owners").mkdir()
    (tmp_path / "owners" / f"{owner}.lock").touch()
    assert not owner_is_dead(owner, tmp_path)
