"""VastAIClient: each endpoint's exact request and parsed result, paging, chunking, edge answers."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from tests.unit import payloads
from tests.unit.conftest import API_KEY, ROOT, sent
from vastai_async.client import MAX_FILTER_QUERY_CHARS, VastAIClient
from vastai_async.config import VastAIConfig
from vastai_async.errors import (
    APITimeoutError,
    CreateOutcomeUnknownError,
    NotFoundError,
    OfferUnavailableError,
    ResponseValidationError,
)
from vastai_async.models import (
    CreateInstanceRequest,
    CreateInstanceResponse,
    Instance,
    InvalidRequestError,
    Offer,
    SSHKey,
    Template,
    User,
)

ANY_API = re.compile(rf"^{re.escape(ROOT)}/api/.*$")
ANY = re.compile(r"^.*$")
OK = {"success": True}
CREATE = CreateInstanceRequest(image="vastai/base-image:cuda-12.4.1", disk_gb=32, label="lbl-1")
QUERY = {
    "gpu_name": {"in": ["RTX 4090"]},
    "rentable": {"eq": True},
    "order": [["dph_total", "asc"]],
}
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample user@host"

Call = Callable[[VastAIClient], Awaitable[Any]]
Check = Callable[[Any], bool]

# (name, call, method, path, query, body, answer, check of the result)
ENDPOINTS: list[tuple[str, Call, str, str, dict[str, str] | None, Any, Any, Check]] = [
    (
        "search_offers",
        lambda c: c.search_offers(QUERY),
        "POST",
        "/api/v0/bundles/",
        None,
        QUERY,
        {"offers": [payloads.OFFER_RECORDED, payloads.OFFER_SPARSE]},
        lambda r: [type(o) for o in r] == [Offer, Offer] and r[0].id == 14718503,
    ),
    (
        "create_instance",
        lambda c: c.create_instance(14718503, CREATE),
        "PUT",
        "/api/v0/asks/14718503/",
        None,
        CREATE.to_wire(),
        payloads.CREATE_RESPONSE,
        lambda r: isinstance(r, CreateInstanceResponse) and r.new_contract == 21450017,
    ),
    (
        "show_instance",
        lambda c: c.show_instance(21450017),
        "GET",
        "/api/v0/instances/21450017/",
        {"owner": "me"},
        None,
        {"instances": payloads.INSTANCE_RECORDED},
        lambda r: (
            isinstance(r, Instance)
            and r.ports == {"22/tcp": (41234,), "8080/tcp": (41235,), "53/udp": (41236,)}
        ),
    ),
    (
        "list_instances",
        lambda c: c.list_instances(label="job-42"),
        "GET",
        "/api/v1/instances/",
        {
            "select_filters": '{"label":{"eq":"job-42"}}',
            "order_by": '[{"col":"id","dir":"asc"}]',
            "limit": "25",
        },
        None,
        {**payloads.V1_PAGE, "next_token": None},
        lambda r: [i.id for i in r] == [21450017],  # the page's two rows are one instance
    ),
    (
        "destroy_instance",
        lambda c: c.destroy_instance(7),
        "DELETE",
        "/api/v0/instances/7/",
        None,
        {},
        OK,
        lambda r: r is True,
    ),
    (
        "destroy_instances",
        lambda c: c.destroy_instances([7, 8, 9]),
        "DELETE",
        "/api/v0/instances/",
        None,
        {"instance_ids": [7, 8, 9]},
        OK,
        lambda r: r is None,
    ),
    (
        "start_instance",
        lambda c: c.start_instance(7),
        "PUT",
        "/api/v0/instances/7/",
        None,
        {"state": "running"},
        OK,
        lambda r: r is None,
    ),
    (
        "stop_instance",
        lambda c: c.stop_instance(7),
        "PUT",
        "/api/v0/instances/7/",
        None,
        {"state": "stopped"},
        OK,
        lambda r: r is None,
    ),
    (
        "set_label",
        lambda c: c.set_label(7, "vastai-async:kept:job-1"),
        "PUT",
        "/api/v0/instances/7/",
        None,
        {"label": "vastai-async:kept:job-1"},
        OK,
        lambda r: r is None,
    ),
    (
        "change_bid",
        lambda c: c.change_bid(7, 0.2),
        "PUT",
        "/api/v0/instances/bid_price/7/",
        None,
        {"client_id": "me", "price": 0.2},
        OK,
        lambda r: r is None,
    ),
    (
        "reboot",
        lambda c: c.reboot(7),
        "PUT",
        "/api/v0/instances/reboot/7/",
        None,
        {},
        OK,
        lambda r: r is None,
    ),
    (
        "attach_ssh_key",
        lambda c: c.attach_ssh_key(7, PUBKEY + "\n"),
        "POST",
        "/api/v0/instances/7/ssh/",
        None,
        {"ssh_key": PUBKEY},
        OK,
        lambda r: r is None,
    ),
    (
        "list_ssh_keys",
        lambda c: c.list_ssh_keys(),
        "GET",
        "/api/v0/ssh/",
        None,
        None,
        [payloads.SSH_KEY],
        lambda r: [type(k) for k in r] == [SSHKey] and r[0].id == 5521,
    ),
    (
        "add_ssh_key",
        lambda c: c.add_ssh_key(PUBKEY),
        "POST",
        "/api/v0/ssh/",
        None,
        {"ssh_key": PUBKEY},
        {"success": True, "key": payloads.SSH_KEY},
        lambda r: isinstance(r, SSHKey) and r.id == 5521,
    ),
    (
        "delete_ssh_key",
        lambda c: c.delete_ssh_key(5521),
        "DELETE",
        "/api/v0/ssh/5521/",
        None,
        {},
        OK,
        lambda r: r is True,
    ),
    (
        "current_user",
        lambda c: c.current_user(),
        "GET",
        "/api/v0/users/current",
        None,
        None,
        payloads.USER_RECORDED,
        lambda r: isinstance(r, User) and r.id == 88114 and r.balance == 12.57,
    ),
    (
        "templates",
        lambda c: c.templates({"name": {"eq": "PyTorch (Vast)"}}),
        "GET",
        "/api/v0/template/",
        {"select_filters": '{"name":{"eq":"PyTorch (Vast)"}}'},
        None,
        {"success": True, "templates": [payloads.TEMPLATE]},
        lambda r: (
            [t.hash_id for t in r] == ["4e17788f74f075dd9aab7d0d4427968f"]
            and isinstance(r[0], Template)
        ),
    ),
]


@pytest.mark.parametrize(
    ("name", "call", "method", "path", "query", "body", "answer", "check"),
    ENDPOINTS,
    ids=[row[0] for row in ENDPOINTS],
)
async def test_endpoint_sends_the_exact_request_and_parses_the_answer(
    client: VastAIClient,
    mocked: aioresponses,
    name: str,
    call: Call,
    method: str,
    path: str,
    query: dict[str, str] | None,
    body: Any,
    answer: Any,
    check: Check,
) -> None:
    """Method, path, query, JSON body and auth header match vast-api.md; the answer is typed."""
    mocked.add(ANY_API, method=method, body=json.dumps(answer))
    result = await call(client)
    [(sent_method, url, kwargs)] = sent(mocked)
    assert sent_method == method
    assert url.path == path
    assert dict(url.query) == (query or {})
    assert kwargs["json"] == body
    assert kwargs["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert check(result), result


def test_create_body_carries_every_key_of_the_official_cli() -> None:
    """The create body has the official CLI's keys, except ``cancel_unavail`` unless asked
    (sending false would turn off the spec's on-demand default of true)."""
    official = {
        "client_id", "image", "env", "price", "disk", "label", "extra", "onstart", "image_login",
        "python_utf8", "lang_utf8", "use_jupyter_lab", "jupyter_dir", "force",
        "template_hash_id", "user", "runtype",
    }  # fmt: skip
    assert set(CREATE.to_wire()) == official
    assert CREATE.to_wire()["runtype"] == "ssh_direc ssh_proxy"


async def test_show_instance_null_is_not_found(client: VastAIClient, mocked: aioresponses) -> None:
    """``{"instances": null}`` with 200 means the instance does not exist: NotFoundError."""
    mocked.get(ANY_API, payload={"instances": None})
    with pytest.raises(NotFoundError) as info:
        await client.show_instance(99)
    assert (info.value.instance_id, info.value.status) == (99, 200)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"success": True}, ResponseValidationError),  # no 'instances' at all
        ({"instances": {"id": "x"}}, ResponseValidationError),  # wrong type inside
        ([1, 2], ResponseValidationError),
    ],
)
async def test_show_instance_malformed(
    client: VastAIClient, mocked: aioresponses, answer: Any, expected: type[Exception]
) -> None:
    """A show answer of the wrong shape raises ResponseValidationError."""
    mocked.get(ANY_API, body=json.dumps(answer))
    with pytest.raises(expected):
        await client.show_instance(99)


async def test_list_instances_follows_next_token_until_null(
    client: VastAIClient, mocked: aioresponses
) -> None:
    """Pages are read with after_token until next_token is null; rows are deduplicated, sorted."""
    second = payloads.variant(payloads.INSTANCE_RUNNING, id=21450020)
    mocked.get(ANY_API, payload={**payloads.V1_PAGE, "next_token": "T1"})
    mocked.get(ANY_API, payload={"instances": [second], "next_token": None})
    result = await client.list_instances()
    assert [i.id for i in result] == [21450017, 21450020]
    urls = [url for _, url, _ in sent(mocked)]
    assert "after_token" not in urls[0].query
    assert urls[1].query["after_token"] == "T1"
    assert all(url.query["limit"] == "25" for url in urls)


@pytest.mark.parametrize(
    "page",
    [
        {"success": True},
        {"instances": None, "next_token": None},
        {"instances": "none", "next_token": None},
        {"instances": [{"label": "no id"}], "next_token": None},
        ["not", "an", "object"],
    ],
)
async def test_malformed_list_page_raises_never_reads_as_empty(
    client: VastAIClient, mocked: aioresponses, page: Any
) -> None:
    """A page without a proper instances list raises; it is never taken for "no instances"."""
    mocked.get(ANY_API, body=json.dumps(page))
    with pytest.raises(ResponseValidationError):
        await client.list_instances(label="job")


async def test_list_success_false_raises(client: VastAIClient, mocked: aioresponses) -> None:
    """A 200 page with success false is an error, not an empty list."""
    mocked.get(ANY_API, payload={"success": False, "error": "server_error", "instances": []})
    with pytest.raises(Exception, match="server_error"):
        await client.list_instances()


async def test_list_repeating_token_raises(client: VastAIClient, mocked: aioresponses) -> None:
    """A server that hands back the same next_token does not loop the client forever."""
    mocked.get(ANY_API, payload={"instances": [], "next_token": "same"}, repeat=True)
    with pytest.raises(ResponseValidationError, match="next_token"):
        await client.list_instances()


async def test_list_by_ids_is_chunked_to_keep_urls_short(
    client: VastAIClient, mocked: aioresponses
) -> None:
    """Thousands of ids go out in several calls, each URL well under 8 KB, combining filters."""
    ids = list(range(10_000_000, 10_002_000))
    mocked.get(ANY_API, payload={"instances": [], "next_token": None}, repeat=True)
    assert await client.list_instances(ids=ids, label="job") == []
    requests = sent(mocked)
    assert len(requests) > 1
    seen: list[int] = []
    for _, url, _ in requests:
        assert len(str(url)) < 6000
        filters = json.loads(url.query["select_filters"])
        assert filters["label"] == {"eq": "job"}
        seen.extend(filters["id"]["in"])
        assert (
            len(json.dumps(filters["id"]["in"], separators=(",", ":")))
            <= MAX_FILTER_QUERY_CHARS + 2
        )
    assert seen == ids


async def test_list_by_no_ids_sends_nothing(client: VastAIClient, mocked: aioresponses) -> None:
    """An empty id list matches nothing without a request."""
    assert await client.list_instances(ids=[]) == []
    assert sent(mocked) == []


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((200, OK), True),
        ((404, {"error": "no_such_instance", "msg": "Instance 7 not found"}), False),
    ],
)
async def test_destroy_reports_already_gone(
    client: VastAIClient, mocked: aioresponses, answer: tuple[int, Any], expected: bool
) -> None:
    """destroy_instance is True when destroyed, False when 404 no_such_instance (already gone)."""
    mocked.delete(ANY_API, status=answer[0], payload=answer[1])
    assert await client.destroy_instance(7) is expected


async def test_destroy_other_404_still_raises(client: VastAIClient, mocked: aioresponses) -> None:
    """A 404 without no_such_instance (a wrong path) is not read as "already gone"."""
    mocked.delete(ANY_API, status=404, body="Not Found", content_type="text/plain")
    with pytest.raises(NotFoundError):
        await client.destroy_instance(7)


async def test_destroy_retry_after_lost_answer_counts_as_gone(
    client: VastAIClient, mocked: aioresponses
) -> None:
    """Destroy is retried after a dropped answer; the retry's no_such_instance means done."""
    mocked.delete(ANY_API, exception=aiohttp.ServerDisconnectedError())
    mocked.delete(ANY_API, status=404, payload={"error": "no_such_instance"})
    assert await client.destroy_instance(7) is False
    assert len(sent(mocked)) == 2


async def test_create_offer_gone_raises_offer_unavailable(
    client: VastAIClient, mocked: aioresponses
) -> None:
    """A 404 carrying no_such_ask on create is OfferUnavailableError naming the offer."""
    mocked.put(
        ANY_API,
        status=404,
        payload={
            "error": "invalid_args",
            "msg": "error 404/3603: no_such_ask Instance type by id 5 is not available.",
            "ask_id": 5,
        },
    )
    with pytest.raises(OfferUnavailableError) as info:
        await client.create_instance(5, CREATE)
    assert info.value.offer_id == 5


async def test_create_outcome_unknown_carries_the_label(
    client: VastAIClient, mocked: aioresponses
) -> None:
    """A create that timed out raises CreateOutcomeUnknownError with the label to look up."""
    mocked.put(ANY_API, exception=TimeoutError())
    with pytest.raises(CreateOutcomeUnknownError) as info:
        await client.create_instance(5, CREATE)
    assert info.value.label == "lbl-1"
    assert len(sent(mocked)) == 1


async def test_set_label_too_long_is_refused_before_sending(
    client: VastAIClient, mocked: aioresponses
) -> None:
    """A label over 1024 characters raises InvalidRequestError and sends nothing."""
    with pytest.raises(InvalidRequestError):
        await client.set_label(7, "x" * 1025)
    assert sent(mocked) == []


async def test_request_logs_polls_the_result_url_until_ready(
    client: VastAIClient, mocked: aioresponses
) -> None:
    """request_logs asks with tail as text, then polls the result_url until it answers 200."""
    logs = "http://logs.example.net/x.log"
    mocked.put(ANY_API, payload={"success": True, "result_url": logs})
    mocked.get(logs, status=404, body="not yet")
    mocked.get(logs, status=403, body="not yet")
    mocked.get(logs, status=200, body="a\nb\n")
    assert await client.request_logs(7, tail=50, poll_interval_s=0.01) == "a\nb\n"
    requests = sent(mocked)
    assert requests[0][2]["json"] == {"tail": "50"}
    assert [str(url) for _, url, _ in requests[1:]] == [logs] * 3  # polled until 200


async def test_request_logs_is_bounded(client: VastAIClient, mocked: aioresponses) -> None:
    """A log that never appears ends in APITimeoutError after max_wait_s."""
    logs = "http://logs.example.net/never.log"
    mocked.put(ANY_API, payload={"success": True, "result_url": logs})
    mocked.get(logs, status=404, body="", repeat=True)
    with pytest.raises(APITimeoutError, match="not ready"):
        await client.request_logs(7, poll_interval_s=0.01, max_wait_s=0.05)


async def test_request_logs_without_url_is_malformed(
    client: VastAIClient, mocked: aioresponses
) -> None:
    """An answer without a usable result_url raises ResponseValidationError."""
    mocked.put(ANY_API, payload={"success": True, "result_url": "file:///etc/passwd"})
    with pytest.raises(ResponseValidationError):
        await client.request_logs(7)


async def test_search_without_offers_key_is_malformed(
    client: VastAIClient, mocked: aioresponses
) -> None:
    """A search answer without ``offers`` raises instead of reading as an empty market."""
    mocked.post(ANY_API, payload={"success": True})
    with pytest.raises(ResponseValidationError, match="offers"):
        await client.search_offers({})


async def test_list_ssh_keys_accepts_a_wrapped_list(
    client: VastAIClient, mocked: aioresponses
) -> None:
    """The account key list may come bare or wrapped in ``ssh_keys``."""
    mocked.get(ANY_API, payload={"ssh_keys": [payloads.SSH_KEY]})
    assert [k.id for k in await client.list_ssh_keys()] == [5521]


async def test_from_config_owns_and_closes_its_session(
    config: VastAIConfig, mocked: aioresponses
) -> None:
    """``async with VastAIClient.from_config(cfg)`` opens a session and closes it on exit."""
    mocked.get(ANY_API, payload=payloads.USER)
    async with VastAIClient.from_config(config) as client:
        assert (await client.current_user()).id == 88114
        http = client.session._http
    assert http is not None
    assert http.closed


async def test_client_over_a_given_session_leaves_it_open(
    client: VastAIClient, mocked: aioresponses
) -> None:
    """A client built on a caller's session does not close it."""
    async with client:
        pass
    mocked.get(ANY_API, payload=payloads.USER)
    assert (await client.current_user()).id == 88114


# -- deliberate differences from the official client ------------------------------------------


async def test_deliberate_differences_from_the_official_client(
    client: VastAIClient, mocked: aioresponses
) -> None:
    """Every deliberate difference from the official ``vastai`` client, checked in one place.

    1. The key travels only in ``Authorization: Bearer``, never as ``?api_key=``.
    2. Query JSON is compact (no spaces), so long id filters fit in fewer, shorter URLs.
    3. Redirects are not followed (a redirect could carry the key to another origin).
    4. The logs ``result_url`` is fetched without credentials.
    5. A create is never retried once it may have arrived (the official sync client retries
       5xx and connection errors on every call, creates included).
    6. The v1 list is used, never the deprecated ``/instances/?owner=me`` (410 on new accounts).
    """
    mocked.get(ANY_API, payload={"instances": [], "next_token": None})
    mocked.put(ANY_API, status=503, body="busy")
    mocked.put(ANY_API, payload=payloads.CREATE_RESPONSE)
    await client.list_instances(select_filters={"actual_status": {"eq": "running"}})
    with pytest.raises(CreateOutcomeUnknownError):
        await client.create_instance(1, CREATE)
    requests = sent(mocked)
    listing = requests[0]
    assert "api_key" not in listing[1].query  # 1
    assert " " not in listing[1].query["select_filters"]  # 2
    assert all(kwargs["allow_redirects"] is False for _, _, kwargs in requests)  # 3
    assert listing[1].path == "/api/v1/instances/"  # 6
    assert len(requests) == 2  # 5: the 503 on create was not retried
    # 4 is checked by test_session_redaction.test_key_never_sent_to_a_third_party_url.
