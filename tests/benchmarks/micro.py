"""Micro-benchmarks: structuring offers into models, and import / CLI start-up time."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.official import official_structure_s
from vastai_async import _converter
from vastai_async.models import Offer
from vastai_async.sandbox.market import Market

__all__ = ["import_times", "structuring"]


def write_offers(path: Path, count: int, seed: int = 0) -> int:
    """Write ``count`` offer rows as the sandbox's search answers them (its own JSON, not ours)."""
    market = Market(seed=seed, machines=count // 2 + 100)
    rows = market.search({"limit": count})
    path.write_text(json.dumps(rows))
    return len(rows)


def structuring(
    workdir: Path, *, count: int, repeat: int, official_python: Path | None
) -> dict[str, Any]:
    """Best-of-``repeat`` seconds to build ``count`` offers: ours vs the official ``from_dict``.

    Both sides run in a fresh process of their own each time (ours in this interpreter, the
    official one in its virtualenv), one pair per round, the order within the pair alternated
    round by round, so neither side gets the warmer machine.
    """
    path = workdir / "offers.json"
    n = write_offers(path, count)
    ours: list[float] = []
    official: list[float] = []
    for i in range(repeat):
        sides = ["ours", "official"] if i % 2 == 0 else ["official", "ours"]
        for side in sides:
            if side == "ours":
                ours.append(_ours_in_process(path, n))
            elif official_python is not None:
                official.append(official_structure_s(official_python, path, 1))
    out: dict[str, Any] = {"offers": n, "repeat": repeat, "ours_s": min(ours), "ours_all_s": ours}
    if official:
        out["official_s"] = min(official)
        out["official_all_s"] = official
        out["ratio"] = out["ours_s"] / out["official_s"]
    else:
        out["official_s"] = None
    return out


def _ours_in_process(path: Path, expect: int) -> float:
    done = subprocess.run(  # noqa: S603 -- our own interpreter and arguments
        [sys.executable, "-m", "tests.benchmarks.micro", "structure", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["count"] == expect
    return float(result["seconds"])


def _structure_once(path: Path) -> dict[str, Any]:
    rows = json.loads(path.read_text())
    t0 = time.perf_counter()
    models = _converter.structure_list(rows, Offer)
    return {"seconds": time.perf_counter() - t0, "count": len(models)}


def _wall(args: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)  # noqa: S603 -- our own interpreter and arguments
        best = min(best, time.perf_counter() - t0)
    return best


def import_times(repeat: int = 5) -> dict[str, Any]:
    """``import vastai_async`` and ``vastai-async --help``: wall (best of n, minus a bare
    interpreter) and ``-X importtime``'s own cumulative figure."""
    py = sys.executable
    bare = _wall([py, "-c", "pass"], repeat)
    imp = _wall([py, "-c", "import vastai_async"], repeat)
    cli = _wall([py, "-m", "vastai_async", "--help"], repeat)
    done = subprocess.run(  # noqa: S603 -- our own interpreter and arguments
        [py, "-X", "importtime", "-c", "import vastai_async"],
        check=True,
        capture_output=True,
        text=True,
    )
    cumulative_us = None
    heavy: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)", line)
        if not m:
            continue
        self_us, cum_us, indent, name = int(m[1]), int(m[2]), m[3], m[4]
        if name == "vastai_async" and len(indent) <= 1:
            cumulative_us = cum_us
        if len(indent) <= 3:  # top-level and first-level imports
            heavy.append((cum_us, name))
        del self_us
    heavy.sort(reverse=True)
    return {
        "python_bare_s": bare,
        "import_wall_s": imp - bare,
        "cli_help_wall_s": cli - bare,
        "importtime_cumulative_s": None if cumulative_us is None else cumulative_us / 1e6,
        "heaviest_imports": [{"module": n, "cumulative_s": us / 1e6} for us, n in heavy[:8]],
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["structure"]:
        print(json.dumps(_structure_once(Path(sys.argv[2]))))
