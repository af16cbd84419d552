"""Boot latencies and lifecycle faults: when an instance reaches each state, and how it fails.

Boot latency is a trait of the machine (a host with a slow disk or link is slow for every
rental), drawn once per machine from a seeded heavy-tailed distribution, with a small seeded
jitter per rental: a client that remembers how a machine booted can learn from it. Now and then
a machine's character drifts (its link got slower, its image cache was wiped, it was upgraded):
before each rental after the first, with probability ``drift_rate`` its typical latency is
multiplied by a seeded factor from then on, so remembering forever is wrong too. Everything is
fixed by the seed and the machine's rental count. Tests that need exact timings set the latency
of an offer or machine.
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
        drift_rate: chance, before each rental after a machine's first, that its typical
            latency changes for good (0 switches drift off).
        drift_sigma: spread of a drift's factor (lognormal, log-space standard deviation; a
            drift is at least a factor of 1.5 faster or slower, and a machine stays within a
            factor of 8 of its first character).
    """

    def __init__(
        self,
        *,
        seed: int,
        distribution: Callable[[random.Random], float] = default_boot_distribution,
        jitter: float = 0.1,
        drift_rate: float = 0.02,
        drift_sigma: float = 1.0,
    ) -> None:
        self._seed = seed
        self._distribution = distribution
        self._jitter = jitter
        self.drift_rate = drift_rate
        self.drift_sigma = drift_sigma
        self._typical: dict[int, float] = {}
        self._drift: dict[int, float] = {}  # machine id -> product of its drifts so far
        self._rentals: dict[int, int] = {}
        self.exact: dict[int, float] = {}  # by offer id or machine id
        #: ``(machine id, rental number, factor)`` of every drift so far, in order.
        self.drifts: list[tuple[int, int, float]] = []

    def typical(self, machine_id: int) -> float:
        """A machine's typical boot latency now (its drifts so far included)."""
        if machine_id not in self._typical:
            rng = random.Random(f"boot:{self._seed}:{machine_id}")
            self._typical[machine_id] = float(self._distribution(rng))
        return self._typical[machine_id] * self._drift.get(machine_id, 1.0)

    def rentals(self, machine_id: int) -> int:
        """How many rentals of this machine have drawn a latency so far."""
        return self._rentals.get(machine_id, 0)

    def draw(self, *, offer_id: int, machine_id: int) -> float:
        """The boot latency of the next rental of this offer."""
        if offer_id in self.exact:
            return self.exact[offer_id]
        if machine_id in self.exact:
            return self.exact[machine_id]
        n = self._rentals.get(machine_id, 0)
        if n > 0 and self.drift_rate > 0:
            self._maybe_drift(machine_id, n)  # before counting: the drift is noted at rental n
        self._rentals[machine_id] = n + 1
        rng = random.Random(f"boot:{self._seed}:{machine_id}:{n}")
        return self.typical(machine_id) * (1.0 + rng.uniform(-self._jitter, self._jitter))

    def drift(self, machine_id: int, factor: float) -> None:
        """Change a machine's character now: its typical latency times ``factor`` from the next
        rental on (for tests and benchmarks; still within a factor of 8 of its first)."""
        before = self._drift.get(machine_id, 1.0)
        after = min(max(before * factor, 1 / 8), 8.0)
        self._drift[machine_id] = after
        self.drifts.append((machine_id, self._rentals.get(machine_id, 0), after / before))

    def _maybe_drift(self, machine_id: int, n: int) -> None:
        rng = random.Random(f"drift:{self._seed}:{machine_id}:{n}")
        if rng.random() >= self.drift_rate:
            return
        magnitude = max(math.log(1.5), abs(rng.gauss(0.0, self.drift_sigma)))
        # A machine never ends up more than 8 times faster or slower than it was born.
        self.drift(machine_id, math.exp(magnitude if rng.random() < 0.5 else -magnitude))
