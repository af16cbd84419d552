"""``vastai-async demo``: the whole story with no account, exit 0, nothing left running."""

from __future__ import annotations

import json
import os

import pytest

from tests.cli._runner import CLIResult, lines, run_all_at_once


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CLIResult]:
    """A text demo and a JSON demo, run side by side, each with an empty state directory."""
    state = tmp_path_factory.mktemp("demo-state")
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("VASTAI_")]:
            patch.delenv(name)
        patch.chdir(tmp_path_factory.mktemp("demo-cwd"))
        patch.setenv("VASTAI_STATE_DIR", str(state))
        results = run_all_at_once(
            {
                "text": ["demo", "--time-scale", "0.02", "--seed", "1"],
                "json": ["demo", "--json", "--fan-out", "2", "--time-scale", "0.02"],
            },
            within_s=60,
        )
    # The throwaway keys went with their sandboxes: none is left in the state directory.
    keys = state / "sandbox-keys"
    results["keys_left"] = CLIResult(
        code=0, out="\n".join(str(p) for p in keys.rglob("id_*")) if keys.exists() else "", err=""
    )
    return results


def test_demo_prints_winner_ssh_line_nvidia_smi_and_the_bill_then_tears_down(
    demos: dict[str, CLIResult],
) -> None:
    result = demos["text"]
    assert result.code == 0, result.err
    out = result.out
    assert "1. search: " in out
    winner_line = next(line for line in lines(out) if line.startswith("winner: instance "))
    winner = winner_line.split()[2]
    assert "GPU 0: " in out  # nvidia-smi -L, run over SSH
    assert any(line.startswith("ssh -i ") for line in lines(out))
    assert "candidate offer" in out  # the race's progress, in the story
    bill = out[out.index("5. the bill") :]
    assert bill.count(" loser ") == 2  # fan-out 3: two losers billed
    assert f"{winner} " in bill
    assert "losers cost $" in bill
    assert "; total $" in bill
    assert "torn down: 0 instances alive" in out


def test_demo_json_reports_the_same_story(demos: dict[str, CLIResult]) -> None:
    result = demos["json"]
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["fan_out"] == 2
    assert report["nvidia_smi"].startswith("GPU 0: ")
    assert report["ssh_command"].startswith("ssh ")
    assert report["alive_after_teardown"] == 0
    roles = sorted(row["role"] for row in report["bill"]["instances"])
    assert roles == ["loser", "winner"]
    total = sum(row["total_usd"] for row in report["bill"]["instances"])
    assert abs(report["bill"]["total_usd"] - total) < 1e-12
    assert report["bill"]["losers_usd"] < report["bill"]["total_usd"]
    # One price: the winner's $/h (from the search) is the $/h its bill line charged.
    (winner_row,) = [r for r in report["bill"]["instances"] if r["role"] == "winner"]
    assert winner_row["dph_total"] == pytest.approx(report["winner"]["dph_total"], abs=1e-6)


def test_demo_leaves_no_throwaway_key_behind(demos: dict[str, CLIResult]) -> None:
    assert demos["keys_left"].out == ""
