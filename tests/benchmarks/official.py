"""The official ``vastai`` package, driven in its own virtualenv by subprocess.

It pins its own dependency versions, so it never enters our environment (style.md, "Known
pitfalls"). :func:`ensure_venv` builds ``/tmp/vastai-bench-venv`` (``python -m venv``, then
``pip install vastai asyncssh``) once; :func:`run_official` runs ``official_loop.py provision``
there against a scenario's sandbox; :func:`official_structure_s` times ``Offer.from_dict``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.benchmarks.scenario import Scenario
from tests.benchmarks.strategies import IMAGE, _routes_since

__all__ = ["DEFAULT_VENV", "ensure_venv", "official_structure_s", "run_official"]

DEFAULT_VENV = Path("/tmp/vastai-bench-venv")
LOOP = Path(__file__).with_name("official_loop.py")


def ensure_venv(venv: Path = DEFAULT_VENV) -> tuple[Path | None, str | None]:
    """The venv's python and the official package's version, or ``(None, why)``."""
    python = venv / "bin" / "python"
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # noqa: S603 -- our own interpreter and arguments
        probe = [str(python), "-c", "import vastai.async_.client, asyncssh"]
        if subprocess.run(probe, capture_output=True).returncode != 0:  # noqa: S603 -- our own interpreter and arguments
            pip = [str(python), "-m", "pip", "install", "-q", "vastai", "asyncssh"]
            subprocess.run(pip, check=True, capture_output=True, timeout=600)  # noqa: S603 -- our own interpreter and arguments
        version = subprocess.run(  # noqa: S603 -- our own interpreter and arguments
            [str(python), "-c", "import importlib.metadata as m; print(m.version('vastai'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"could not build the official client's venv: {err}"
    return python, version


async def run_official(sc: Scenario, *, python: Path, poll_s: float) -> dict[str, Any]:
    """The sequential loop on the official ``AsyncClient`` against the scenario's sandbox."""
    out: dict[str, Any] = {"strategy": f"official_{poll_s:g}s", "seed": sc.seed, "ok": False}
    config = sc.config
    t = config.timings
    ts = sc.spec.time_scale
    spec = {
        "url": sc.sandbox.url,
        "api_key": sc.sandbox.api_key,
        "offers": [o.id for o in sc.candidates],
        "time_scale": ts,
        "poll_s": poll_s,
        # Deadlines in simulated seconds, as our sequential baseline uses them.
        "loading_s": t.loading_s / ts,
        "ssh_s": t.ssh_s / ts,
        "overall_s": t.overall_s / ts,
        "probe_pause_s": t.probe_pause_s / ts,
        "connect_timeout_s": t.connect_timeout_s,
        "login_timeout_s": t.login_timeout_s,
        "key_path": str(config.ssh_key_path),
        "public_key": config.ssh_public_key,
        "image": IMAGE,
        "disk_gb": config.default_disk_gb,
        "label": f"bench-official-{sc.seed}",
    }
    requests_before = sc.request_total()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)  # holds the sandbox's throwaway key; deleted below
        spec_path = Path(fh.name)
    try:
        proc = await asyncio.create_subprocess_exec(
            str(python),
            str(LOOP),
            "provision",
            str(spec_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"VASTAI_NO_UPDATE_CHECK": "1", "PATH": "/usr/bin:/bin"},
        )
        stdout, stderr = await proc.communicate()
    finally:
        spec_path.unlink(missing_ok=True)  # noqa: ASYNC240 -- one small local file
    winner: int | None = None
    if proc.returncode != 0:
        out["error"] = "official loop crashed: " + stderr.decode(errors="replace")[-400:]
    else:
        res = json.loads(stdout.decode().strip().splitlines()[-1])
        out["error"] = res.get("error")
        out["candidates_tried"] = res.get("tried")
        out["rate_limited"] = res.get("rate_limited")
        out["probe_failures"] = res.get("probe_failures")
        if res.get("ok"):
            winner = int(res["instance_id"])
            out.update(
                ok=True,
                instance_id=winner,
                time_to_ssh_s=(res["won_at"] - res["started_at"]) / ts,
            )
    out["requests"] = sc.request_total() - requests_before
    out["requests_by_route"] = _routes_since(sc, requests_before)
    out["loser_usd"] = sc.loser_usd(winner)
    out["instances_created"] = len(sc.servers)
    # Left behind: anything alive but the winner (the winner is the caller's to keep).
    out["leaked"] = sorted(sc.sandbox.alive_instance_ids() - {winner})
    for instance_id in sorted(sc.sandbox.alive_instance_ids()):
        await sc.sandbox.cloud.destroy(instance_id)
    return out


def official_structure_s(python: Path, offers_json: Path, repeat: int) -> float:
    """Best-of-``repeat`` seconds of ``Offer.from_dict`` over the offers file, in the venv."""
    done = subprocess.run(  # noqa: S603 -- our own interpreter and arguments
        [str(python), str(LOOP), "structure", str(offers_json), str(repeat)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])
