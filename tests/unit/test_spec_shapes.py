"""Models and errors read the published spec's shapes (issue #13): one table per behaviour."""

from __future__ import annotations

from typing import Any

import pytest

from vastai_async._converter import structure, structure_strict
from vastai_async.errors import (
    INSTANCE_GONE_CODES,
    NotFoundError,
    OutbidError,
    VastAIError,
    make_status_error,
)
from vastai_async.models import Instance, Offer, SSHKey

OFFER = {"id": 1, "gpu_name": "RTX 4090", "num_gpus": 1, "dph_total": 0.4}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"reliability": 0.98}, 0.98),
        ({"reliability2": 0.97}, 0.97),
        ({"reliability": 0.98, "reliability2": 0.97}, 0.98),  # the spec's name wins
        ({"reliability": None, "reliability2": 0.97}, 0.97),
        ({}, None),
    ],
)
def test_offer_reliability_from_either_name_in_strict_mode(
    fields: dict[str, Any], expected: float | None
) -> None:
    assert structure_strict({**OFFER, **fields}, Offer).reliability == expected


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ([8080, 8081], {"8080/tcp": (), "8081/tcp": ()}),
        ([], {}),
        ({"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}]}, {"22/tcp": (41234,)}),
        (None, None),
    ],
)
def test_instance_ports_in_both_forms(ports: Any, expected: Any) -> None:
    assert structure({"id": 1, "ports": ports}, Instance).ports == expected


@pytest.mark.parametrize(
    ("extra_env", "expected"),
    [
        (["A=1", "B=x=y", "C="], {"A": "1", "B": "x=y", "C": ""}),
        ([["A", "1"], ["B", None]], {"A": "1", "B": ""}),
        ({"A": 1}, {"A": "1"}),
    ],
)
def test_instance_extra_env_in_every_form(extra_env: Any, expected: dict[str, str]) -> None:
    assert structure({"id": 1, "extra_env": extra_env}, Instance).extra_env == expected


@pytest.mark.parametrize("name", ["key", "public_key"])
def test_ssh_key_line_under_either_name_with_iso_dates(name: str) -> None:
    data = {
        "id": 3,
        "user_id": 9,
        name: "ssh-ed25519 AAAA k",
        "created_at": "2024-05-01T12:00:00Z",
        "deleted_at": None,
    }
    key = structure_strict(data, SSHKey)
    assert (key.key, key.user_id, key.created_at) == ("ssh-ed25519 AAAA k", 9, 1714564800.0)


@pytest.mark.parametrize("code", sorted(INSTANCE_GONE_CODES))
def test_gone_codes_are_not_found_errors(code: str) -> None:
    error = make_status_error(404, code=code, msg="Instance not found")
    assert isinstance(error, NotFoundError)
    assert error.code == code


def test_outbid_error_names_the_instance_and_the_bid() -> None:
    error = OutbidError("outbid", instance_id=42, bid=0.25, min_bid=0.3)
    assert isinstance(error, VastAIError)
    assert str(error) == "outbid instance=42 bid=0.25 min_bid=0.3"


def test_an_outbid_instance_describes_itself_as_an_outbid_error() -> None:
    fields = {"id": 7, "is_bid": True, "dph_base": 0.2, "min_bid": 0.3}
    outbid = structure(
        {
            **fields,
            "actual_status": "stopped",
            "intended_status": "running",
            "cur_state": "stopped",
        },
        Instance,
    )
    error = outbid.outbid_error()
    assert error is not None
    assert (error.instance_id, error.bid, error.min_bid) == (7, 0.2, 0.3)
    asked = structure(
        {**fields, "actual_status": "stopped", "intended_status": "stopped"}, Instance
    )
    assert asked.outbid_error() is None
