"""One seeded benchmark scenario: a sandbox market, its faults, and the candidate offers.

Every strategy meets the same scenario for a given seed: a fresh :class:`Sandbox` with that seed
(same machines, prices and heavy-tailed boot latencies), the same failing machines and the same
offers taken by someone else between the search and the first create. The sandbox's SSH
servers are recorded as they are made, so the oracle (the earliest moment any candidate could
have accepted a login) survives the candidates' destruction.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from vastai_async.client import VastAIClient
from vastai_async.config import VastAIConfig
from vastai_async.models import Offer
from vastai_async.sandbox import LifecycleFault, Sandbox, SSHFaults
from vastai_async.sandbox_link import sandbox_config

__all__ = [
    "ADVERSE",
    "DEFAULT",
    "FAULT_KINDS",
    "Scenario",
    "ScenarioSpec",
    "market_boot",
    "open_scenario",
    "percentile",
]

#: How a failing machine fails, assigned round-robin over the chosen machines.
FAULT_KINDS = ("stuck_loading", "oci_exited", "offline", "ssh_refusing")


@attrs.frozen(kw_only=True)
class ScenarioSpec:
    """Sizes of a scenario (see docs/benchmarks.md).

    Attributes:
        machines: machines in the sandbox market.
        candidates: candidate offers (distinct machines, cheapest first) every strategy gets.
        failing: fraction of candidate machines that fail (one of :data:`FAULT_KINDS`).
        vanishing: fraction of candidate offers rented by someone else after the search.
        time_scale: wall seconds per simulated second.
        market: the market's name (``default`` or ``adverse``).
        boot_sigma: sigma of the lognormal boot latency of normal hosts (around 60 s).
        slow_hosts: fraction of machines that are slow hosts (boot 600-1,500 s).
    """

    machines: int = 60
    candidates: int = 14
    failing: float = 0.15
    vanishing: float = 0.1
    time_scale: float = 0.05
    market: str = "default"
    boot_sigma: float = 0.45
    slow_hosts: float = 0.05


def market_boot(rng: random.Random, *, sigma: float, slow: float) -> float:
    """A machine's typical boot latency (simulated s): the sandbox's own model with its sigma
    and slow-host fraction as parameters (``sigma=0.45, slow=0.05`` draws exactly what
    ``vastai_async.sandbox.lifecycle.default_boot_distribution`` draws)."""
    if rng.random() < slow:
        return rng.uniform(600.0, 1500.0)
    return min(max(rng.lognormvariate(math.log(60.0), sigma), 15.0), 400.0)


#: The sandbox's default market (the model of docs/sandbox.md).
DEFAULT = ScenarioSpec()
#: The declared adverse market (issue 15): wider boots, more slow hosts, more failing hosts.
ADVERSE = ScenarioSpec(market="adverse", boot_sigma=0.8, slow_hosts=0.10, failing=0.30)


@attrs.define(kw_only=True)
class Scenario:
    """A started sandbox with its faults, the candidates and the recorded SSH servers."""

    seed: int
    spec: ScenarioSpec
    sandbox: Sandbox
    config: VastAIConfig
    candidates: list[Offer]
    faults: dict[int, str]  # machine id -> fault kind
    vanished: list[int]  # offer ids taken after the search
    servers: dict[int, Any] = attrs.field(factory=dict)  # instance id -> InstanceSSHServer
    machine_of: dict[int, int] = attrs.field(factory=dict)  # instance id -> machine id

    def oracle_epoch(self) -> float | None:
        """Earliest epoch any healthy instance made here could have accepted a login.

        Instances on failing machines are left out: a host that drops as it starts has a
        ``ready_at`` but never a usable login.
        """
        moments = [
            s.ready_at for i, s in self.servers.items() if self.machine_of.get(i) not in self.faults
        ]
        found = [m for m in moments if isinstance(m, float)]
        return min(found, default=None)

    def loser_usd(self, winner: int | None) -> float:
        """Money the ledger charged for every instance except the winner."""
        ledger = self.sandbox.ledger()
        return float(sum(e["total_usd"] for e in ledger if e["instance_id"] != winner))

    def request_total(self) -> int:
        """API requests the sandbox received so far."""
        return sum(self.sandbox.request_counts().values())


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _recording(
    sandbox: Sandbox, servers: dict[int, Any], machines: dict[int, int]
) -> Callable[..., Any]:
    factory = sandbox.cloud.ssh_factory

    def make(**kwargs: Any) -> Any:
        server = factory(**kwargs)
        instance_id = int(kwargs["instance_id"])
        servers[instance_id] = server
        machines[instance_id] = sandbox.cloud.instances[instance_id].machine_id
        return server

    return make


async def open_scenario(seed: int, spec: ScenarioSpec, state_dir: Path) -> Scenario:
    """Start the sandbox for ``seed``, pick candidates, plant faults, take vanishing offers.

    The caller closes ``scenario.sandbox``.
    """
    # Emulated commands: a probe's fork would be measured as simulated seconds (x 1/time_scale)
    # and shift every figure against the published baselines.
    boot = functools.partial(market_boot, sigma=spec.boot_sigma, slow=spec.slow_hosts)
    sandbox = Sandbox(  # noqa: S604
        seed=seed,
        offers=spec.machines,
        time_scale=spec.time_scale,
        boot_distribution=boot,
        shell="emulated",
    )
    await sandbox.start()
    try:
        servers: dict[int, Any] = {}
        machines_of: dict[int, int] = {}
        sandbox.cloud.ssh_factory = _recording(sandbox, servers, machines_of)
        config = sandbox_config(
            sandbox.url,
            sandbox.api_key,
            time_scale=spec.time_scale,
            state_dir=state_dir,
            max_bid_usd_per_hour=50.0,
            min_vram_gb=0,
            preferred_gpus=(),
        )
        query = {
            "rentable": {"eq": True},
            "disk_space": {"gte": config.default_disk_gb},
            "order": [["dph_total", "asc"]],
            "limit": 200,
        }
        async with VastAIClient.from_config(config) as client:
            offers = await client.search_offers(query)
        candidates: list[Offer] = []
        machines: set[int | None] = set()
        for offer in offers:
            if offer.machine_id not in machines:
                machines.add(offer.machine_id)
                candidates.append(offer)
            if len(candidates) == spec.candidates:
                break
        rng = random.Random(f"bench:{seed}")
        n_fail = max(1, round(spec.failing * len(candidates)))
        failing = rng.sample(candidates, n_fail)
        first = rng.randrange(len(FAULT_KINDS))
        faults: dict[int, str] = {}
        for i, offer in enumerate(failing):
            assert offer.machine_id is not None
            kind = FAULT_KINDS[(first + i) % len(FAULT_KINDS)]
            faults[offer.machine_id] = kind
            if kind == "stuck_loading":
                sandbox.set_lifecycle_fault(offer.machine_id, LifecycleFault(stuck_loading=True))
            elif kind == "oci_exited":
                sandbox.set_lifecycle_fault(offer.machine_id, LifecycleFault(oci_error=True))
            elif kind == "offline":
                # The host drops as it finishes loading: no window in which a login could work
                # (a few seconds of SSH would hand a "winner" that dies at once).
                fault = LifecycleFault(offline_after_s=0.0)
                sandbox.set_lifecycle_fault(offer.machine_id, fault)
            else:
                sandbox.set_ssh_faults(offer.machine_id, SSHFaults(refuse=True))
        healthy = [o for o in candidates if o not in failing]
        n_gone = max(1, round(spec.vanishing * len(candidates)))
        vanished = [o.id for o in rng.sample(healthy, n_gone)]
        for offer_id in vanished:
            sandbox.take_offer(offer_id)
        return Scenario(
            seed=seed,
            spec=spec,
            sandbox=sandbox,
            config=config,
            candidates=candidates,
            faults=faults,
            vanished=vanished,
            servers=servers,
            machine_of=machines_of,
        )
    except BaseException:
        await sandbox.close()
        raise


def now() -> float:
    """Epoch seconds (the sandbox's ``ready_at`` and events use the same clock)."""
    return time.time()
