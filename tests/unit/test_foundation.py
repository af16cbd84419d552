"""Timings, pacing table and the error tree: the contracts every other module relies on."""

from __future__ import annotations

import pytest

import vastai_async
from vastai_async import errors
from vastai_async.pacing import DEFAULT_MIN_INTERVALS, Pacing
from vastai_async.timings import Timings


def test_scaled_timings_scale_cloud_waits_and_leave_network_timeouts() -> None:
    base = Timings()
    fast = base.scaled(0.05)
    for name in Timings.CLOUD_FIELDS:
        assert getattr(fast, name) == pytest.approx(getattr(base, name) * 0.05)
    assert fast.connect_timeout_s == base.connect_timeout_s
    assert fast.login_timeout_s == base.login_timeout_s
    assert fast.request_timeout_s == base.request_timeout_s
    # Teardown is HTTP work at network speed: a scaled 1.2 s budget failed under load.
    assert fast.teardown_budget_s == base.teardown_budget_s


def test_default_loading_deadline_allows_twenty_minute_image_pulls() -> None:
    assert Timings().loading_s >= 20 * 60


@pytest.mark.parametrize("field", ["overall_s", "poll_interval_s", "request_timeout_s"])
@pytest.mark.parametrize("value", [0, -1.0])
def test_timings_refuse_non_positive(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Timings(**{field: value})


def test_probe_pause_never_below_floor() -> None:
    assert Timings(probe_interval_s=0.1, probe_floor_s=0.5).probe_pause_s == 0.5
    assert Timings(probe_interval_s=2.0, probe_floor_s=0.5).probe_pause_s == 2.0


def test_pacing_table_reads_thresholds_as_rates() -> None:
    pacing = Pacing()
    assert pacing.min_interval("GET", "/api/v0/instances/{id}/") == pytest.approx(0.5)
    assert pacing.min_interval("PUT", "/api/v0/instances/{id}/") == pytest.approx(1.0)
    assert pacing.min_interval("DELETE", "/api/v0/instances/{id}/") == pytest.approx(1 / 3)
    assert pacing.min_interval("PUT", "/api/v0/asks/{id}/") == pytest.approx(1 / 4.5)
    assert pacing.min_interval("GET", "/api/v0/template/") == pytest.approx(1 / 3.0)  # spec L2909
    assert pacing.min_interval("GET", "/api/v1/instances/") == pytest.approx(1.0)  # spec L8393
    assert pacing.min_interval("PUT", "/api/v0/instances/bid_price/{id}/") == pytest.approx(1 / 5.5)
    assert pacing.min_interval("GET", "/unknown") == pacing.default_interval_s
    scaled = pacing.scaled(0.1)
    for key, value in DEFAULT_MIN_INTERVALS.items():
        method, template = key.split(" ", 1)
        assert scaled.min_interval(method, template) == pytest.approx(value * 0.1)


def test_every_public_exception_derives_from_vastai_error() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.VastAIError), name
            assert getattr(vastai_async, name) is obj, f"{name} not exported"


@pytest.mark.parametrize(
    ("status", "code", "msg", "expected"),
    [
        (400, "invalid_args", "bad", errors.BadRequestError),
        (400, "missing_billing", "You lack credit", errors.InsufficientCreditError),
        (401, "auth_error", "Invalid user key", errors.AuthenticationError),
        (403, None, "scoped key", errors.PermissionDeniedError),
        (
            404,
            "invalid_args",
            "error 404/3603: no_such_ask Instance type by id 7",
            errors.OfferUnavailableError,
        ),
        (410, "no_such_ask", None, errors.OfferUnavailableError),
        (404, "no_such_instance", None, errors.NotFoundError),
        (410, None, None, errors.GoneError),
        (429, None, "API requests too frequent", errors.RateLimitedError),
        (200, "rate_limit_exceeded", None, errors.RateLimitedError),
        (500, None, None, errors.InternalServerError),
        (503, None, None, errors.InternalServerError),
        (418, None, None, errors.APIStatusError),
    ],
)
def test_status_error_table(status: int, code: str | None, msg: str | None, expected: type) -> None:
    err = errors.make_status_error(
        status, method="PUT", path="/api/v0/asks/{id}/", code=code, msg=msg
    )
    assert type(err) is expected
    assert err.status == status
    assert "PUT /api/v0/asks/{id}/" in str(err)


def test_rate_limited_error_carries_retry_after() -> None:
    err = errors.make_status_error(429, retry_after=2.5)
    assert isinstance(err, errors.RateLimitedError)
    assert err.retry_after == 2.5
    assert "retry_after=2.5s" in str(err)


def test_teardown_error_names_live_instances() -> None:
    err = errors.TeardownError("teardown budget exceeded", instance_ids=[9, 3])
    assert err.instance_ids == (3, 9)
    assert "3, 9" in str(err)
