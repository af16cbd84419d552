"""Instance JSON as the API shows it, built from the sandbox's own records (vast-api.md fields)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vastai_async.sandbox.market import HOURS_PER_MONTH

if TYPE_CHECKING:
    from vastai_async.sandbox.state import Instance

__all__ = ["INSTANCE_FIELDS", "instance_json"]

#: Offer fields an instance row repeats (the machine it runs on).
_FROM_OFFER = [
    "machine_id",
    "host_id",
    "gpu_name",
    "num_gpus",
    "gpu_ram",
    "gpu_arch",
    "cpu_name",
    "cpu_cores",
    "cpu_cores_effective",
    "cpu_ram",
    "geolocation",
    "reliability2",
    "verification",
    "inet_up",
    "inet_down",
    "cuda_max_good",
    "driver_version",
    "compute_cap",
    "total_flops",
    "dlperf",
    "storage_cost",
    "min_bid",
    "pci_gen",
    "pcie_bw",
    "disk_bw",
    "mobo_name",
    "static_ip",
]


_OWN = [
    "id",
    "ask_contract_id",
    "bundle_id",
    "actual_status",
    "intended_status",
    "cur_state",
    "next_state",
    "status_msg",
    "label",
    "image_uuid",
    "image_runtype",
    "image_args",
    "onstart",
    "extra_env",
    "template_hash_id",
    "ssh_host",
    "ssh_port",
    "ssh_idx",
    "public_ipaddr",
    "local_ipaddrs",
    "ports",
    "direct_port_start",
    "direct_port_end",
    "direct_port_count",
    "start_date",
    "disk_space",
    "gpu_totalram",
    "is_bid",
    "dph_base",
    "dph_total",
    "storage_total_cost",
    "gpu_util",
    "jupyter_token",
]

#: Every field of an instance row; v1 ``select_filters`` and ``order_by`` may name these only.
INSTANCE_FIELDS: frozenset[str] = frozenset(_FROM_OFFER) | frozenset(_OWN)


def instance_json(inst: Instance) -> dict[str, Any]:
    """The instance as the API shows it (fields per vast-api.md)."""
    o = inst.offer
    storage_dph = float(o["storage_cost"]) * inst.disk_gb / HOURS_PER_MONTH
    running = inst.actual_status == "running" and inst.direct_port is not None
    ports = (
        {
            f"{spec}": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]
            for spec, port in {"22/tcp": inst.direct_port, **inst.port_map}.items()
        }
        if running
        else None
    )
    row: dict[str, Any] = {k: o.get(k) for k in _FROM_OFFER}
    row.update(
        id=inst.id,
        ask_contract_id=inst.offer_id,
        bundle_id=inst.offer_id,
        actual_status=inst.actual_status,
        intended_status=inst.intended_status,
        cur_state=inst.cur_state,
        next_state=inst.next_state,
        status_msg=inst.status_msg,
        label=inst.label,
        image_uuid=inst.image,
        image_runtype=inst.runtype,
        image_args=inst.args or [],
        onstart=inst.onstart,
        extra_env=[[k, v] for k, v in inst.env.items()],
        template_hash_id=inst.template_hash_id,
        ssh_host="127.0.0.1",
        ssh_port=inst.ssh_port,
        ssh_idx="0",
        public_ipaddr="127.0.0.1",
        local_ipaddrs="127.0.0.1 ",
        ports=ports,
        direct_port_start=inst.direct_port if running else -1,
        direct_port_end=inst.direct_port if running else -1,
        direct_port_count=1 if running else 0,
        start_date=inst.start_date,
        disk_space=inst.disk_gb,
        gpu_totalram=int(o["gpu_ram"]) * int(o["num_gpus"]),
        is_bid=inst.bid is not None,
        dph_base=round(inst.gpu_dph, 6),  # what the GPU bills: the bid for an interruptible
        dph_total=round(inst.gpu_dph + storage_dph, 6),
        storage_total_cost=round(storage_dph, 6),
        gpu_util=0.0 if running else None,
        jupyter_token=None,
    )
    return row
