"""How :class:`~vastai_async.VastAIService` uses the host history, kept out of the race.

Before a race: rank the candidates (when asked and when history exists). During it: a
:class:`~vastai_async.reputation.HostRecorder` listens to the race's events. After it (won,
failed or cancelled): its outcomes are written in the background; :meth:`HostReputation.close`
waits for those writes. A broken store never breaks a race: its errors are logged and the race
goes on in the caller's order.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Sequence

from vastai_async.errors import InvalidRequestError
from vastai_async.models import CreateInstanceRequest, Instance, Offer
from vastai_async.reputation.ranker import OfferRanker
from vastai_async.reputation.ranking import OffersRanked, Ranking
from vastai_async.reputation.records import (
    HostHistory,
    HostOutcome,
    HostRecorder,
    OutcomeKind,
    classify_failure,
)

__all__ = ["HostReputation", "RankArg", "check_rank"]

RankArg = OfferRanker | bool | None
"""``provision_instance(rank=...)``: ``True`` (the service's ranker, when history exists), an
:class:`OfferRanker` of your own, or ``False``/``None`` for the caller's order."""


def check_rank(rank: object) -> RankArg:
    """``rank`` as given, or :class:`InvalidRequestError` naming what is wrong with it."""
    if rank is None or isinstance(rank, bool | OfferRanker):
        return rank
    raise InvalidRequestError(
        f"rank must be True, False, None or an OfferRanker, got {type(rank).__name__}"
    )


class HostReputation:
    """One service's host history and ranker.

    Args:
        history: the store (``None``: nothing is remembered and nothing is ranked).
        logger: where store failures are reported.
        owns_history: close the store with the service.
    """

    def __init__(
        self, history: HostHistory | None, *, logger: logging.Logger, owns_history: bool
    ) -> None:
        self.history = history
        self.ranker = OfferRanker(history) if history is not None else None
        self._log = logger
        self._owns = owns_history
        self._writes: set[asyncio.Task[None]] = set()
        # Rankers passed as ``rank=``: the service's writes invalidate their fits too.
        self._rankers: weakref.WeakSet[OfferRanker] = weakref.WeakSet()

    async def order(
        self, candidates: Sequence[Offer], rank: RankArg
    ) -> tuple[list[Offer], Ranking | None]:
        """The candidates in racing order, and the ranking when one was applied."""
        ranker = rank if isinstance(rank, OfferRanker) else self.ranker if rank else None
        if isinstance(rank, OfferRanker):
            self._rankers.add(rank)
        if ranker is None or len(candidates) < 2:
            return list(candidates), None
        try:
            ranking = await ranker.rank(candidates)
        except Exception as err:  # a broken store must not cost anyone a machine
            self._log.warning("host history unavailable, racing in the given order: %s", err)
            return list(candidates), None
        if not ranking.informed:
            return list(candidates), None
        return list(ranking.offers), ranking

    @staticmethod
    def event(ranking: Ranking, *, race_id: str, job_id: str) -> OffersRanked:
        """The event saying why each candidate is where it is."""
        return OffersRanked(
            race_id=race_id,
            job_id=job_id,
            entries=ranking.entries,
            prior_login_s=ranking.prior.median_login_s,
        )

    def recorder(
        self, candidates: Sequence[Offer], request: CreateInstanceRequest
    ) -> HostRecorder | None:
        """An ``on_event`` callback collecting the race's outcomes (``None`` without a store)."""
        if self.history is None:
            return None
        image = request.image or (
            f"template:{request.template_hash_id}" if request.template_hash_id else None
        )
        return HostRecorder(candidates, image=image)

    def save(self, recorder: HostRecorder | None) -> None:
        """Write what the race taught, in the background (never raises, never blocks)."""
        if recorder is not None:
            self._save(recorder.outcomes())

    def save_adopted(self, inst: Instance, error: BaseException | None) -> None:
        """Write what ``adopt()`` learned of ``inst``'s machine (``error``: its login failed).

        A login proven is :attr:`OutcomeKind.ADOPTED` (the machine works; its boot time is
        unknown); a failed one is classified like a race's (no SSH login: ``ssh_refused``).
        """
        if inst.machine_id is None:
            return
        if error is None:
            kind, reason = OutcomeKind.ADOPTED, "SSH login proven on adopt"
        elif inst.actual_status != "running" or "permission" in str(error):
            # Not running yet (a race would still be waiting), or our key was not accepted
            # (another key than the one it was made with): not held against the machine.
            kind, reason = OutcomeKind.FAILED, f"adopt ({inst.actual_status}): {error}"
        else:
            kind, reason = classify_failure(str(error)), f"adopt: {error}"
        outcome = HostOutcome(
            machine_id=inst.machine_id,
            offer_id=None,
            instance_id=inst.id,
            kind=kind,
            reason=reason,
            image=inst.image_uuid,
            dph_total=inst.dph_total,
            gpu_name=inst.gpu_name,
            at=time.time(),
        )
        self._save([outcome])

    def _save(self, outcomes: Sequence[HostOutcome]) -> None:
        if not outcomes or self.history is None:
            return
        task = asyncio.get_running_loop().create_task(self._write(self.history, outcomes))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, history: HostHistory, outcomes: Sequence[HostOutcome]) -> None:
        try:
            await history.record(outcomes)
        except Exception as err:
            self._log.warning("could not record %d host outcomes: %s", len(outcomes), err)
        # The next race ranks with what this one taught.
        for ranker in [self.ranker, *self._rankers]:
            if ranker is not None:
                ranker.invalidate()

    async def drain(self) -> None:
        """Wait for writes in flight."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def close(self) -> None:
        """Wait for writes in flight, then close the store if the service made it."""
        await self.drain()
        if self._owns and self.history is not None:
            await self.history.close()
