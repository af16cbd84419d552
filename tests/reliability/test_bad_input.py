"""Bad input: a typed error naming what was wrong, raised before anything is rented.

``tests/integration/test_provisioning.py`` already covers job ids, fan-out 0, a bid over the
ceiling, a negative bid and disk, one bad env key, a long onstart and ``max_spend_usd``;
``tests/unit/test_config.py`` every configuration variable. This adds the rest of the public
entry points and the sandbox's malformed answers, each checked against the ledger.
"""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability._harness import pick_offers
from vastai_async import (
    InvalidRequestError,
    ResponseValidationError,
    VastAIError,
    VastAIService,
)
from vastai_async.errors import APIStatusError
from vastai_async.models import CreateInstanceRequest, decode_wire_env
from vastai_async.sandbox import HTTPFault, Sandbox
from vastai_async.timings import Timings

pytestmark = pytest.mark.vastai_sandbox(offers=12, time_scale=0.02, seed=31)


def nothing_rented(sb: Sandbox) -> None:
    assert sb.request_counts()["PUT /api/v0/asks/{id}/"] == 0
    assert sb.ledger() == []
    assert sb.alive_instance_ids() == set()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"extra_env": {"1ABC": "x"}}, "variable name"),
        ({"extra_env": {"A-B": "x"}}, "variable name"),
        ({"extra_env": {"A B": "x"}}, "variable name"),
        ({"extra_env": {"": "x"}}, "variable name"),
        ({"extra_env": {"A=B": "x"}}, "variable name"),
        ({"extra_env": {"A": 1}}, "strings"),
        ({"onstart_cmd": "x" * 4049}, "onstart"),
        ({"disk_gb": 0.0}, "disk"),
        ({"disk_gb": float("nan")}, "disk"),
        ({"disk_gb": 10**9}, "disk"),
        ({"bid_usd_per_hour": 0.0}, "bid_usd_per_hour"),
        ({"bid_usd_per_hour": float("inf")}, "bid_usd_per_hour"),
        ({"fan_out": -1}, "fan_out"),
        ({"fan_out": True}, "fan_out"),
        ({"fan_out": 1.5}, "fan_out"),
        ({"image": ""}, "image"),
        ({"image": "   "}, "image"),
        ({"image": "my image:latest"}, "image"),
        ({"image": "-v /:/host ubuntu"}, "image"),
        ({"ports": ["http"]}, "port"),
        ({"job_id": "x" * 129}, "job_id"),
        ({"job_id": "a:b"}, "job_id"),
        ({"offer_id": 0, "offers": None}, "offer_id"),
        ({"offer_id": -3, "offers": None}, "offer_id"),
        ({"offer_id": "12", "offers": None}, "offer_id"),
        ({"offer_id": True, "offers": None}, "offer_id"),
        ({"offers": []}, "offers"),
    ],
)
async def test_provision_refuses_bad_arguments_before_renting(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, kwargs: dict[str, Any], match: str
) -> None:
    offers = pick_offers(await vastai_service.search_offers(), 2)
    call: dict[str, Any] = {"job_id": "bad", "offers": offers}
    call.update(kwargs)
    with pytest.raises(InvalidRequestError, match=match):
        await vastai_service.provision_instance(**call)
    nothing_rented(vastai_sandbox)


async def test_candidates_without_room_for_the_disk_are_never_created(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    """Regression: offers with less disk than asked were created and refused with a 400."""
    offers = await vastai_service.search_offers()
    small = [o for o in offers if o.disk_space_gb is not None and o.disk_space_gb < 100]
    assert small, "seed 31 has machines with small disks"
    with pytest.raises(InvalidRequestError, match="less disk"):
        await vastai_service.provision_instance(job_id="d", offers=small[:2], disk_gb=100.0)
    nothing_rented(vastai_sandbox)
    # A search for candidates asks the server for enough disk in the first place.
    rental = await vastai_service.provision_instance(job_id="d2", disk_gb=100.0, fan_out=2)
    creates = [r for r in vastai_sandbox.requests if r.route == "PUT /api/v0/asks/{id}/"]
    assert all(r.status == 200 for r in creates), [r.status for r in creates]
    await rental.terminate()


@pytest.mark.parametrize("field", ["overall_s", "teardown_budget_s", "request_timeout_s"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_timings_refuse_non_positive_values_with_a_typed_error(field: str, value: float) -> None:
    """Regression: Timings raised a bare ValueError, outside the VastAIError tree."""
    with pytest.raises(InvalidRequestError, match=field):
        Timings().replace(**{field: value})
    with pytest.raises(InvalidRequestError, match="scale"):
        Timings().scaled(0.0)


async def test_detach_refuses_a_label_over_1024_characters(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = pick_offers(await vastai_service.search_offers(), 1)
    rental = await vastai_service.provision_instance(job_id="lbl", offers=offers, fan_out=1)
    label_puts = vastai_sandbox.request_counts()["PUT /api/v0/instances/{id}/"]
    with pytest.raises(InvalidRequestError, match="1024"):
        await rental.detach("x" * 1024)
    assert vastai_sandbox.request_counts()["PUT /api/v0/instances/{id}/"] == label_puts
    with pytest.raises(InvalidRequestError, match="1024"):
        await vastai_service.client.set_label(rental.instance_id, "y" * 1025)
    await rental.terminate()


async def test_reap_and_list_refuse_bad_ids(vastai_service: VastAIService) -> None:
    with pytest.raises(InvalidRequestError, match="job_id"):
        await vastai_service.reap(job_id="bad job")
    with pytest.raises(InvalidRequestError, match="owner"):
        await vastai_service.reap(owner="a:b")
    with pytest.raises(InvalidRequestError, match="older_than_s"):
        await vastai_service.reap(older_than_s=-1.0)
    with pytest.raises(InvalidRequestError, match="job_id"):
        await vastai_service.list_rentals(job_id="")
    with pytest.raises(InvalidRequestError, match="limit"):
        await vastai_service.search_offers(limit=0)


@pytest.mark.parametrize(
    ("route", "call"),
    [
        ("GET /api/v1/instances/", lambda s: s.client.list_instances()),
        ("POST /api/v0/bundles/", lambda s: s.search_offers()),
        ("GET /api/v0/users/current", lambda s: s.client.current_user()),
    ],
)
async def test_malformed_json_from_the_api_is_a_response_validation_error(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, route: str, call: Any
) -> None:
    vastai_sandbox.add_fault(HTTPFault(kind="malformed", route=route, times=None))
    with pytest.raises(ResponseValidationError):
        await call(vastai_service)


async def test_html_error_pages_from_a_proxy_are_typed_and_do_not_leak_markup(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    vastai_sandbox.add_fault(HTTPFault(kind="html", times=None))
    with pytest.raises(APIStatusError) as info:
        await vastai_service.client.list_instances()
    assert info.value.status == 502
    assert "<html" not in str(info.value).lower()
    offers_before = vastai_sandbox.request_counts()["PUT /api/v0/asks/{id}/"]
    with pytest.raises(VastAIError):
        await vastai_service.provision_instance(job_id="html", fan_out=1)
    assert vastai_sandbox.request_counts()["PUT /api/v0/asks/{id}/"] == offers_before


# -- properties ---------------------------------------------------------------------------

_NAME_START = string.ascii_letters + "_"
_NAME_REST = _NAME_START + string.digits


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.text(min_size=0, max_size=12), value=st.text(max_size=20))
def test_any_env_key_is_either_a_variable_name_or_refused_without_quoting_the_value(
    key: str, value: str
) -> None:
    valid = bool(key) and key[0] in _NAME_START and all(c in _NAME_REST for c in key)
    if not valid:
        with pytest.raises(InvalidRequestError) as info:
            CreateInstanceRequest(image="ubuntu", env={key: value})
        if len(value) > 3:  # a value never appears in the refusal (it may be a secret)
            assert value not in str(info.value).replace(repr(key), "")
        return
    request = CreateInstanceRequest(image="ubuntu", env={key: value})
    assert decode_wire_env(request.to_wire()["env"]) == ({key: value}, ())


@settings(max_examples=60, deadline=None)
@given(image=st.text(max_size=40))
def test_any_image_string_is_accepted_only_without_whitespace_or_leading_dash(image: str) -> None:
    plausible = (
        bool(image)
        and not image.startswith("-")
        and not any(c.isspace() or not c.isprintable() for c in image)
    )
    if not plausible:
        with pytest.raises(InvalidRequestError, match="image"):
            CreateInstanceRequest(image=image)
        return
    try:
        request = CreateInstanceRequest(image=image)
    except InvalidRequestError:
        return  # stricter than plausible is fine (e.g. characters docker never allows)
    assert request.to_wire()["image"] == image
