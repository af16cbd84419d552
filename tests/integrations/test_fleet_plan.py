"""The fleet reaper's decision, a pure function: who is alive, a new suspect, or dead now.

No Redis, no sandbox: ``plan_peer_reap`` over data, one row per rule. Also the worker's Redis
settings, which must ride out a Redis restart.
"""

from __future__ import annotations

import pytest

pytest.importorskip("arq", reason="the arq extra is not installed")

from arq.connections import RedisSettings

from vastai_async.integrations.arq import WorkerOptions, worker_settings
from vastai_async.integrations.fleet import PeerReapPlan, plan_peer_reap

NOW = 1000.0
REGISTERED_GRACE = 5.0
ORPHAN_GRACE = 60.0


def _plan(
    owner: str,
    *,
    registered: bool,
    alive: bool,
    first_seen: float | None,
) -> PeerReapPlan:
    return plan_peer_reap(
        candidates=[owner],
        registered={owner} if registered else set(),
        alive={owner} if alive else set(),
        suspects={} if first_seen is None else {owner: first_seen},
        now=NOW,
        registered_grace_s=REGISTERED_GRACE,
        orphan_grace_s=ORPHAN_GRACE,
    )


@pytest.mark.parametrize(
    ("registered", "alive", "first_seen", "expected"),
    [
        # A heartbeat means alive, whatever was suspected before.
        (True, True, None, PeerReapPlan()),
        (True, True, NOW - 999, PeerReapPlan(cleared=("w",))),
        (False, True, NOW - 999, PeerReapPlan(cleared=("w",))),
        # No heartbeat: a first look only records the suspicion (a live worker whose heartbeat
        # a Redis restore dropped gets to beat again).
        (True, False, None, PeerReapPlan(suspected=("w",))),
        (False, False, None, PeerReapPlan(suspected=("w",))),
        # Registered: dead on a later look, once the short grace has passed.
        (True, False, NOW - 4.9, PeerReapPlan()),
        (True, False, NOW - 5.0, PeerReapPlan(dead=("w",))),
        # Known only by label (Redis lost the registration): a whole grace period, so a live
        # worker has time to register again.
        (False, False, NOW - 5.0, PeerReapPlan()),
        (False, False, NOW - 59.9, PeerReapPlan()),
        (False, False, NOW - 60.0, PeerReapPlan(dead=("w",))),
    ],
)
def test_plan_peer_reap_rules(
    registered: bool, alive: bool, first_seen: float | None, expected: PeerReapPlan
) -> None:
    assert _plan("w", registered=registered, alive=alive, first_seen=first_seen) == expected


def test_suspects_no_longer_candidates_are_forgotten_and_the_plan_is_sorted() -> None:
    plan = plan_peer_reap(
        candidates=["b", "a", "c"],
        registered={"a", "b", "c"},
        alive=set(),
        suspects={"a": 0.0, "b": 0.0, "gone": 0.0},
        now=NOW,
        registered_grace_s=REGISTERED_GRACE,
        orphan_grace_s=ORPHAN_GRACE,
    )
    assert plan == PeerReapPlan(dead=("a", "b"), suspected=("c",), cleared=("gone",))


def test_worker_options_derive_the_tick_the_grace_and_the_promise() -> None:
    options = WorkerOptions(deployment="render", heartbeat_ttl_s=60, heartbeat_interval_s=15)
    assert (options.tick_s, options.grace_s) == (30.0, 60.0)
    assert options.max_machine_life_after_death_s == 120.0  # TTL + 2 ticks <= 2 TTL + a tick
    tuned = WorkerOptions(deployment="render", reap_interval_s=10, orphan_grace_s=90)
    assert (tuned.tick_s, tuned.grace_s) == (10.0, 90.0)
    assert tuned.lease_key(42) == "vastai-async:heartbeat:lease:render:42"


def test_worker_redis_settings_retry_through_a_restart_unless_the_user_chose() -> None:
    options = WorkerOptions(deployment="render")
    ours = worker_settings(options, redis_settings=RedisSettings(host="redis.internal"))
    settings = ours["redis_settings"]
    assert settings.host == "redis.internal"
    assert settings.retry is not None
    assert OSError in settings.retry_on_error  # a refused connect while Redis restarts
    assert worker_settings(options)["redis_settings"].retry is not None
    chosen = RedisSettings(retry_on_error=[TimeoutError])
    assert worker_settings(options, redis_settings=chosen)["redis_settings"] is chosen
