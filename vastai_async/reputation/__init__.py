"""Host reputation: remember how each machine boots, and race the offers most likely to win.

- :class:`HostOutcome` records, written by a :class:`HostRecorder` from a race's events;
- stores: :class:`SQLiteHostHistory` (local default, in the state directory) and
  :class:`RedisHostHistory` (shared by a fleet of workers; needs the ``arq`` extra);
- :class:`OfferRanker`: orders candidates by expected time to a working login.

See docs/hosts.md.
"""

from __future__ import annotations

from vastai_async.reputation.ranker import OfferRanker
from vastai_async.reputation.ranking import (
    MachineEstimate,
    MarketPrior,
    OffersRanked,
    RankedOffer,
    Ranking,
)
from vastai_async.reputation.records import (
    HostHistory,
    HostHistoryError,
    HostOutcome,
    HostRecorder,
    OutcomeKind,
    classify_failure,
)
from vastai_async.reputation.redis_store import RedisHostHistory
from vastai_async.reputation.sqlite_store import SQLiteHostHistory

__all__ = [
    "HostHistory",
    "HostHistoryError",
    "HostOutcome",
    "HostRecorder",
    "MachineEstimate",
    "MarketPrior",
    "OfferRanker",
    "OffersRanked",
    "OutcomeKind",
    "RankedOffer",
    "Ranking",
    "RedisHostHistory",
    "SQLiteHostHistory",
    "classify_failure",
]
