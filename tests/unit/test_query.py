"""OfferQuery: each filter's wire form, GPU name matching, the client-side predicate, and the
official CLI's query strings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit import payloads
from vastai_async._converter import structure
from vastai_async.config import VastAIConfig
from vastai_async.errors import InvalidRequestError, VastAIError
from vastai_async.models import Offer
from vastai_async.query import (
    KNOWN_GPU_NAMES,
    OfferQuery,
    full_gpu_names,
    gpu_name_matches,
    parse_cli_query,
)

DEFAULT_FILTERS = {
    "verified": {"eq": True},
    "rentable": {"eq": True},
    "rented": {"eq": False},
    "external": {"eq": False},
}


def _offer(**changes: Any) -> Offer:
    return structure(payloads.variant(payloads.OFFER_MODELLED, **changes), Offer)


# --- GPU names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "gpu_name", "hit"),
    [
        ("4090", "RTX 4090", True),
        ("4090", "RTX 40900", False),
        ("4090", "RTX 4090D", False),
        ("A100", "A100 SXM4", True),
        ("A100", "A100 PCIE", True),
        ("A100", "A1000", False),
        ("A100", "A100X", False),
        ("H100", "H100 SXM", True),
        ("H100", "H100 NVL", True),
        ("H100", "GH100", False),
        ("RTX 4090", "RTX 4090", True),
        ("RTX_4090", "RTX 4090", True),
        ("rtx 4090", "RTX 4090", True),
        ("3090", "RTX 3090 Ti", True),
        ("3090 Ti", "RTX 3090", False),
        ("L40", "L40S", False),
        ("L40S", "L40S", True),
        ("A6000", "RTX A6000", True),
        ("", "RTX 4090", False),
    ],
)
def test_gpu_names_match_as_whole_words(wanted: str, gpu_name: str, hit: bool) -> None:
    assert gpu_name_matches(wanted, gpu_name) is hit


@pytest.mark.parametrize(
    ("wanted", "full"),
    [
        ("4090", ("RTX 4090",)),
        ("A100", ("A100 PCIE", "A100 SXM4")),
        ("H100", ("H100 PCIE", "H100 SXM", "H100 NVL")),
        ("L40", ("L40",)),
        ("RTX A6000", ("RTX A6000",)),
        ("6000Ada", ("RTX 6000Ada",)),
        ("GB200", ()),
    ],
)
def test_short_names_expand_to_known_full_names(wanted: str, full: tuple[str, ...]) -> None:
    assert full_gpu_names(wanted) == full


def test_gpu_filter_goes_to_the_server_as_full_names() -> None:
    wire = OfferQuery(gpus=("4090", "A100")).to_wire()
    assert wire["gpu_name"] == {"in": ["RTX 4090", "A100 PCIE", "A100 SXM4"]}


def test_an_unknown_gpu_name_drops_the_server_filter_but_not_the_client_check() -> None:
    query = OfferQuery(gpus=("4090", "B200"))
    assert "gpu_name" not in query.to_wire()
    assert query.server_gpu_names() is None
    assert query.matches(_offer(gpu_name="B200"))
    assert query.matches(_offer(gpu_name="RTX 4090"))
    assert not query.matches(_offer(gpu_name="RTX 3090"))


def test_a_single_gpu_string_is_one_name() -> None:
    assert OfferQuery(gpus="4090").gpus == ("4090",)


# --- to_wire ------------------------------------------------------------------------------------


def test_default_query_has_the_official_clients_defaults_and_cheapest_first() -> None:
    assert OfferQuery().to_wire() == {
        **DEFAULT_FILTERS,
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
    }


@pytest.mark.parametrize(
    ("kwargs", "key", "expected"),
    [
        ({"min_vram_gb": 24}, "gpu_ram", {"gte": 24000}),
        ({"min_vram_gb": 23.5}, "gpu_ram", {"gte": 23500}),
        ({"num_gpus": 2}, "num_gpus", {"eq": 2}),
        ({"max_usd_per_hour": 1.25}, "dph_total", {"lte": 1.25}),
        ({"min_reliability": 0.98}, "reliability", {"gte": 0.98}),
        ({"min_direct_ports": 4}, "direct_port_count", {"gte": 4}),
        ({"geolocation_in": ("US", "CA")}, "geolocation", {"in": ["US", "CA"]}),
        ({"min_cuda": 12.1}, "cuda_max_good", {"gte": 12.1}),
        ({"min_disk_gb": 100}, "disk_space", {"gte": 100}),
        ({"verified": False}, "verified", {"eq": False}),
        ({"rented": True}, "rented", {"eq": True}),
        ({"external": True}, "external", {"eq": True}),
        ({"type": "bid"}, "type", "bid"),
        ({"type": "reserved"}, "type", "reserved"),
        ({"limit": 64}, "limit", 64),
        ({"allocated_storage_gb": 50}, "allocated_storage", 50),
        (
            {"order": [("score", "desc"), ("dph_total", "asc")]},
            "order",
            [["score", "desc"], ["dph_total", "asc"]],
        ),
    ],
)
def test_each_filter_has_its_wire_form(kwargs: dict[str, Any], key: str, expected: Any) -> None:
    wire = OfferQuery(**kwargs).to_wire()
    assert wire[key] == expected
    assert type(wire[key]) is type(expected)


@pytest.mark.parametrize("flag", ["verified", "rentable", "rented", "external"])
def test_none_leaves_a_default_filter_out(flag: str) -> None:
    kwargs: dict[str, Any] = {flag: None}
    assert flag not in OfferQuery(**kwargs).to_wire()


def test_integer_vram_floor_is_sent_as_an_integer_mb_count() -> None:
    assert json.dumps(OfferQuery(min_vram_gb=24.0).to_wire()["gpu_ram"]) == '{"gte": 24000}'


def test_extra_filters_merge_after_typed_ones() -> None:
    query = OfferQuery(max_usd_per_hour=2.0, extra_filters={"dph_total": {"gte": 0.1}})
    assert query.to_wire()["dph_total"] == {"lte": 2.0, "gte": 0.1}


def test_with_cli_query_adds_cli_filters() -> None:
    query = OfferQuery(min_vram_gb=24).with_cli_query("inet_down>500 gpu_ram>=40")
    wire = query.to_wire()
    assert wire["inet_down"] == {"gt": "500"}
    assert wire["gpu_ram"] == {"gte": 40000.0}  # the CLI's filter replaces the same operator


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"type": "spot"}, "type"),
        ({"order": [("dph_total", "up")]}, "asc or desc"),
        ({"limit": 0}, "limit"),
        ({"extra_filters": {"gpu_ram": {"like": 1}}}, "operator"),
    ],
)
def test_invalid_queries_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match) as info:
        OfferQuery(**kwargs)
    assert isinstance(info.value, VastAIError)


def test_from_config_takes_gpus_vram_and_price_ceiling_then_overrides(tmp_path: Path) -> None:
    config = VastAIConfig(
        api_key="k",
        ssh_key_path=tmp_path / "id",
        ssh_public_key="ssh-ed25519 AAAA",
        owner="me",
        state_dir=tmp_path,
        preferred_gpus=("4090", "A100"),
        min_vram_gb=40.0,
        max_bid_usd_per_hour=3.0,
    )
    query = OfferQuery.from_config(config, num_gpus=2, max_usd_per_hour=2.5)
    assert query.gpus == ("4090", "A100")
    assert query.min_vram_gb == 40.0
    assert query.max_usd_per_hour == 2.5
    assert query.num_gpus == 2


# --- client-side predicate ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "offer_changes", "hit"),
    [
        ({"gpus": ("4090",)}, {"gpu_name": "RTX 4090"}, True),
        ({"gpus": ("4090",)}, {"gpu_name": "RTX 40900"}, False),
        ({"gpus": ("A100",)}, {"gpu_name": "A1000"}, False),
        ({"max_usd_per_hour": 0.35}, {"dph_total": 0.35}, True),
        ({"max_usd_per_hour": 0.35}, {"dph_total": 0.3500001}, False),
        ({"min_vram_gb": 24}, {"gpu_ram": 24564}, True),  # 24564 MB is 24.6 GB, not 23.99 GiB
        ({"min_vram_gb": 24}, {"gpu_ram": 24000}, True),
        ({"min_vram_gb": 24}, {"gpu_ram": 23999}, False),
        ({"min_vram_gb": 24}, {"gpu_ram": None}, False),
        ({"num_gpus": 2}, {"num_gpus": 1}, False),
        ({"min_reliability": 0.99}, {"reliability2": 0.9962}, True),
        ({"min_reliability": 0.999}, {"reliability2": 0.9962}, False),
        ({"min_reliability": 0.9}, {"reliability2": None}, False),
        ({"min_reliability": 0.99}, {"reliability2": ..., "reliability": 0.9962}, True),
        ({"min_reliability": 0.999}, {"reliability2": ..., "reliability": 0.9962}, False),
        ({"min_direct_ports": 100}, {"direct_port_count": 99}, False),
        ({"min_cuda": 12.4}, {"cuda_max_good": 12.4}, True),
        ({"min_cuda": 12.5}, {"cuda_max_good": 12.4}, False),
        ({"min_disk_gb": 500}, {"disk_space": 412.5}, False),
        ({}, {"verification": "unverified"}, False),
        ({"verified": None}, {"verification": "unverified"}, True),
        ({}, {"verification": None}, True),
        ({}, {"rentable": False}, False),
        ({}, {"rented": True}, False),
        ({"rented": None}, {"rented": True}, True),
        ({"geolocation_in": ("US", "CA")}, {"geolocation": "Oregon, US"}, True),
        ({"geolocation_in": ("ca",)}, {"geolocation": "Quebec, CA"}, True),
        ({"geolocation_in": ("US",)}, {"geolocation": "Berlin, DE"}, False),
        ({"geolocation_in": ("Berlin, DE",)}, {"geolocation": "Berlin, DE"}, True),
        ({"geolocation_in": ("US",)}, {"geolocation": None}, False),
    ],
)
def test_client_predicate(kwargs: dict[str, Any], offer_changes: dict[str, Any], hit: bool) -> None:
    assert OfferQuery(**kwargs).matches(_offer(**offer_changes)) is hit


def test_default_query_accepts_the_recorded_offer() -> None:
    assert OfferQuery().matches(structure(payloads.OFFER_RECORDED, Offer))


# --- official CLI query strings ------------------------------------------------------------------


def test_cli_query_example_from_the_docs() -> None:
    assert parse_cli_query(
        "gpu_ram>=24 num_gpus=1 gpu_name=RTX_4090 reliability>0.98 geolocation in [US,CA]"
    ) == {
        "gpu_ram": {"gte": 24000.0},
        "num_gpus": {"eq": "1"},
        "gpu_name": {"eq": "RTX 4090"},
        "reliability": {"gt": "0.98"},
        "geolocation": {"in": ["US", "CA"]},
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("cpu_ram>=64", {"cpu_ram": {"gte": 64000.0}}),
        ("gpu_total_ram>=80", {"gpu_total_ram": {"gte": 80000.0}}),
        ("duration>=2", {"duration": {"gte": 172800.0}}),
        ("gpu_ram in [24,48]", {"gpu_ram": {"in": [24000.0, 48000.0]}}),
        ("dph<1.5", {"dph_total": {"lt": "1.5"}}),
        ("cuda_vers>=12.1", {"cuda_max_good": {"gte": "12.1"}}),
        ("driver_version>=535.104.05", {"driver_version": {"gte": 535104005}}),
        ("rentable=true verified=False", {"rentable": {"eq": True}, "verified": {"eq": False}}),
        ("datacenter=None", {"datacenter": {"eq": None}}),
        ("num_gpus!=1", {"num_gpus": {"neq": "1"}}),
        ("num_gpus==2", {"num_gpus": {"eq": "2"}}),
        ("num_gpus<=4", {"num_gpus": {"lte": "4"}}),
        ("num_gpus gte 2", {"num_gpus": {"gte": "2"}}),
        ("gpu_name notin [RTX_3090,RTX_4090]", {"gpu_name": {"notin": ["RTX 3090", "RTX 4090"]}}),
        ("gpu_name nin [A40]", {"gpu_name": {"notin": ["A40"]}}),
        ('gpu_name="RTX 4090"', {"gpu_name": {"eq": "RTX 4090"}}),
        ("num_gpus>=2 num_gpus<=4", {"num_gpus": {"gte": "2", "lte": "4"}}),
        ("gpu_name=RTX_4090 gpu_name=any", {}),
        ("", {}),
    ],
)
def test_cli_query_conventions(query: str, expected: dict[str, Any]) -> None:
    assert parse_cli_query(query) == expected


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("num_gpus=>1", "operator"),
        ("gpu_ram>=lots", "number"),
        ("gpu_name>any", "wildcard"),
        ("gpu_name in [,]", "blank"),
        ("num_gpus=1 'oops", "not 'field op value'"),
    ],
)
def test_bad_cli_queries_are_refused(query: str, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        parse_cli_query(query)


# --- properties ---------------------------------------------------------------------------------

_money = st.floats(0.01, 50, allow_nan=False).map(lambda x: round(x, 3))
_queries = st.builds(
    OfferQuery,
    gpus=st.lists(st.sampled_from(["4090", "A100", "H100", "RTX A6000", "B200"]), max_size=3),
    min_vram_gb=st.none() | st.integers(1, 192) | st.floats(1, 192, allow_nan=False),
    num_gpus=st.none() | st.integers(1, 8),
    max_usd_per_hour=st.none() | _money,
    min_reliability=st.none() | st.floats(0, 1),
    verified=st.none() | st.booleans(),
    type=st.sampled_from(["on-demand", "bid", "reserved"]),
    limit=st.none() | st.integers(1, 1000),
)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(query=_queries)
def test_to_wire_is_plain_json_with_known_operators_and_mb_units(query: OfferQuery) -> None:
    wire = query.to_wire()
    assert json.loads(json.dumps(wire)) == wire
    for field, ops in wire.items():
        if field in ("order", "type", "limit", "allocated_storage"):
            continue
        assert set(ops) <= {"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"}, field
    if query.min_vram_gb is not None:
        assert wire["gpu_ram"]["gte"] == pytest.approx(query.min_vram_gb * 1000)
    if query.gpus and "gpu_name" in wire:
        assert set(wire["gpu_name"]["in"]) <= set(KNOWN_GPU_NAMES)
        assert all(any(gpu_name_matches(g, n) for g in query.gpus) for n in wire["gpu_name"]["in"])


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    gb=st.integers(1, 200),
    n=st.integers(1, 16),
    op=st.sampled_from([">=", ">", "<=", "<", "=", "!="]),
)
def test_cli_ram_is_gb_times_1000_and_counts_stay_cli_strings(gb: int, n: int, op: str) -> None:
    names = {">=": "gte", ">": "gt", "<=": "lte", "<": "lt", "=": "eq", "!=": "neq"}
    parsed = parse_cli_query(f"gpu_ram{op}{gb} num_gpus{op}{n}")
    assert parsed == {"gpu_ram": {names[op]: gb * 1000.0}, "num_gpus": {names[op]: str(n)}}


@settings(max_examples=50, deadline=None, derandomize=True)
@given(name=st.sampled_from(KNOWN_GPU_NAMES), suffix=st.sampled_from(["0", "X", "S", "9"]))
def test_every_known_name_matches_itself_and_not_a_longer_model(name: str, suffix: str) -> None:
    assert gpu_name_matches(name, name)
    assert name in full_gpu_names(name)
    assert not gpu_name_matches(name + suffix, name)
