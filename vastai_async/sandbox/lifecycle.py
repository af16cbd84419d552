"""Boot latencies and lifecycle faults: when an instance reaches each state, and how it fails.

Boot latency is a trait of the machine (a host with a slow disk or link is slow for every
rental), drawn once per machine from a seeded heavy-tailed distribution, with a small seeded
jitter per rental. Tests that need exact timings set the latency of an offer or machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import attrs

__all__ = ["OCI_ERROR", "BootModel", "LifecycleFault", "default_boot_distribution"]

#: Message of an instance whose container could not start (the real text begins the same way).
OCI_ERROR = (
    "OCI runtime create failed: runc create failed: unable to start container process: error "
    "during container init: error running hook #0: exit status 1, stdout: , stderr: "
    "nvidia-container-cli: initialization error: nvml error: driver/library version mismatch"
)


def default_boot_distribution(rng: random.Random) -> float:
    """Simulated seconds from create to running: mostly 30-120 s, a few 10+ minutes.

    Lognormal around 60 s (sigma 0.45) for 95% of machines; the rest are slow hosts whose image
    pulls take 10 to 25 minutes, as peers' bug trackers report.
    """
    if rng.random() < 0.05:
        return rng.uniform(600.0, 1500.0)
    return min(max(rng.lognormvariate(math.log(60.0), 0.45), 15.0), 400.0)


@attrs.define(kw_only=True)
class LifecycleFault:
    """What goes wrong with instances on one offer or machine.

    Attributes:
        stuck_loading: the instance stays ``loading`` forever.
        oci_error: at the end of loading the container fails: ``exited`` with an OCI status_msg.
        offline_after_s: simulated seconds after reaching running, the host goes ``offline``.
            ``0`` strikes at the moment it would run, before its SSH server accepts anything
            (deterministic: no login can get in first).
        outbid_after_s: simulated seconds after reaching running, an interruptible instance is
            outbid (stopped, ``intended_status`` still ``running``: docs/wire-notes.md);
            on-demand instances ignore it. ``0`` as above.
        times: how many rentals it hits (``None``: every rental).
    """

    stuck_loading: bool = False
    oci_error: bool = False
    offline_after_s: float | None = None
    outbid_after_s: float | None = None
    times: int | None = None


class BootModel:
    """Per-machine boot latencies, seeded, with exact overrides.

    Args:
        seed: the sandbox seed.
        distribution: draws a machine's typical boot latency (simulated seconds).
        jitter: relative spread between two rentals of one machine (0.1 = +-10%).
    """

    def __init__(
        self,
        *,
        seed: int,
        distribution: Callable[[random.Random], float] = default_boot_distribution,
        jitter: float = 0.1,
    ) -> None:
        self._seed = seed
        self._distribution = distribution
        self._jitter = jitter
        self._typical: dict[int, float] = {}
        self._rentals: dict[int, int] = {}
        self.exact: dict[int, float] = {}  # by offer id or machine id

    def typical(self, machine_id: int) -> float:
        """A machine's typical boot latency."""
        if machine_id not in self._typical:
            rng = random.Random(f"boot:{self._seed}:{machine_id}")
            self._typical[machine_id] = float(self._distribution(rng))
        return self._typical[machine_id]

    def draw(self, *, offer_id: int, machine_id: int) -> float:
        """The boot latency of the next rental of this offer."""
        if offer_id in self.exact:
            return self.exact[offer_id]
        if machine_id in self.exact:
            return self.exact[machine_id]
        n = self._rentals.get(machine_id, 0)
        self._rentals[machine_id] = n + 1
        rng = random.Random(f"boot:{self._seed}:{machine_id}:{n}")
        return self.typical(machine_id) * (1.0 + rng.uniform(-self._jitter, self._jitter))
