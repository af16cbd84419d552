"""Recorded-style Vast.ai payloads, written from the field lists of the wire notes (vast-api.md).

``*_MODELLED`` payloads hold exactly the wire keys our models read (strict mode must accept them);
``*_RECORDED`` payloads add the many fields the live API also sends (production must ignore
them, strict mode must reject them). Both carry the API's quirks: numbers as strings, padded IP
addresses, ``HostPort`` strings, ``extra_env`` pairs, nulls.
"""

from __future__ import annotations

import copy
from typing import Any

_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMfakefakefakefakefakefakefake me@laptop"

OFFER_MODELLED: dict[str, Any] = {
    "id": 14718503,
    "ask_contract_id": 14718503,
    "machine_id": 11021,
    "host_id": 88113,
    "gpu_name": "RTX 4090",
    "num_gpus": 1,
    "gpu_ram": 24564,
    "gpu_total_ram": 24564,
    "cpu_cores": 32,
    "cpu_ram": 128732,
    "disk_space": 412.5,
    "dph_base": 0.32,
    "dph_total": 0.3411111111111111,
    "min_bid": 0.2113,
    "storage_cost": 0.15,
    "inet_up": 812.4,
    "inet_down": 901.7,
    "reliability2": 0.9962,
    "verification": "verified",
    "rentable": True,
    "rented": False,
    "geolocation": "Oregon, US",
    "public_ipaddr": "  203.0.113.17\n",
    "direct_port_count": 99,
    "cuda_max_good": 12.4,
    "driver_version": "550.107.02",
    "dlperf": 77.31,
    "score": 201.47,
    "duration": 2419200.0,
}

#: Offer fields the live API sends that our models do not read.
OFFER_EXTRAS: dict[str, Any] = {
    "bundle_id": 571935262,
    "bw_nvlink": 0.0,
    "compute_cap": 890,
    "cpu_arch": "amd64",
    "cpu_ghz": 4.5,
    "cpu_name": "AMD Ryzen 9 7950X 16-Core Processor",
    "datacenter": None,
    "disk_bw": 3452.1,
    "disk_name": "Samsung SSD 990 PRO 2TB",
    "dlperf_per_dphtotal": 226.64,
    "end_date": 1767225600.0,
    "external": False,
    "flops_per_dphtotal": 242.78,
    "gpu_arch": "nvidia",
    "gpu_display_active": False,
    "gpu_frac": 1.0,
    "gpu_lanes": 16,
    "gpu_mem_bw": 908.1,
    "gpu_max_power": 450.0,
    "gpu_max_temp": 83.0,
    "has_avx": 1,
    "hosting_type": 0,
    "inet_down_cost": 0.002,
    "inet_up_cost": 0.002,
    "is_bid": False,
    "logo": "/static/logos/vastai_small2.png",
    "mobo_name": "ROG STRIX X670E-E",
    "pci_gen": 4.0,
    "pcie_bw": 24.3,
    "reliability": 0.9962,
    "rn": 1,
    "start_date": 1732700000.0,
    "static_ip": True,
    "total_flops": 82.8,
    "ubuntu_version": "22.04",
    "vericode": 0,
    "vram_costperhour": 1.2e-05,
    "webpage": None,
    "search": {
        "gpuCostPerHour": 0.32,
        "diskHour": 0.0211,
        "totalHour": 0.3411,
        "discountedTotalPerHour": 0.3411,
    },
    "instance": {
        "gpuCostPerHour": 0.32,
        "diskHour": 0.0211,
        "totalHour": 0.3411,
        "discountedTotalPerHour": 0.3411,
    },
    "time_remaining": "",
    "time_remaining_isbid": "",
}

OFFER_RECORDED: dict[str, Any] = {
    **OFFER_MODELLED,
    **OFFER_EXTRAS,
    # quirks seen on the wire: counts and prices as strings, booleans as 0/1
    "num_gpus": "1",
    "dph_total": "0.3411111111111111",
    "rentable": 1,
    "rented": 0,
}

#: An offer where the API sent null for most optional fields and left others out.
OFFER_SPARSE: dict[str, Any] = {
    "id": 9001,
    "gpu_name": "A100 SXM4",
    "num_gpus": 8,
    "dph_total": 9.6,
    "gpu_ram": None,
    "public_ipaddr": None,
    "geolocation": None,
    "reliability2": None,
    "cuda_max_good": None,
}

INSTANCE_LOADING: dict[str, Any] = {
    "id": 21450017,
    "machine_id": 11021,
    "actual_status": "loading",
    "intended_status": "running",
    "cur_state": "running",
    "next_state": "running",
    "status_msg": "Pulling image vastai/base-image:cuda-12.4.1",
    "label": "vastai-async:host-1234-ab12:job-42:r1",
    "image_uuid": "vastai/base-image:cuda-12.4.1",
    "image_runtype": "ssh_direc ssh_proxy",
    "extra_env": [["JOB", "42"], ["-p 8080:8080", "1"]],
    "ssh_host": "ssh5.vast.ai",
    "ssh_port": 30017,
    "public_ipaddr": "203.0.113.17\n",
    "ports": None,
    "direct_port_start": -1,
    "direct_port_end": -1,
    "direct_port_count": 99,
    "start_date": 1732800000.123,
    "dph_total": 0.3411111111111111,
    "gpu_name": "RTX 4090",
    "num_gpus": 1,
    "gpu_ram": 24564,
    "gpu_totalram": 24564,
    "disk_space": 64.0,
}

INSTANCE_RUNNING: dict[str, Any] = {
    **INSTANCE_LOADING,
    "actual_status": "running",
    "status_msg": "success, running vastai/base-image_cuda-12.4.1/ssh",
    "direct_port_start": 41230,
    "direct_port_end": 41329,
    "ports": {
        "22/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": "41234"},
            {"HostIp": "::", "HostPort": "41234"},
        ],
        "8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41235"}],
        "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "41236"}],
    },
}

INSTANCE_EXTRAS: dict[str, Any] = {
    "bundle_id": 571935262,
    "client_run_time": 0.0,
    "compute_cap": 890,
    "cpu_name": "AMD Ryzen 9 7950X 16-Core Processor",
    "cpu_util": 0.013,
    "cpu_ram": 128732,
    "disk_util": 3.2,
    "disk_usage": 0.05,
    "duration": 2419200.0,
    "end_date": 1767225600.0,
    "gpu_temp": 41.0,
    "gpu_util": 0.0,
    "host_id": 88113,
    "image_args": [],
    "inet_down_billed": None,
    "inet_up_billed": None,
    "is_bid": False,
    "jupyter_token": "e3b0c44298fc1c149afbf4c8996fb924",
    "local_ipaddrs": "192.168.1.17 172.17.0.1\n",
    "logo": "/static/logos/vastai_small2.png",
    "mem_limit": 64.4,
    "mem_usage": 0.9,
    "min_bid": 0.2113,
    "onstart": "echo hello",
    "reliability2": 0.9962,
    "rentable": True,
    "storage_cost": 0.15,
    "template_hash_id": None,
    "time_remaining": "",
    "uptime_mins": None,
    "verification": "verified",
    "vmem_usage": None,
}

INSTANCE_RECORDED: dict[str, Any] = {
    **INSTANCE_RUNNING,
    **INSTANCE_EXTRAS,
    "ssh_port": "30017",
    "num_gpus": "1",
}

#: Freshly created: Vast has not filled in most columns yet.
INSTANCE_CREATED: dict[str, Any] = {
    "id": 21450018,
    "machine_id": 11021,
    "actual_status": None,
    "intended_status": "running",
    "cur_state": "stopped",
    "next_state": "running",
    "status_msg": None,
    "label": None,
    "extra_env": None,
    "ports": None,
    "public_ipaddr": None,
    "ssh_host": "ssh7.vast.ai",
    "ssh_port": 30018,
}

V1_PAGE: dict[str, Any] = {
    "instances": [INSTANCE_LOADING, INSTANCE_RUNNING],
    "next_token": "eyJpZCI6IDIxNDUwMDE4fQ==",
    "instances_found": 27,
    "total_instances": 27,
}

USER: dict[str, Any] = {
    "id": 88114,
    "email": "someone@example.com",
    "balance": "12.57",
    "credit": 12.57,
    "username": "someone",
}

USER_RECORDED: dict[str, Any] = {
    **USER,
    "api_key": "redacted",
    "billaddress_city": None,
    "can_pay": True,
    "fullname": "Some One",
    "has_billing": True,
    "sid": "a1b2c3",
    "ssh_key": _PUBLIC_KEY,
}

SSH_KEY: dict[str, Any] = {
    "id": 5521,
    "key": _PUBLIC_KEY,
    "created_at": "2025-03-14T09:26:53",
}

TEMPLATE: dict[str, Any] = {
    "id": 205,
    "hash_id": "4e17788f74f075dd9aab7d0d4427968f",
    "name": "PyTorch (Vast)",
    "image": "vastai/pytorch",
    "tag": "2.5.1-cuda-12.4.1",
    "env": "-p 1111:1111 -p 8080:8080 -e OPEN_BUTTON_PORT=1111",
    "onstart": "entrypoint.sh",
    "runtype": "jupyter_direc ssh_direc ssh_proxy",
}

CREATE_RESPONSE: dict[str, Any] = {
    "success": True,
    "new_contract": 21450017,
    "instance_api_key": "d4f0c1b2a3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0",
}


def variant(payload: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``payload`` with ``changes`` applied (a value of ``...`` deletes the key)."""
    result = copy.deepcopy(payload)
    for key, value in changes.items():
        if value is ...:
            result.pop(key, None)
        else:
            result[key] = value
    return result
