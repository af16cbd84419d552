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
    """Best-of-``repeat`` seconds to build ``count`` offers: ours vs the official ``from_dict``."""
    path = workdir / "offers.json"
    n = write_offers(path, count)
    rows = json.loads(path.read_text())
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        models = _converter.structure_list(rows, Offer)
        best = min(best, time.perf_counter() - t0)
    assert len(models) == n
    out: dict[str, Any] = {"offers": n, "repeat": repeat, "ours_s": best}
    if official_python is not None:
        out["official_s"] = official_structure_s(official_python, path, repeat)
        out["ratio"] = best / out["official_s"]
    else:
        out["official_s"] = None
    return out


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
