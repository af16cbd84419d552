"""Which offers to race first: expected time to a working login, learned per machine.

The model (docs/hosts.md explains it with a plot):

- A machine's time from create to its first SSH login is lognormal: ``log T ~ N(mu_m, sigma2)``.
  Its typical speed ``mu_m`` is drawn from the market's ``N(mu0, tau2)``. Each machine's
  estimate is the normal-normal posterior: its own (recency-weighted) observations shrunk
  toward the market prior, strongly when it has few, hardly when it has many. An unseen machine
  gets the prior itself, with the prior's width.
- Losers are not ignored: a candidate that lost after ``c`` seconds is known to need more than
  ``c``; it enters as the mean of the current estimate truncated below at ``c`` (censored data).
- Machines change: observations weigh half as much per ``half_life`` newer ones, and when the
  two newest are both ``change_factor`` times off the older median, the older ones are dropped.
- ``mu0``, ``tau2`` and ``sigma2`` are estimated from the history itself (a few records are
  enough; with none, defaults).
- The chance that a rental works at all is a Beta posterior whose prior mean is Vast's
  ``reliability`` (the prior, not the answer) and whose evidence is the machine's own wins and
  fatal failures.
- Score, lower first: ``optimistic time / p_ok * (price / median price) ** price_weight``, where
  the optimistic time is the posterior's ``exploration`` standard deviations below its mean, so
  unseen machines are tried rather than ignored. A machine with a fatal failure (stuck, OCI
  error, offline, SSH refused) within ``fatal_cooldown_s`` goes behind every other one.
- Exact ties are broken by a seeded hash of the offer id (deterministic, not the list order).

Everything here is a pure function of offers and records (unit-tested without a server); only
:meth:`OfferRanker.rank` touches the store. It fits the model to the whole history once and
reuses the fit for ``cache_s`` seconds or until :meth:`OfferRanker.invalidate` (the service
calls it after each write): a hundred provisions starting together read the store and fit once,
not a hundred times, and each of them then scores only its own offers' machines.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence

import attrs

from vastai_async.models import Offer
from vastai_async.reputation.ranking import (
    MachineEstimate,
    MarketPrior,
    RankedOffer,
    Ranking,
)
from vastai_async.reputation.records import HostHistory, HostOutcome, OutcomeKind

__all__ = ["OfferRanker"]

_TIMED = frozenset({OutcomeKind.WON}) | OutcomeKind.CENSORED
_INLINE_RECORDS = 1000  # more records than this are fitted in a worker thread
_MIN_EXACT = 3  # exact login times needed before the market prior is estimated from data


@attrs.frozen
class _Fit:
    """The model fitted to one snapshot of the history (independent of the offers)."""

    prior: MarketPrior
    by_machine: dict[int, list[HostOutcome]]  # newest first
    posts: dict[int, tuple[float, float]]  # (mean, variance) of each machine's log time


class OfferRanker:
    """Orders candidate offers by expected time to a working login (see the module docstring).

    Args:
        history: the store :meth:`rank` reads (``None``: only :meth:`rank_records` works).
        seed: seeds the tie-breaking hash.
        price_weight: how much price counts (0: not at all; 1: expected dollars to login).
        exploration: optimism for uncertain machines, in posterior standard deviations.
        fatal_cooldown_s: how long a fatal failure sends a machine to the back.
        half_life: a machine's observation weighs half as much after this many newer ones
            (so a machine whose speed changed is re-learned in a few rentals).
        change_factor: when a machine's two newest times are both this many times slower
            (or faster) than its older median, its older history is dropped (drift).
        reliability_weight: how many rentals' worth of evidence Vast's reliability counts for.
        default_login_s: the market's median time to login assumed without history.
        cache_s: how long :meth:`rank` reuses one fit of the store's history (other processes
            writing to a shared store are seen at most this late).
        clock: epoch seconds (for tests).
    """

    def __init__(
        self,
        history: HostHistory | None = None,
        *,
        seed: int = 0,
        price_weight: float = 0.25,
        exploration: float = 0.5,
        fatal_cooldown_s: float = 3600.0,
        half_life: float = 3.0,
        change_factor: float = 2.0,
        reliability_weight: float = 4.0,
        default_login_s: float = 120.0,
        cache_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.history = history
        self.seed = seed
        self.price_weight = price_weight
        self.exploration = exploration
        self.fatal_cooldown_s = fatal_cooldown_s
        self.half_life = half_life
        self.change_factor = change_factor
        self.reliability_weight = reliability_weight
        self.default_login_s = default_login_s
        self.cache_s = cache_s
        self._clock = clock
        self._cached: tuple[float, _Fit] | None = None  # (monotonic time of the read, fit)
        self._fitting: asyncio.Future[_Fit] | None = None
        self._generation = 0

    async def rank(self, offers: Sequence[Offer]) -> Ranking:
        """Rank ``offers`` with everything the store knows (one shared fit, see the module)."""
        if self.history is None:
            return self.rank_records(offers, [])
        cached = self._cached
        if cached is None or time.monotonic() - cached[0] >= self.cache_s:
            if self._fitting is None or self._fitting.done():
                self._fitting = asyncio.ensure_future(self._refit(self.history))
                self._fitting.add_done_callback(_retrieve)
            # Shielded: a caller cancelled while waiting leaves the fit to the others.
            fit = await asyncio.shield(self._fitting)
        else:
            fit = cached[1]
        return self._rank(offers, fit, self._clock())

    def invalidate(self) -> None:
        """Forget the cached fit: the next :meth:`rank` reads the store again.

        A fit in flight may have read the store before the write that calls this: its current
        waiters still get it, but no later :meth:`rank` joins it or keeps it.
        """
        self._cached = None
        self._fitting = None
        self._generation += 1

    async def _refit(self, history: HostHistory) -> _Fit:
        generation, read_at = self._generation, time.monotonic()
        records = await history.history()
        if len(records) > _INLINE_RECORDS:
            # A full store takes ~0.1 s of arithmetic: not on the event loop.
            fit = await asyncio.to_thread(self._fit_records, records)
        else:
            fit = self._fit_records(records)
        if generation == self._generation:  # no write landed meanwhile: fresh enough to keep
            self._cached = (read_at, fit)
        return fit

    def rank_records(
        self, offers: Sequence[Offer], records: Sequence[HostOutcome], *, now: float | None = None
    ) -> Ranking:
        """Rank ``offers`` given ``records`` (a pure function of its arguments and settings)."""
        return self._rank(offers, self._fit_records(records), self._clock() if now is None else now)

    def _rank(self, offers: Sequence[Offer], fit: _Fit, now: float) -> Ranking:
        prior = fit.prior
        machines = {o.machine_id for o in offers if o.machine_id is not None}
        estimates = self._estimates(fit, offers, machines)
        if not fit.by_machine:
            entries = tuple(
                RankedOffer(
                    offer_id=o.id,
                    machine_id=o.machine_id,
                    position=i,
                    score=0.0,
                    expected_login_s=prior.median_login_s,
                    p_ok=o.reliability if o.reliability is not None else 1.0,
                    records=0,
                    pushed_back=False,
                    reason="no host history: the caller's order",
                )
                for i, o in enumerate(offers)
            )
            return Ranking(offers=tuple(offers), entries=entries, informed=False, prior=prior)
        prices = [o.dph_total for o in offers if o.dph_total and o.dph_total > 0]
        ref_price = statistics.median(prices) if prices else None
        scored = []
        for offer in offers:
            est = estimates.get(offer.machine_id) if offer.machine_id is not None else None
            if est is None:
                est = self._unseen(offer, prior)
            factor = 1.0
            if ref_price and offer.dph_total and offer.dph_total > 0:
                factor = (offer.dph_total / ref_price) ** self.price_weight
            score = est.optimistic_login_s / est.p_ok * factor
            last_fatal = est.last_fatal_at
            pushed = last_fatal is not None and now - last_fatal < self.fatal_cooldown_s
            key = (pushed, round(score, 9), self._tie(offer.id))
            scored.append((key, offer, est, score, pushed))
        scored.sort(key=lambda item: item[0])
        entries = tuple(
            RankedOffer(
                offer_id=offer.id,
                machine_id=offer.machine_id,
                position=i,
                score=score,
                expected_login_s=est.expected_login_s,
                p_ok=est.p_ok,
                records=est.records,
                pushed_back=pushed,
                reason=_reason(est, prior, pushed, now),
            )
            for i, (_, offer, est, score, pushed) in enumerate(scored)
        )
        ordered = tuple(item[1] for item in scored)
        return Ranking(offers=ordered, entries=entries, informed=True, prior=prior)

    def estimate(
        self, records: Sequence[HostOutcome], *, offers: Sequence[Offer] = ()
    ) -> tuple[MarketPrior, dict[int, MachineEstimate]]:
        """The market prior and every recorded machine's estimate.

        Args:
            records: history, any order.
            offers: current offers, whose reliability (when given) is the prior of ``p_ok``.
        """
        fit = self._fit_records(records)
        return fit.prior, self._estimates(fit, offers, fit.by_machine.keys())

    def _fit_records(self, records: Sequence[HostOutcome]) -> _Fit:
        """The market prior and each machine's posterior, from ``records`` (any order)."""
        by_machine: dict[int, list[HostOutcome]] = {}
        for rec in sorted(records, key=lambda r: r.at, reverse=True):
            by_machine.setdefault(rec.machine_id, []).append(rec)
        prior = self._prior(by_machine)
        for _ in range(2):  # re-estimate mu0 once with the losers' censored times imputed
            posts = {m: self._posterior(recs, prior) for m, recs in by_machine.items()}
            informed = [mean for mean, _, n in posts.values() if n > 0]
            if prior.from_data and len(informed) >= 2:
                prior = attrs.evolve(prior, mu0=statistics.fmean(informed))
        final = {m: self._posterior(recs, prior)[:2] for m, recs in by_machine.items()}
        return _Fit(prior=prior, by_machine=by_machine, posts=final)

    def _estimates(
        self, fit: _Fit, offers: Sequence[Offer], machines: Iterable[int]
    ) -> dict[int, MachineEstimate]:
        """The estimates of ``machines`` that have history."""
        reliability = {o.machine_id: o.reliability for o in offers if o.machine_id is not None}
        estimates = {}
        for machine_id in machines:
            recs = fit.by_machine.get(machine_id)
            if recs is None:
                continue
            mean, var = fit.posts[machine_id]
            rel = reliability.get(machine_id)
            if rel is None:
                rel = next((r.reliability for r in recs if r.reliability is not None), None)
            estimates[machine_id] = self._machine(machine_id, recs, mean, var, fit.prior, rel)
        return estimates

    # -- the model --------------------------------------------------------------------------

    def _prior(self, by_machine: dict[int, list[HostOutcome]]) -> MarketPrior:
        exact = {
            m: [math.log(r.login_s) for r in recs if _exact(r) and r.login_s is not None]
            for m, recs in by_machine.items()
        }
        exact = {m: ys for m, ys in exact.items() if ys}
        total = sum(len(ys) for ys in exact.values())
        default = MarketPrior(
            mu0=math.log(self.default_login_s), tau2=0.5, sigma2=0.1, machines=len(exact),
            from_data=False,
        )  # fmt: skip
        if total < _MIN_EXACT:
            return default
        means = [statistics.fmean(ys) for ys in exact.values()]
        within = [y - statistics.fmean(ys) for ys in exact.values() if len(ys) > 1 for y in ys]
        dof = sum(len(ys) - 1 for ys in exact.values() if len(ys) > 1)
        sigma2 = sum(d * d for d in within) / dof if dof > 0 else default.sigma2
        sigma2 = min(max(sigma2, 0.02), 1.0)
        tau2 = default.tau2
        if len(means) > 1:
            avg_n = total / len(exact)
            tau2 = min(max(statistics.variance(means) - sigma2 / avg_n, 0.05), 4.0)
        return MarketPrior(
            mu0=statistics.fmean(means), tau2=tau2, sigma2=sigma2, machines=len(exact),
            from_data=True,
        )  # fmt: skip

    def _posterior(
        self, recs: Sequence[HostOutcome], prior: MarketPrior
    ) -> tuple[float, float, float]:
        """(mean, variance, effective observations) of a machine's typical log time."""
        timed: list[tuple[float, bool]] = []  # (log seconds, censored), newest first
        for rec in recs:
            if _exact(rec):
                assert rec.login_s is not None
                timed.append((math.log(rec.login_s), False))
            elif rec.kind in _TIMED and rec.elapsed_s is not None and rec.elapsed_s > 0:
                timed.append((math.log(rec.elapsed_s), True))
        timed = self._since_change(timed)
        obs = [(y, c, 0.5 ** (rank / self.half_life)) for rank, (y, c) in enumerate(timed)]
        prec0 = 1.0 / prior.tau2
        exact_w = sum(w for _, c, w in obs if not c)
        exact_sum = sum(w * y for y, c, w in obs if not c)
        mean = (prior.mu0 * prec0 + exact_sum / prior.sigma2) / (prec0 + exact_w / prior.sigma2)
        var = 1.0 / (prec0 + exact_w / prior.sigma2)
        if any(c for _, c, _ in obs):
            for _ in range(3):
                spread = math.sqrt(prior.sigma2 + var)
                imputed = sum(w * _trunc_mean(mean, spread, y) for y, c, w in obs if c)
                cens_w = sum(w for _, c, w in obs if c)
                prec = prec0 + (exact_w + cens_w) / prior.sigma2
                mean = (prior.mu0 * prec0 + (exact_sum + imputed) / prior.sigma2) / prec
                var = 1.0 / prec
        return mean, var, sum(w for _, _, w in obs)

    def _since_change(self, timed: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
        """Drop the past when the two newest observations show the machine changed.

        Both newest more than ``change_factor`` slower than the median of the older exact
        times (a censored time counts: it is a lower bound), or both exact and that much
        faster: the machine drifted, and what it did before no longer describes it.
        """
        older = [y for y, censored in timed[2:] if not censored]
        if len(timed) < 3 or not older:
            return timed
        median = statistics.median(older)
        step = math.log(self.change_factor)
        newest = timed[:2]
        slower = all(y - median > step for y, _ in newest)
        faster = all(not censored and median - y > step for y, censored in newest)
        return newest if slower or faster else timed

    def _machine(
        self,
        machine_id: int,
        recs: Sequence[HostOutcome],
        mean: float,
        var: float,
        prior: MarketPrior,
        reliability: float | None,
    ) -> MachineEstimate:
        successes = failures = 0.0
        for rank, rec in enumerate(recs):
            weight = 0.5 ** (rank / self.half_life)
            if rec.kind in (OutcomeKind.WON, OutcomeKind.LOST_RUNNING, OutcomeKind.ADOPTED):
                successes += weight
            elif rec.kind in OutcomeKind.FATAL:
                failures += weight
        p_ok = self._p_ok(reliability, successes, failures)
        fatal = next((r for r in recs if r.kind in OutcomeKind.FATAL), None)
        spread = math.sqrt(var)
        return MachineEstimate(
            machine_id=machine_id,
            mean_log_s=mean,
            var_log_s=var,
            expected_login_s=math.exp(mean + (prior.sigma2 + var) / 2),
            optimistic_login_s=math.exp(mean - self.exploration * spread + prior.sigma2 / 2),
            p_ok=p_ok,
            records=len(recs),
            wins=sum(r.kind == OutcomeKind.WON for r in recs),
            failures=sum(r.kind in OutcomeKind.FATAL for r in recs),
            last_fatal_at=fatal.at if fatal is not None else None,
            last_fatal_kind=fatal.kind if fatal is not None else None,
            last_seen=recs[0].at if recs else None,
        )

    def _unseen(self, offer: Offer, prior: MarketPrior) -> MachineEstimate:
        return self._machine(
            offer.machine_id if offer.machine_id is not None else -1,
            [],
            prior.mu0,
            prior.tau2,
            prior,
            offer.reliability,
        )

    def _p_ok(self, reliability: float | None, successes: float, failures: float) -> float:
        rel = min(max(reliability if reliability is not None else 0.9, 0.01), 0.999)
        k = self.reliability_weight
        return max((k * rel + successes) / (k + successes + failures), 0.02)

    def _tie(self, offer_id: int) -> str:
        return hashlib.sha256(f"{self.seed}:{offer_id}".encode()).hexdigest()


def _retrieve(fit: asyncio.Future[_Fit]) -> None:
    # Every waiter may have been cancelled: read a failed fit's exception so asyncio does not
    # report it as never retrieved (the next rank() tries again).
    if not fit.cancelled():
        fit.exception()


def _exact(rec: HostOutcome) -> bool:
    return rec.kind == OutcomeKind.WON and rec.login_s is not None and rec.login_s > 0


def _trunc_mean(mean: float, spread: float, low: float) -> float:
    """E[Y | Y > low] for Y ~ N(mean, spread**2)."""
    a = (low - mean) / spread
    if a > 8.0:
        return low + spread / a  # the Mills ratio's tail: E - low -> spread / a
    tail = 0.5 * math.erfc(a / math.sqrt(2.0))
    density = math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    return mean + spread * density / tail


def _reason(est: MachineEstimate, prior: MarketPrior, pushed: bool, now: float) -> str:
    head = (
        f"unseen machine: market prior {prior.median_login_s:.0f} s to login"
        if est.records == 0
        else f"{est.records} records ({est.wins} won, {est.failures} fatal): "
        f"expected {est.expected_login_s:.0f} s to login"
    )
    text = f"{head}, p(ok) {est.p_ok:.2f}"
    if pushed and est.last_fatal_at is not None:
        ago = max(0.0, now - est.last_fatal_at)
        text += f"; pushed back: {est.last_fatal_kind} {ago:.0f} s ago"
    return text
