"""Sandbox records: one per sandbox, picked by name or URL, a dead process recognised."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vastai_async import ConfigError
from vastai_async.sandbox_link import (
    SandboxRecord,
    live_sandbox_records,
    read_sandbox_record,
    remove_sandbox_record,
    sandbox_record_path,
    write_sandbox_record,
)


def _record(name: str, port: int, pid: int | None = None) -> SandboxRecord:
    return SandboxRecord(
        url=f"http://127.0.0.1:{port}",
        api_key=f"key-{name}",
        time_scale=0.05,
        name=name,
        pid=os.getpid() if pid is None else pid,
        host=socket.gethostname(),
    )


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def test_records_are_private_and_one_per_sandbox(tmp_path: Path) -> None:
    a = write_sandbox_record(_record("a", 1001), tmp_path)
    write_sandbox_record(_record("b", 1002), tmp_path)
    assert stat.S_IMODE(a.stat().st_mode) == 0o600
    assert "key-a" not in repr(_record("a", 1001))
    records, notes = live_sandbox_records(tmp_path)
    assert [r.name for r in records] == ["a", "b"]
    assert notes == []
    assert read_sandbox_record(tmp_path, name="b").url == "http://127.0.0.1:1002"
    assert read_sandbox_record(tmp_path, url="http://127.0.0.1:1001/").name == "a"
    with pytest.raises(ConfigError, match="several sandboxes run"):
        read_sandbox_record(tmp_path)


def test_removing_a_record_never_removes_another_process_s(tmp_path: Path) -> None:
    mine = _record("a", 1001)
    write_sandbox_record(mine, tmp_path)
    # Another sandbox took the name since: its record must survive our shutdown.
    theirs = _record("a", 1002, pid=os.getpid() + 1)
    write_sandbox_record(theirs, tmp_path)
    remove_sandbox_record(mine, tmp_path)
    assert sandbox_record_path("a", tmp_path).exists()


def test_a_dead_sandbox_is_named_and_its_record_removed(tmp_path: Path) -> None:
    dead = _record("gone", 1003, pid=_dead_pid())
    path = write_sandbox_record(dead, tmp_path)
    with pytest.raises(ConfigError) as info:
        read_sandbox_record(tmp_path)
    (problem,) = info.value.problems
    assert f"its process {dead.pid} is gone" in problem[1]
    assert not path.exists()


def test_a_record_from_another_host_is_not_judged_by_its_pid(tmp_path: Path) -> None:
    other = SandboxRecord(url="http://10.0.0.2:80", api_key="k", pid=_dead_pid(), host="elsewhere")
    write_sandbox_record(other, tmp_path)
    assert read_sandbox_record(tmp_path).url == "http://10.0.0.2:80"


def test_the_earlier_single_file_record_is_still_read(tmp_path: Path) -> None:
    (tmp_path / "sandbox.json").write_text(
        json.dumps({"url": "http://127.0.0.1:9", "api_key": "k", "time_scale": 0.1})
    )
    record = read_sandbox_record(tmp_path)
    assert (record.url, record.time_scale) == ("http://127.0.0.1:9", 0.1)
