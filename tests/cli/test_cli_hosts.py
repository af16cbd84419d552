"""``vastai-async hosts``: the table, ``--json``, ``hosts forget``; no API key needed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.cli._runner import run_all_at_once
from vastai_async.reputation import HostOutcome, OutcomeKind, SQLiteHostHistory


def _seed(state: Path) -> None:
    now = time.time()
    records = [
        HostOutcome(machine_id=11, host_id=5, offer_id=110, kind=OutcomeKind.WON,
                    login_s=40.0 + i, running_s=35.0, gpu_name="RTX 4090", at=now - 60 * i)
        for i in range(1, 4)
    ] + [
        HostOutcome(machine_id=22, host_id=6, offer_id=220, kind=OutcomeKind.OCI_ERROR,
                    reason="OCI runtime create failed", elapsed_s=20.0, at=now - 30),
        HostOutcome(machine_id=33, host_id=6, offer_id=330, kind=OutcomeKind.LOST_LOADING,
                    elapsed_s=41.0, at=now - 90),
    ]  # fmt: skip
    SQLiteHostHistory.in_state_dir(state).record_sync(records)


def test_hosts_table_json_and_forget(tmp_path: Path) -> None:
    full, empty = tmp_path / "full", tmp_path / "empty"
    _seed(full)
    first = run_all_at_once(
        {
            "json": ["hosts", "--state-dir", str(full), "--json"],
            "table": ["hosts", "--state-dir", str(full)],
            "empty": ["hosts", "--state-dir", str(empty)],
            "no-args": ["hosts", "--state-dir", str(full), "forget"],
        }
    )
    assert first["json"].code == 0, first["json"].err
    data = json.loads(first["json"].out)
    machines = {m["machine_id"]: m for m in data["machines"]}
    assert set(machines) == {11, 22, 33}
    assert machines[11]["wins"] == 3
    assert machines[11]["median_login_s"] == 42.0
    assert machines[22]["failures"] == 1
    assert machines[22]["last_kind"] == "oci_error"
    assert machines[33]["last_kind"] == "lost_loading"
    # Best expected first: the machine that won three times leads.
    assert data["machines"][0]["machine_id"] == 11
    assert first["table"].code == 0, first["table"].err
    assert "Host history: 3 machines" in first["table"].out
    assert "oci_error" in first["table"].out
    assert first["empty"].code == 0
    assert "no host history yet" in first["empty"].out
    assert first["no-args"].code == 2
    assert "--all" in first["no-args"].err

    second = run_all_at_once({"forget": ["hosts", "--state-dir", str(full), "forget", "22"]})
    assert second["forget"].code == 0, second["forget"].err
    assert "forgot 1 record(s)" in second["forget"].out
    left = {o.machine_id for o in SQLiteHostHistory.in_state_dir(full).history_sync()}
    assert left == {11, 33}
    third = run_all_at_once({"all": ["hosts", "--state-dir", str(full), "forget", "--all"]})
    assert third["all"].code == 0, third["all"].err
    assert "forgot 4 record(s) of every machine" in third["all"].out
    assert SQLiteHostHistory.in_state_dir(full).history_sync() == []
