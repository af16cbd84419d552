"""The sandbox's market: seeded machines, their offers, and offer search.

Units follow the real service (vast-api.md): RAM in MB (a 4090 shows 24564), disk in GB, prices
in $/hour except ``storage_cost`` in $/GB/month. A month is 30 days here (720 hours), which is
how ``dph_total`` folds the storage of ``allocated_storage`` GB into the hourly price. A machine
offers several GPU counts (1x, 2x, 4x, ...); renting any of them takes the whole machine off the
market until the instance is destroyed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import attrs

from vastai_async.sandbox.matching import QueryError, matches, parse_order, sort_rows

__all__ = ["HOURS_PER_MONTH", "OFFER_FIELDS", "Machine", "Market", "Offer"]

HOURS_PER_MONTH = 720.0

# name, MB per GPU, on-demand $/h per GPU, compute capability, TFLOPS per GPU, arch, GB/s
_GPUS: tuple[tuple[str, int, float, int, float, str, float], ...] = (
    ("RTX 3090", 24576, 0.22, 860, 35.6, "nvidia", 936.0),
    ("RTX 4090", 24564, 0.40, 890, 82.6, "nvidia", 1008.0),
    ("RTX A6000", 49140, 0.48, 860, 38.7, "nvidia", 768.0),
    ("A100 PCIE", 40960, 0.85, 800, 19.5, "nvidia", 1555.0),
    ("A100 SXM4", 81920, 1.25, 800, 19.5, "nvidia", 2039.0),
    ("H100 PCIE", 81559, 2.00, 900, 51.2, "nvidia", 2000.0),
    ("H100 SXM", 81559, 2.40, 900, 66.9, "nvidia", 3350.0),
    ("L40S", 46068, 0.80, 890, 91.6, "nvidia", 864.0),
    ("RTX 3080", 10240, 0.12, 860, 29.8, "nvidia", 760.0),
)
_GPU_WEIGHTS = (22, 26, 10, 6, 8, 3, 7, 8, 10)
_PLACES = (
    "Helsinki, FI", "Frankfurt, DE", "Amsterdam, NL", "Oslo, NO", "Warsaw, PL", "Paris, FR",
    "Quebec, CA", "Texas, US", "California, US", "Virginia, US", "Oregon, US", "Tokyo, JP",
    "Seoul, KR", "Singapore, SG", "Sydney, AU", "Sao Paulo, BR", "Mumbai, IN", "Taipei, TW",
)  # fmt: skip
_CPUS = ("AMD EPYC 7543 32-Core Processor", "AMD Ryzen 9 7950X 16-Core Processor",
         "Intel Xeon Gold 6338", "AMD EPYC 9354 32-Core Processor")  # fmt: skip
_DRIVERS = (("535.104.05", 12.2), ("550.54.15", 12.4), ("560.35.03", 12.6), ("570.86.10", 12.8))

#: Every field an offer carries; search filters and orders may name these and only these.
OFFER_FIELDS: frozenset[str] = frozenset(
    [
        "id",
        "ask_contract_id",
        "bundle_id",
        "machine_id",
        "host_id",
        "gpu_name",
        "num_gpus",
        "gpu_ram",
        "gpu_total_ram",
        "gpu_frac",
        "gpu_arch",
        "gpu_mem_bw",
        "gpu_max_power",
        "gpu_max_temp",
        "gpu_display_active",
        "bw_nvlink",
        "compute_cap",
        "total_flops",
        "dlperf",
        "dlperf_per_dphtotal",
        "flops_per_dphtotal",
        "cpu_name",
        "cpu_arch",
        "cpu_cores",
        "cpu_cores_effective",
        "cpu_ghz",
        "cpu_ram",
        "disk_space",
        "disk_bw",
        "disk_name",
        "mobo_name",
        "pci_gen",
        "pcie_bw",
        "has_avx",
        "inet_up",
        "inet_down",
        "inet_up_cost",
        "inet_down_cost",
        "direct_port_count",
        "dph_base",
        "dph_total",
        "min_bid",
        "storage_cost",
        "storage_total_cost",
        "reliability",
        "reliability2",
        "verification",
        "verified",
        "external",
        "rentable",
        "rented",
        "geolocation",
        "public_ipaddr",
        "static_ip",
        "duration",
        "cuda_max_good",
        "driver_version",
        "ubuntu_version",
        "os_version",
        "vms_enabled",
        "datacenter",
        "cluster_id",
        "hosting_type",
        "score",
        "is_bid",
        "start_date",
        "end_date",
    ]
)
_SPECIAL_KEYS = frozenset(
    {"order", "type", "limit", "allocated_storage", "disable_bundling", "select_cols"}
)
#: GB of storage ``dph_total`` includes when a search names no ``allocated_storage`` (the spec).
_DEFAULT_STORAGE_GB = 8.0


def _spaced_names(spec: Any) -> Any:
    """``gpu_name`` filter values with ``_`` read as a space (the spec's ``RTX_4090``)."""
    if not isinstance(spec, Mapping):
        spec = {"eq": spec}

    def fix(value: Any) -> Any:
        return value.replace("_", " ") if isinstance(value, str) else value

    return {
        op: [fix(v) for v in arg] if isinstance(arg, list) else fix(arg) for op, arg in spec.items()
    }


def _geo_matches(row: Mapping[str, Any], spec: Any) -> bool:
    """The ``geolocation`` filter: a two-letter value is a country code ("US" finds
    ``"Texas, US"``, as the spec's example filters); a longer one is the whole location."""
    if spec is None:
        return True
    if not isinstance(spec, Mapping):
        spec = {"eq": spec}
    where = str(row.get("geolocation") or "")
    country = where.rsplit(",", 1)[-1].strip().upper()

    def same(value: Any) -> bool:
        text = str(value).strip()
        return country == text.upper() if len(text) == 2 else where.lower() == text.lower()

    for op, arg in spec.items():
        if op in ("in", "notin"):
            if not isinstance(arg, list):
                raise QueryError(f"geolocation: {op} takes a list, got {arg!r}")
            hit = any(same(v) for v in arg)
            ok = hit if op == "in" else not hit
        elif op in ("eq", "neq"):
            ok = same(arg) if op == "eq" else not same(arg)
        else:
            raise QueryError(f"geolocation: unsupported operator {op!r}")
        if not ok:
            return False
    return True


@attrs.define(kw_only=True)
class Machine:
    """A host machine; all its offers leave the market while it is rented."""

    machine_id: int
    host_id: int
    gpu_name: str
    gpus: int
    rented_by: int | None = None  # instance id


@attrs.define(kw_only=True)
class Offer:
    """One rentable bundle: ``fields`` is the offer's JSON minus the per-query prices."""

    id: int
    machine_id: int
    fields: dict[str, Any]

    def price_fields(self, *, kind: str, storage_gb: float) -> dict[str, Any]:
        """Price fields for a search of ``kind`` at ``storage_gb`` allocated storage."""
        base = float(self.fields["dph_base"])
        if kind == "bid":
            base = float(self.fields["min_bid"])
        elif kind == "reserved":
            base = round(base * 0.75, 4)  # reserved terms: a quarter off the on-demand rate
        storage = float(self.fields["storage_cost"]) * storage_gb / HOURS_PER_MONTH
        total = round(base + storage, 6)
        dlperf = float(self.fields["dlperf"])
        return {
            "dph_total": total,
            "storage_total_cost": round(storage, 6),
            "dlperf_per_dphtotal": round(dlperf / total, 3),
            "flops_per_dphtotal": round(float(self.fields["total_flops"]) / total, 3),
            "is_bid": kind == "bid",
        }


class Market:
    """Seeded machines and offers, with the search engine of ``POST /bundles/``.

    Args:
        seed: the random seed; the same seed gives the same market.
        machines: number of machines (each carries 1 to 4 offers).
        id_base: first offer id; offer ids are spaced so they never look like instance ids.
    """

    def __init__(self, *, seed: int, machines: int, id_base: int = 2_000_000) -> None:
        rng = random.Random(f"market:{seed}")
        self.machines: dict[int, Machine] = {}
        self.offers: dict[int, Offer] = {}
        next_offer = id_base + rng.randrange(1000)
        for m in range(machines):
            machine_id = 10_000 + m * 7 + rng.randrange(7)
            host_id = 100_000 + m * 3 + rng.randrange(3)
            gpu = rng.choices(_GPUS, weights=_GPU_WEIGHTS)[0]
            gpus = rng.choice((1, 1, 2, 4, 4, 8))
            self.machines[machine_id] = Machine(
                machine_id=machine_id, host_id=host_id, gpu_name=gpu[0], gpus=gpus
            )
            common = self._machine_fields(rng, machine_id, host_id, gpu, gpus)
            for count in (c for c in (1, 2, 4, 8) if c <= gpus):
                next_offer += 1 + rng.randrange(40)
                self.offers[next_offer] = Offer(
                    id=next_offer,
                    machine_id=machine_id,
                    fields=self._offer_fields(next_offer, common, gpu, count, gpus),
                )

    @staticmethod
    def _machine_fields(
        rng: random.Random,
        machine_id: int,
        host_id: int,
        gpu: tuple[str, int, float, int, float, str, float],
        gpus: int,
    ) -> dict[str, Any]:
        driver, cuda = rng.choice(_DRIVERS)
        verification = rng.choices(("verified", "unverified", "deverified"), (85, 12, 3))[0]
        reliability = round(rng.uniform(0.90, 0.9999), 4)
        cores = rng.choice((16, 32, 64, 128))
        return {
            "machine_id": machine_id,
            "host_id": host_id,
            "gpu_name": gpu[0],
            "gpu_ram": gpu[1],
            "gpu_arch": gpu[5],
            "gpu_mem_bw": gpu[6],
            "compute_cap": gpu[3],
            "gpu_max_power": 450.0,
            "gpu_max_temp": 83.0,
            "gpu_display_active": False,
            "cpu_name": rng.choice(_CPUS),
            "cpu_arch": "amd64",
            "cpu_ghz": round(rng.uniform(2.4, 4.5), 1),
            "machine_cores": cores,
            "machine_cpu_ram": rng.choice((64, 128, 256, 512)) * 1024,
            "machine_disk": float(rng.choice((500, 1000, 2000, 4000))),
            "disk_bw": round(rng.uniform(800, 6000), 1),
            "disk_name": "Samsung SSD 990 PRO",
            "mobo_name": "ROMED8-2T",
            "pci_gen": 4.0,
            "pcie_bw": round(rng.uniform(11, 25), 1),
            "has_avx": 1,
            "inet_up": round(rng.uniform(100, 2000), 1),
            "inet_down": round(rng.uniform(200, 5000), 1),
            "inet_up_cost": 0.0,
            "inet_down_cost": 0.0,
            "direct_port_count": rng.choice((0, 20, 100, 500)),
            "price_factor": rng.uniform(0.8, 1.35),
            "storage_cost": round(rng.uniform(0.05, 0.30), 4),
            "reliability": reliability,
            "reliability2": reliability,
            "verification": verification,
            "verified": verification == "verified",
            "external": False,
            "rentable": True,
            "rented": False,
            "geolocation": rng.choice(_PLACES),
            "public_ipaddr": "127.0.0.1",
            "static_ip": rng.random() < 0.6,
            "duration": round(rng.uniform(3, 120) * 86400.0, 1),
            "cuda_max_good": cuda,
            "driver_version": driver,
            "ubuntu_version": "22.04",
            "os_version": "22.04",
            "vms_enabled": False,
            "datacenter": None,
            "cluster_id": None,
            "hosting_type": 0,
            "bw_nvlink": 0.0 if gpus == 1 else round(rng.uniform(20, 600), 1),
        }

    @staticmethod
    def _offer_fields(
        offer_id: int,
        common: dict[str, Any],
        gpu: tuple[str, int, float, int, float, str, float],
        count: int,
        gpus: int,
    ) -> dict[str, Any]:
        fields = {k: v for k, v in common.items() if not k.startswith("machine_")}
        fields["machine_id"] = common["machine_id"]
        fields.pop("price_factor")
        dph_base = round(gpu[2] * count * common["price_factor"], 4)
        dlperf = round(gpu[4] * count * 1.4, 2)
        fields.update(
            id=offer_id,
            ask_contract_id=offer_id,
            bundle_id=offer_id,
            num_gpus=count,
            gpu_total_ram=gpu[1] * count,
            gpu_frac=count / gpus,
            total_flops=round(gpu[4] * count, 2),
            dlperf=dlperf,
            cpu_cores=common["machine_cores"],
            cpu_cores_effective=round(common["machine_cores"] * count / gpus, 1),
            cpu_ram=common["machine_cpu_ram"] * count // gpus,
            disk_space=round(common["machine_disk"] * count / gpus, 1),
            dph_base=dph_base,
            min_bid=round(dph_base * 0.45, 4),
            score=round(dlperf / dph_base * common["reliability"], 3),
            start_date=None,
            end_date=None,
        )
        return fields

    # --- renting -----------------------------------------------------------------------------

    def available(self, offer_id: int) -> Offer | None:
        """The offer when it exists and its machine is free."""
        offer = self.offers.get(offer_id)
        if offer is None or self.machines[offer.machine_id].rented_by is not None:
            return None
        return offer

    def rent(self, offer_id: int, instance_id: int) -> Offer:
        """Take the offer's machine off the market for ``instance_id``."""
        offer = self.offers[offer_id]
        self.machines[offer.machine_id].rented_by = instance_id
        return offer

    def release(self, machine_id: int, instance_id: int) -> None:
        """Put a machine back on the market (its instance was destroyed)."""
        machine = self.machines.get(machine_id)
        if machine is not None and machine.rented_by == instance_id:
            machine.rented_by = None

    # --- search ------------------------------------------------------------------------------

    def search(self, query: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Answer a ``POST /bundles/`` query with offer JSON objects.

        Raises:
            QueryError: unknown field, operator, type or unreadable value.
        """
        kind = query.get("type", "on-demand")
        # The spec's enum says "ondemand", its example and the official client "on-demand".
        kind = {"interruptible": "bid", "ondemand": "on-demand"}.get(kind, kind)
        if kind not in ("on-demand", "bid", "reserved"):
            raise QueryError(f"unknown offer type {kind!r}")
        try:
            storage = float(query.get("allocated_storage", _DEFAULT_STORAGE_GB))
            limit = query.get("limit")
            limit = None if limit is None else int(limit)
        except (TypeError, ValueError):
            raise QueryError("allocated_storage and limit must be numbers") from None
        filters = {k: v for k, v in query.items() if k not in _SPECIAL_KEYS}
        geo = filters.pop("geolocation", None)
        if "gpu_name" in filters:
            filters["gpu_name"] = _spaced_names(filters["gpu_name"])
        order = parse_order(query.get("order"))
        rows = []
        for offer in self.offers.values():
            if self.machines[offer.machine_id].rented_by is not None:
                continue
            row = dict(offer.fields)
            row.update(offer.price_fields(kind=kind, storage_gb=storage))
            if matches(row, filters, known=OFFER_FIELDS) and _geo_matches(row, geo):
                rows.append(row)
        ordered = sort_rows(rows, order, known=OFFER_FIELDS)
        return [dict(r) for r in (ordered if limit is None else ordered[: max(0, limit)])]
