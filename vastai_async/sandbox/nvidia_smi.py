"""The ``nvidia-smi`` a sandbox instance has on its ``PATH``: the instance's GPUs, as text.

Run as a script by the shim each instance's ``bin`` folder holds (``python -I nvidia_smi.py
GPUS.json ARGS...``), so it imports nothing but the standard library and starts fast. It prints
the formats scripts parse: ``-L``, the default table, and ``--query-gpu=... --format=csv``
(with ``noheader`` and ``nounits``), optionally narrowed by ``-i``/``--id``. The GPUs are idle
(0 % utilisation, no memory used, no processes): the sandbox has no GPU.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["QUERY_FIELDS", "gpu_data", "main", "render"]

GPU = dict[str, Any]

#: ``--query-gpu`` fields: name -> (unit shown in the header and after values, value getter).
QUERY_FIELDS: dict[str, tuple[str, Callable[[GPU, dict[str, Any]], str]]] = {
    "index": ("", lambda g, d: str(g["index"])),
    "count": ("", lambda g, d: str(len(d["gpus"]))),
    "name": ("", lambda g, d: str(g["name"])),
    "gpu_name": ("", lambda g, d: str(g["name"])),
    "uuid": ("", lambda g, d: str(g["uuid"])),
    "gpu_uuid": ("", lambda g, d: str(g["uuid"])),
    "serial": ("", lambda g, d: str(1320000000000 + int(g["index"]))),
    "driver_version": ("", lambda g, d: str(d["driver_version"])),
    "pci.bus_id": ("", lambda g, d: _bus_id(g)),
    "compute_cap": ("", lambda g, d: str(d.get("compute_cap") or "8.9")),
    "memory.total": ("MiB", lambda g, d: str(g["memory_mib"])),
    "memory.used": ("MiB", lambda g, d: "0"),
    "memory.free": ("MiB", lambda g, d: str(g["memory_mib"])),
    "memory.reserved": ("MiB", lambda g, d: "0"),
    "utilization.gpu": ("%", lambda g, d: "0"),
    "utilization.memory": ("%", lambda g, d: "0"),
    "temperature.gpu": ("", lambda g, d: "34"),
    "fan.speed": ("%", lambda g, d: "30"),
    "power.draw": ("W", lambda g, d: "21.50"),
    "power.limit": ("W", lambda g, d: f"{float(d.get('power_limit_w', 450.0)):.2f}"),
    "pstate": ("", lambda g, d: "P8"),
    "persistence_mode": ("", lambda g, d: "Enabled"),
}


def gpu_data(
    *,
    instance_id: int,
    gpu_name: str,
    num_gpus: int,
    memory_mib: int = 24564,
    driver_version: str = "550.54.15",
    cuda_version: str = "12.4",
) -> dict[str, Any]:
    """The GPUs of one instance, as :func:`render` takes them; UUIDs derive from the id."""
    gpus = [
        {
            "index": i,
            "name": gpu_name,
            "uuid": f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'vastai-sandbox:{instance_id}:gpu{i}')}",
            "memory_mib": int(memory_mib),
        }
        for i in range(num_gpus)
    ]
    return {"gpus": gpus, "driver_version": driver_version, "cuda_version": cuda_version}


def _bus_id(gpu: GPU) -> str:
    return f"00000000:{int(gpu['index']) + 1:02X}:00.0"


def _gpu_list(data: dict[str, Any]) -> str:
    return "".join(f"GPU {g['index']}: {g['name']} (UUID: {g['uuid']})\n" for g in data["gpus"])


def _csv(data: dict[str, Any], gpus: list[GPU], fields: list[str], fmt: set[str]) -> str:
    header = ", ".join(f"{f} [{QUERY_FIELDS[f][0]}]" if QUERY_FIELDS[f][0] else f for f in fields)
    lines = [] if "noheader" in fmt else [header]
    for gpu in gpus:
        values = []
        for field in fields:
            unit, get = QUERY_FIELDS[field]
            value = get(gpu, data)
            values.append(f"{value} {unit}" if unit and "nounits" not in fmt else value)
        lines.append(", ".join(values))
    return "".join(line + "\n" for line in lines)


def _cells(a: str, b: str, c: str) -> str:
    """One row of the GPU table's three columns."""
    return f"|{a:<41}|{b:<24}|{c:<22}|"


def _wide(text: str) -> str:
    """One row spanning the table's width."""
    return f"|{text:<89}|"


def _table(data: dict[str, Any], gpus: list[GPU]) -> str:
    rule = "+" + "-" * 89 + "+"
    row = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
    driver, cuda = data["driver_version"], data["cuda_version"]
    out = [
        time.strftime("%a %b %d %H:%M:%S %Y"),
        rule,
        _wide(f" NVIDIA-SMI {driver:<22} Driver Version: {driver:<16} CUDA Version: {cuda}"),
        row.replace("+", "|", 1)[:-1] + "|",
        _cells(" GPU  Name                 Persistence-M", " Bus-Id          Disp.A",
               " Volatile Uncorr. ECC"),
        _cells(" Fan  Temp   Perf          Pwr:Usage/Cap", "           Memory-Usage",
               " GPU-Util  Compute M."),
        _cells("", "", "               MIG M."),
        row.replace("-", "="),
    ]  # fmt: skip
    for gpu in gpus:
        memory = f"0MiB / {gpu['memory_mib']}MiB"
        out += [
            _cells(f" {gpu['index']:>3}  {gpu['name'][:20]:<20}           On", "   "
                   f"{_bus_id(gpu)} Off", "                  Off"),
            _cells(" 30%   34C    P8             21W /  450W", f"  {memory:>21}",
                   "      0%      Default"),
            _cells("", "", "                  N/A"),
            row,
        ]  # fmt: skip
    out += [
        "",
        rule,
        _wide(" Processes:"),
        _wide("  GPU   GI   CI        PID   Type   Process name" + " " * 30 + "GPU Memory"),
        _wide(
            "        ID   ID                                                               Usage"
        ),
        "|" + "=" * 89 + "|",
        _wide("  No running processes found"),
        rule,
    ]
    return "\n".join(out) + "\n"


def render(data: dict[str, Any], argv: Sequence[str]) -> tuple[str, str, int]:
    """What ``nvidia-smi ARGV`` prints for these GPUs: ``(stdout, stderr, exit status)``.

    Args:
        data: ``{"gpus": [{"index", "name", "uuid", "memory_mib"}], "driver_version",
            "cuda_version"}``.
        argv: the arguments after ``nvidia-smi``.
    """
    args = list(argv)
    query: list[str] | None = None
    fmt: set[str] | None = None
    list_gpus = False
    ids: list[int] | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if not eq and name in ("--query-gpu", "--format", "-i", "--id") and i + 1 < len(args):
            i += 1
            value = args[i]
        if arg in ("-L", "--list-gpus"):
            list_gpus = True
        elif name == "--query-gpu":
            query = [f.strip() for f in value.split(",") if f.strip()]
        elif name == "--format":
            fmt = {f.strip() for f in value.split(",") if f.strip()}
        elif name in ("-i", "--id"):
            try:
                ids = [int(x) for x in value.split(",")]
            except ValueError:
                return "", f"Invalid GPU index: {value}\n", 2
        elif arg in ("-h", "--help"):
            usage = "usage: nvidia-smi [-L] [-i ID] [--query-gpu=FIELDS --format=csv]\n"
            return usage, "", 0
        else:
            return "", f'Invalid combination of input arguments: "{arg}"\n', 2
        i += 1
    gpus = list(data["gpus"])
    if ids is not None:
        if any(n < 0 or n >= len(gpus) for n in ids):
            return "", "No devices were found\n", 6
        gpus = [g for g in gpus if g["index"] in ids]
    if list_gpus:
        return _gpu_list({"gpus": gpus}), "", 0
    if query is not None:
        if fmt is None or "csv" not in fmt:
            return "", "--format=csv is required with --query-gpu.\n", 2
        unknown = [f for f in query if f not in QUERY_FIELDS]
        if unknown:
            return "", f'Field "{unknown[0]}" is not a valid field to query.\n', 2
        return _csv(data, gpus, query, fmt), "", 0
    if fmt is not None:
        return "", "--format requires --query-gpu.\n", 2
    return _table(data, gpus), "", 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of the shim: ``nvidia_smi.py GPUS.json [nvidia-smi arguments]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    with open(args[0], encoding="utf-8") as f:
        data = json.load(f)
    out, err, status = render(data, args[1:])
    sys.stdout.write(out)
    sys.stderr.write(err)
    return status


if __name__ == "__main__":
    sys.exit(main())
