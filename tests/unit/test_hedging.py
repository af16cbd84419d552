"""HedgePolicy: the delay comes from observed boot-time quantiles, the prior until enough."""

from __future__ import annotations

import pytest

from vastai_async import BootTimes, HedgePolicy, InvalidRequestError
from vastai_async.hedging import validate_hedge


def test_prior_until_enough_samples_then_the_quantile() -> None:
    history = BootTimes()
    policy = HedgePolicy(quantile=0.5, min_samples=3, prior_delay_s=100.0, min_delay_s=1.0)
    delay, basis = policy.delay(history)
    assert delay == 100.0
    assert "prior" in basis
    for value in (10.0, 20.0):
        history.observe(value)
    assert policy.delay(history)[0] == 100.0  # two of three
    history.observe(60.0)
    delay, basis = policy.delay(history)
    assert delay == 20.0
    assert basis == "p50 of 3 observed boot times"


def test_the_policys_own_history_wins_and_the_floor_holds() -> None:
    own = BootTimes([1.0] * 8)
    policy = HedgePolicy(min_samples=8, min_delay_s=5.0, history=own)
    assert policy.delay(BootTimes([500.0] * 8)) == (5.0, "p75 of 8 observed boot times")


def test_boot_times_keep_the_most_recent_and_ignore_nonsense() -> None:
    history = BootTimes([1.0, 2.0, 3.0], keep=2)
    history.observe(float("nan"))
    history.observe(-4.0)
    assert len(history) == 2
    assert history.quantile(0.0) == 2.0
    assert BootTimes().quantile(0.5) is None


def test_scaled_scales_the_delays_only() -> None:
    history = BootTimes([50.0])
    scaled = HedgePolicy(prior_delay_s=100.0, min_delay_s=10.0, history=history).scaled(0.1)
    assert (scaled.prior_delay_s, scaled.min_delay_s) == pytest.approx((10.0, 1.0))
    assert scaled.history is history


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"start": 0}, "start"),
        ({"start": True}, "start"),
        ({"quantile": 1.0}, "quantile"),
        ({"quantile": 0}, "quantile"),
        ({"prior_delay_s": -1.0}, "prior_delay_s"),
        ({"min_samples": 0}, "min_samples"),
    ],
)
def test_bad_policies_are_refused_by_name(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequestError, match=field):
        HedgePolicy(**kwargs)  # type: ignore[arg-type]


def test_validate_hedge_needs_start_within_fan_out() -> None:
    validate_hedge(None, 1)
    validate_hedge(HedgePolicy(start=2), 2)
    with pytest.raises(InvalidRequestError, match="fan_out"):
        validate_hedge(HedgePolicy(start=3), 2)
    with pytest.raises(InvalidRequestError, match="HedgePolicy"):
        validate_hedge(2, 4)
