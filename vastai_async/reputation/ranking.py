"""What a ranking says: the market prior, each machine's estimate, each offer's place and why.

The data :class:`~vastai_async.reputation.ranker.OfferRanker` produces (split from the ranker so
that it reads as the model only).
"""

from __future__ import annotations

import math

import attrs

from vastai_async.events import Event
from vastai_async.models import Offer

__all__ = ["MachineEstimate", "MarketPrior", "OffersRanked", "RankedOffer", "Ranking"]


@attrs.frozen(kw_only=True)
class MarketPrior:
    """What the market looks like, from every machine's history (log seconds).

    Attributes:
        mu0: mean of machines' typical log time to login.
        tau2: variance of that across machines.
        sigma2: variance of one machine's log time between rentals.
        machines: machines with timed history.
        from_data: ``False`` when there was too little history and defaults were used.
    """

    mu0: float
    tau2: float
    sigma2: float
    machines: int
    from_data: bool

    @property
    def median_login_s(self) -> float:
        """A typical machine's median time to login."""
        return math.exp(self.mu0)


@attrs.frozen(kw_only=True)
class MachineEstimate:
    """What is believed about one machine.

    Attributes:
        machine_id: the machine.
        mean_log_s: posterior mean of its typical log seconds to login.
        var_log_s: posterior variance of that mean.
        expected_login_s: expected seconds to login (lognormal mean, all uncertainty included).
        optimistic_login_s: ``exploration`` posterior standard deviations faster.
        p_ok: chance a rental of it works (Beta posterior around Vast's reliability).
        records: its records.
        wins: how many it won.
        failures: its fatal failures.
        last_fatal_at: epoch seconds of its last fatal failure.
        last_fatal_kind: what that was.
        last_seen: epoch seconds of its newest record.
    """

    machine_id: int
    mean_log_s: float
    var_log_s: float
    expected_login_s: float
    optimistic_login_s: float
    p_ok: float
    records: int
    wins: int
    failures: int
    last_fatal_at: float | None
    last_fatal_kind: str | None
    last_seen: float | None


@attrs.frozen(kw_only=True)
class RankedOffer:
    """One offer's place in a ranking, and why.

    Attributes:
        offer_id: the offer.
        machine_id: its machine.
        position: 0 for the first to race.
        score: lower races first (seconds, price-weighted).
        expected_login_s: expected seconds from create to a working login.
        p_ok: chance a rental of it works.
        records: history records of its machine.
        pushed_back: a recent fatal failure sent it behind the others.
        reason: one line for people.
    """

    offer_id: int
    machine_id: int | None
    position: int
    score: float
    expected_login_s: float
    p_ok: float
    records: int
    pushed_back: bool
    reason: str


@attrs.frozen(kw_only=True)
class Ranking:
    """Offers in racing order, with each one's reasons.

    Attributes:
        offers: the offers, first to race first.
        entries: one :class:`RankedOffer` per offer, same order.
        informed: history existed (otherwise the caller's order is kept).
        prior: the market prior used.
    """

    offers: tuple[Offer, ...]
    entries: tuple[RankedOffer, ...]
    informed: bool
    prior: MarketPrior


@attrs.frozen(kw_only=True)
class OffersRanked(Event):
    """The candidates were reordered by the host history before the race (why each is where).

    Attributes:
        entries: every candidate in racing order with its expected time and reason.
        prior_login_s: the market's median time to login the ranking assumed.
    """

    entries: tuple[RankedOffer, ...]
    prior_login_s: float
