"""Every public entry point refuses arguments of the wrong type with a typed error naming them.

The service points at a URL nothing listens on and ``aioresponses`` refuses every request, so an
argument that slipped past the checks would show up as a connection error instead of an
``InvalidRequestError``: the checks provably run before anything is sent or rented.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import aioresponses
import pytest

from tests.unit import payloads
from tests.unit.conftest import ROOT, make_config, sent
from vastai_async import (
    ConfigError,
    InvalidRequestError,
    Offer,
    RetryPolicy,
    Timings,
    VastAIError,
    VastAIService,
)
from vastai_async._converter import structure
from vastai_async.events import EventEmitter, RaceStarted

ONE_OFFER = structure(payloads.OFFER_MODELLED, Offer)

BAD_PROVISION: list[tuple[dict[str, Any], str]] = [
    ({"ports": [8080]}, "ports"),
    ({"offers": ONE_OFFER}, "offers"),
    ({"offers": [None]}, "offers"),
    ({"offers": []}, "offers"),
    ({"extra_env": [("A", "b")]}, "extra_env"),
    ({"extra_env": {"A": 1}}, "extra_env"),
    ({"onstart_cmd": 123}, "onstart_cmd"),
    ({"disk_gb": "64"}, "disk_gb"),
    ({"disk_gb": True}, "disk_gb"),
    ({"disk_gb": math.nan}, "disk_gb"),
    ({"disk_gb": -5}, "disk_gb"),
    ({"bid_usd_per_hour": "1"}, "bid_usd_per_hour"),
    ({"max_spend_usd": "1"}, "max_spend_usd"),
    ({"max_spend_usd": math.inf}, "max_spend_usd"),
    ({"image": 123}, "image"),
    ({"image": "  "}, "image"),
    ({"timings": {"overall_s": 5}}, "timings"),
    ({"on_event": "print"}, "on_event"),
    ({"fan_out": 0}, "fan_out"),
    ({"fan_out": 2.0}, "fan_out"),
    ({"offer_id": "12"}, "offer_id"),
    ({"query": "num_gpus=1"}, "query"),
    ({"job_id": "job\n"}, "job_id"),
    ({"job_id": 7}, "job_id"),
    ({"offer_id": 1, "offers": [ONE_OFFER]}, "at most one"),
]

BAD_SEARCH: list[tuple[dict[str, Any], str]] = [
    ({"gpus": [1]}, "gpus"),
    ({"min_vram_gb": "24"}, "min_vram_gb"),
    ({"min_vram_gb": math.nan}, "min_vram_gb"),
    ({"min_vram_gb": -1}, "min_vram_gb"),
    ({"max_usd_per_hour": "3"}, "max_usd_per_hour"),
    ({"max_usd_per_hour": 0}, "max_usd_per_hour"),
    ({"limit": True}, "limit"),
    ({"limit": 0}, "limit"),
    ({"query": 5}, "query"),
]


@pytest.fixture
async def service(tmp_path: Path) -> Any:
    with aioresponses.aioresponses() as mock:
        async with VastAIService(config=make_config(tmp_path)) as vast:
            yield vast
        assert sent(mock) == []  # nothing reached the wire


@pytest.mark.parametrize(("arguments", "named"), BAD_PROVISION)
async def test_provision_refuses_wrong_types_naming_the_argument(
    service: VastAIService, arguments: dict[str, Any], named: str
) -> None:
    call = {"job_id": "j1", **arguments}
    with pytest.raises(InvalidRequestError, match=named):
        await service.provision_instance(**call)


@pytest.mark.parametrize(("arguments", "named"), BAD_SEARCH)
async def test_search_refuses_wrong_types_naming_the_argument(
    service: VastAIService, arguments: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidRequestError, match=named):
        await service.search_offers(**arguments)


def _bundles_body(mock: aioresponses.aioresponses) -> dict[str, Any]:
    calls = [kw for method, url, kw in sent(mock) if url.path == "/api/v0/bundles/"]
    assert len(calls) == 1
    body: dict[str, Any] = calls[0]["json"]
    return body


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"query": "num_gpus=2 reliability>0.95"}, {"num_gpus": {"eq": "2"}}),
        ({"gpus": "4090, A100"}, {"gpu_name": {"in": ["RTX 4090", "A100 PCIE", "A100 SXM4"]}}),
        ({"gpus": ["4090"]}, {"gpu_name": {"in": ["RTX 4090"]}}),
    ],
)
async def test_search_accepts_the_cli_query_string_and_the_config_gpu_form(
    tmp_path: Path, arguments: dict[str, Any], expected: dict[str, Any]
) -> None:
    with aioresponses.aioresponses() as mock:
        mock.post(f"{ROOT}/api/v0/bundles/", payload={"offers": []})
        async with VastAIService(config=make_config(tmp_path)) as vast:
            assert await vast.search_offers(**arguments) == []
        body = _bundles_body(mock)
    for field, ops in expected.items():
        assert body[field] == ops


@pytest.mark.parametrize(
    ("arguments", "storage"),
    [
        ({}, 64.0),  # the config's default_disk_gb: what provision_instance rents by default
    ],
)
async def test_search_prices_the_disk_the_rental_will_have(
    tmp_path: Path, arguments: dict[str, Any], storage: float
) -> None:
    """dph_total is asked for with allocated_storage = the rental's disk, so it is the bill."""
    with aioresponses.aioresponses() as mock:
        mock.post(f"{ROOT}/api/v0/bundles/", payload={"offers": []})
        async with VastAIService(config=make_config(tmp_path)) as vast:
            await vast.search_offers(**arguments)
        assert _bundles_body(mock)["allocated_storage"] == storage


async def test_search_prices_a_query_disk_floor_and_keeps_an_explicit_storage(
    tmp_path: Path,
) -> None:
    from vastai_async import OfferQuery

    with aioresponses.aioresponses() as mock:
        mock.post(f"{ROOT}/api/v0/bundles/", payload={"offers": []}, repeat=True)
        async with VastAIService(config=make_config(tmp_path)) as vast:
            await vast.search_offers(query=OfferQuery(min_disk_gb=120))
            await vast.search_offers(query=OfferQuery(min_disk_gb=120, allocated_storage_gb=10))
        bodies = [kw["json"] for _, url, kw in sent(mock) if url.path == "/api/v0/bundles/"]
    assert [b["allocated_storage"] for b in bodies] == [120, 10]


async def test_a_config_without_ssh_key_searches_but_refuses_to_rent(tmp_path: Path) -> None:
    """Read-only use needs only the API key; renting says which setting is missing."""
    from vastai_async import get_vastai_config

    config = get_vastai_config(api_key="k", state_dir=tmp_path, require_ssh_key=False)
    assert config.ssh_key_path is None
    with aioresponses.aioresponses() as mock:
        mock.post(f"{ROOT}/api/v0/bundles/", payload={"offers": []})
        async with VastAIService(config=make_config(tmp_path, ssh_key_path=None)) as vast:
            assert await vast.search_offers() == []
            with pytest.raises(ConfigError, match="VASTAI_SSH_KEY_PATH"):
                await vast.provision_instance(job_id="j1")


def test_retry_policy_refuses_bad_values_with_a_typed_error() -> None:
    with pytest.raises(VastAIError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(InvalidRequestError, match="initial_s"):
        RetryPolicy(initial_s=-1)


async def test_service_takes_a_retry_policy_and_a_client(tmp_path: Path) -> None:
    from vastai_async import VastAIClient

    policy = RetryPolicy(attempts=2, initial_s=0)
    async with VastAIService(config=make_config(tmp_path), retry=policy) as vast:
        assert vast.client.session.retry is policy
    client = VastAIClient.from_config(make_config(tmp_path))
    with aioresponses.aioresponses() as mock:
        mock.post(f"{ROOT}/api/v0/bundles/", payload={"offers": []}, repeat=True)
        async with client:
            async with VastAIService(config=make_config(tmp_path), client=client) as vast:
                assert vast.client is client
            # A lent client is not closed by the service: it still works afterwards.
            assert await client.search_offers({}) == []


async def test_a_failing_event_callback_logs_one_traceback_then_counts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("display broke")

    log = logging.getLogger("vastai_async.test_events")
    emitter = EventEmitter([broken], log)
    with caplog.at_level(logging.DEBUG, logger=log.name):
        for _ in range(8):
            await emitter.emit(RaceStarted(race_id="r", job_id="j", candidates=1, fan_out=1))
    tracebacks = [r for r in caplog.records if r.exc_info]
    counts = [r.getMessage() for r in caplog.records if "has failed" in r.getMessage()]
    assert len(tracebacks) == 1
    assert counts == [
        "on_event callback test_a_failing_event_callback_logs_one_traceback_then_counts."
        f"<locals>.broken has failed {n} times; ignored"
        for n in (2, 4, 8)
    ]
    assert emitter.failures == [8]


def test_timings_argument_type_is_the_public_class() -> None:
    assert Timings().scaled(0.5).overall_s > 0


@pytest.mark.parametrize("kind", ["relative", "file"])
def test_an_unusable_state_directory_is_refused_before_anything_runs(
    tmp_path: Path, kind: str
) -> None:
    """Pinned host keys are written there after a login: find a bad folder before renting."""
    from vastai_async import get_vastai_config

    if kind == "relative":
        state: Path = Path("state")
    else:
        state = tmp_path / "a-file"
        state.write_text("")
    with pytest.raises(ConfigError) as info:
        get_vastai_config(api_key="k", state_dir=state / "sub", require_ssh_key=False)
    assert [name for name, _ in info.value.problems] == ["VASTAI_STATE_DIR"]


async def test_service_borrows_an_http_session_and_leaves_it_open(tmp_path: Path) -> None:
    import aiohttp

    with aioresponses.aioresponses() as mock:
        mock.post(f"{ROOT}/api/v0/bundles/", payload={"offers": []})
        async with aiohttp.ClientSession() as http:
            async with VastAIService(config=make_config(tmp_path), http_session=http) as vast:
                assert await vast.search_offers() == []
            assert not http.closed


@pytest.mark.parametrize("bad", ["42", True, 0, -1, 4.0, None])
def test_instance_ids_are_positive_integers(bad: object) -> None:
    from vastai_async._arguments import validate_instance_id

    assert validate_instance_id(42) == 42
    with pytest.raises(InvalidRequestError, match="instance_id"):
        validate_instance_id(bad)
