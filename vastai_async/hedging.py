"""Hedged provisioning: start fewer candidates, add more only when the first are late.

After Dean and Barroso, "The Tail at Scale" (CACM 2013): instead of renting ``fan_out`` machines
at once and paying for every loser, a hedged race starts :attr:`HedgePolicy.start` candidates
and adds one more each time a candidate in flight is *late*: created longer ago than the
``quantile`` of the boot times seen so far (created to first listed ``running``) and still not
running. The delay comes from observations, not a constant: every candidate that reaches
``running`` in any race of the service adds one to :class:`BootTimes`; until ``min_samples``
are in, :attr:`HedgePolicy.prior_delay_s` is used. Each hedge emits a :class:`Hedged` event
saying which candidate was late, by how much, and what the delay was derived from.

Failed candidates are still replaced at once, as in every race: hedging only decides when to add
candidates *beyond* the ones started, never fewer than a failure requires.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import attrs

from vastai_async.errors import InvalidRequestError
from vastai_async.events import Event

__all__ = ["BootTimes", "HedgePolicy", "Hedged"]


class BootTimes:
    """Observed boot times (seconds from create to first listed ``running``), most recent kept.

    Shared by every race of a service (and by several services if you pass the same policy);
    not thread-safe, like the rest of the SDK (one event loop).

    Args:
        samples: observations to start from (for example from earlier runs).
        keep: how many of the most recent observations are kept.
    """

    def __init__(self, samples: Iterable[float] = (), *, keep: int = 256) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InvalidRequestError(f"keep must be a positive integer, got {keep!r}")
        self._samples: deque[float] = deque(maxlen=keep)
        for value in samples:
            self.observe(value)

    def observe(self, seconds: float) -> None:
        """Record one boot time (negative or non-finite values are ignored)."""
        if isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0:
            self._samples.append(float(seconds))

    def __len__(self) -> int:
        return len(self._samples)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (linear interpolation) of the kept samples; ``None`` if empty."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        pos = (len(ordered) - 1) * q
        low = int(pos)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)

    def __repr__(self) -> str:
        return f"BootTimes(n={len(self)})"


def _start(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"HedgePolicy.{attribute.name} must be an integer >= 1")


def _unit(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise InvalidRequestError(
            f"HedgePolicy.{attribute.name} must be a number in (0, 1), got {value!r}"
        )


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidRequestError(
            f"HedgePolicy.{attribute.name} must be a number > 0, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class HedgePolicy:
    """When a race adds candidates beyond the first ones (``provision_instance(hedge=...)``).

    The race's ``fan_out`` stays the most candidates in flight; the policy starts ``start`` of
    them and adds one each time a candidate in flight is late (each candidate triggers at most
    one hedge).

    Attributes:
        start: candidates created at once when the race starts (<= ``fan_out``).
        quantile: a candidate is late once older than this quantile of observed boot times.
        min_samples: observations needed before the quantile is trusted.
        prior_delay_s: the delay while fewer than ``min_samples`` boot times were seen.
        min_delay_s: the delay is never shorter than this.
        history: observed boot times; ``None`` uses the service's own (every race of the
            service records into it). Pass one :class:`BootTimes` to share it across services.
    """

    start: int = attrs.field(default=2, validator=_start)
    quantile: float = attrs.field(default=0.75, validator=_unit)
    min_samples: int = attrs.field(default=8, validator=_start)
    prior_delay_s: float = attrs.field(default=120.0, validator=_positive)
    min_delay_s: float = attrs.field(default=10.0, validator=_positive)
    history: BootTimes | None = attrs.field(default=None, eq=False)

    def delay(self, history: BootTimes) -> tuple[float, str]:
        """The delay after which a candidate is late, and what it was derived from."""
        source = self.history if self.history is not None else history
        n = len(source)
        value = source.quantile(self.quantile) if n >= self.min_samples else None
        if value is None:
            basis = (
                f"prior {self.prior_delay_s:g} s ({n} boot times seen, {self.min_samples} needed)"
            )
            return max(self.prior_delay_s, self.min_delay_s), basis
        basis = f"p{self.quantile * 100:g} of {n} observed boot times"
        return max(value, self.min_delay_s), basis

    def scaled(self, factor: float) -> HedgePolicy:
        """A copy whose delays run on a clock scaled by ``factor`` (the sandbox's time scale).

        Observed boot times are already on the clock they were measured on and are kept.
        """
        if not factor > 0:
            raise InvalidRequestError(f"scale factor must be > 0, got {factor!r}")
        return attrs.evolve(
            self, prior_delay_s=self.prior_delay_s * factor, min_delay_s=self.min_delay_s * factor
        )


@attrs.frozen(kw_only=True)
class Hedged(Event):
    """The race added a candidate because one in flight was late.

    Attributes:
        late_instance_id: the candidate that was late (not running yet).
        late_offer_id: its offer.
        age_s: how long ago it was created.
        delay_s: the delay it passed.
        basis: what the delay was derived from (observed quantile or the prior).
        in_flight: candidates in flight the race now aims for.
    """

    late_instance_id: int
    late_offer_id: int
    age_s: float
    delay_s: float
    basis: str
    in_flight: int


def validate_hedge(hedge: object, fan_out: int) -> None:
    """Refuse a ``hedge=`` argument that is not a :class:`HedgePolicy` fitting ``fan_out``.

    Raises:
        InvalidRequestError: the wrong type, or ``start`` above ``fan_out``.
    """
    if hedge is None:
        return
    if not isinstance(hedge, HedgePolicy):
        raise InvalidRequestError(f"hedge must be a HedgePolicy or None, got {hedge!r}")
    if hedge.start > fan_out:
        raise InvalidRequestError(
            f"hedge.start={hedge.start} is above fan_out={fan_out}: a hedged race starts fewer "
            "candidates than fan_out and adds up to fan_out"
        )
