"""The sandbox's REST handlers: the endpoints of vast-api.md with their real shapes.

Bodies are built here from the sandbox's own state. Status codes, error codes, limits and page
counts follow Vast's published OpenAPI spec (docs/wire-notes.md lists every decision): a gone
offer is 404 ``invalid_args`` with ``no_such_ask`` in the message (410 ``no_such_ask`` with
``cancel_unavail``), a destroy of a missing instance is 404 ``not_found``, a bad search body is
400 ``invalid_request``. Where the spec and the official client differ, what the official client
sends is accepted too (``env`` as a dict or as a Docker-flag string, ``runtype`` as
``"ssh_direc ssh_proxy"``). Where the spec is silent, vast-api.md decides (``{"instances": null}``
for a missing instance on GET, ``missing_billing``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from typing import Any

from aiohttp import web

from vastai_async.sandbox.app import STATE, ApiError, SandboxState, json_body, reply
from vastai_async.sandbox.create_body import LABEL_MAX, create_args
from vastai_async.sandbox.matching import (
    QueryError,
    decode_token,
    encode_token,
    matches,
    parse_order,
    row_key,
    sort_rows,
)
from vastai_async.sandbox.state import Instance
from vastai_async.sandbox.views import INSTANCE_FIELDS

__all__ = ["ROUTES"]

_PAGE_MAX = 25
_PAGE_NON_POSITIVE = 5  # the spec: a limit <= 0 is treated as 5
_BID_PRICE = (0.001, 32.0)
#: Instance columns computed per answer: the v1 list refuses filters on them (the spec).
_COMPUTED_COLUMNS = frozenset({"dph_total", "num_gpus", "storage_total_cost"})
_KEY_RE = re.compile(
    r"^(ssh-[a-z0-9-]+|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( .*)?$"
)


def _st(request: web.Request) -> SandboxState:
    return request.app[STATE]


def _int_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise ApiError(400, "invalid_args", "id must be an integer.") from None


def _instance(
    request: web.Request,
    *,
    missing: tuple[int, str, str] = (404, "no_such_instance", "Instance not found."),
    bad_id: tuple[int, str, str] = (400, "invalid_args", "invalid instance_id"),
) -> Instance:
    """The instance named in the path; each route answers a missing or bad id its own way."""
    try:
        iid = int(request.match_info["id"])
    except ValueError:
        raise ApiError(*bad_id) from None
    inst = _st(request).cloud.instances.get(iid)
    if inst is None:
        raise ApiError(*missing)
    return inst


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


async def _object_body(request: web.Request) -> dict[str, Any]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_args", "Request body must be a JSON object.")
    return body


def _query_json(request: web.Request, name: str, default: Any) -> Any:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "invalid_args", f"{name} is not valid JSON.") from None


# --- offers and create -------------------------------------------------------------------------


async def search_offers(request: web.Request) -> web.Response:
    try:
        body = await json_body(request)
    except ApiError:
        raise ApiError(400, "invalid_request", "Invalid json body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "Invalid json body")
    try:
        offers = _st(request).cloud.market.search(body)
    except QueryError as err:
        raise ApiError(400, "invalid_request", str(err)) from None
    return reply({"offers": offers})


async def create_instance(request: web.Request) -> web.Response:
    st = _st(request)
    offer_id = _int_id(request)
    body = await _object_body(request)
    cloud = st.cloud
    if cloud.ledger.balance(cloud.clock.now()) <= 0:
        raise ApiError(400, "missing_billing", "You lack credit, see the billing page.")
    offer = cloud.market.available(offer_id)
    if offer is None:
        msg = f"error 404/3603: no_such_ask Instance type by id {offer_id} is not available."
        cancel = body.get("cancel_unavail")
        if cancel is None:  # the spec: true for on-demand, false for interruptible
            cancel = body.get("price") is None
        if cancel:
            raise ApiError(410, "no_such_ask", msg, ask_id=offer_id)
        raise ApiError(404, "invalid_args", msg, ask_id=offer_id)
    if body.get("vm") and not cloud.account_keys:
        # The spec (L11-12, L1808): a VM takes no key after create, so one must be on the account.
        raise ApiError(400, "no_ssh_key_for_vm", "Add an SSH key to your account first.")
    args = create_args(body, st.templates, offer.fields)
    inst = await cloud.create(offer_id=offer_id, **args)
    return reply({"success": True, "new_contract": inst.id})


# --- listing -----------------------------------------------------------------------------------


async def list_instances_v1(request: web.Request) -> web.Response:
    cloud = _st(request).cloud
    try:
        filters = _query_json(request, "select_filters", {})
        order_raw = _query_json(request, "order_by", [{"col": "id", "dir": "asc"}])
        limit = int(request.query.get("limit", _PAGE_MAX))
    except (ApiError, ValueError):
        raise ApiError(400, "invalid_request", "Error in query parameters.") from None
    limit = _PAGE_NON_POSITIVE if limit <= 0 else min(limit, _PAGE_MAX)
    if not isinstance(filters, dict):
        raise ApiError(400, "invalid_request", "select_filters must be a JSON object.")
    computed = sorted(_COMPUTED_COLUMNS.intersection(filters))
    if computed:
        msg = f"Error in query parameters: {computed[0]} is not a valid search key"
        raise ApiError(400, "invalid_request", msg)
    rows = [cloud.instance_json(i) for i in cloud.instances.values()]
    try:
        order = parse_order(_lenient_order(order_raw))
        known = INSTANCE_FIELDS
        found = [r for r in rows if matches(r, filters, known=known)]
    except QueryError as err:
        raise ApiError(400, "invalid_request", f"Error in query parameters: {err}") from None
    token = request.query.get("after_token")
    try:
        after = decode_token(token) if token else None
        ordered = sort_rows(found, order, after=after, known=known)
    except QueryError as err:
        code = "invalid_token" if token and "token" in str(err) else "invalid_request"
        raise ApiError(400, code, f"Error in query parameters: {err}") from None
    page = ordered[:limit]
    next_token = encode_token(row_key(page[-1], order)) if len(ordered) > limit else None
    cols = _query_json(request, "select_cols", None)
    if isinstance(cols, list) and cols and "*" not in cols:
        page = [{c: r.get(c) for c in cols} for r in page]
    labels: dict[str, int] = {}
    for row in found:
        key = row.get("label") or ""
        labels[key] = labels.get(key, 0) + 1
    return reply(
        {
            "success": True,
            "instances_found": len(page),
            "total_instances": len(found),
            "label_counts": labels,
            "next_token": next_token,
            "instances": list(page),
        }
    )


def _lenient_order(raw: Any) -> Any:
    """The spec: a ``dir`` other than ``asc``/``desc`` is read as ``asc``."""
    if not isinstance(raw, list):
        return raw
    fixed: list[Any] = []
    for item in raw:
        if isinstance(item, dict) and str(item.get("dir", "asc")).lower() not in ("asc", "desc"):
            item = {**item, "dir": "asc"}
        fixed.append(item)
    return fixed


async def list_instances_legacy(request: web.Request) -> web.Response:
    if not _st(request).legacy_list:
        # Newer accounts get 410 here (vast-api.md): clients must use the v1 list.
        raise ApiError(410, "gone", "This endpoint is deprecated; use /api/v1/instances/.")
    cloud = _st(request).cloud
    rows = [cloud.instance_json(i) for i in sorted(cloud.instances.values(), key=lambda i: i.id)]
    return reply({"instances": rows})


async def show_instance(request: web.Request) -> web.Response:
    cloud = _st(request).cloud
    inst = cloud.instances.get(_int_id(request))
    return reply({"instances": None if inst is None else cloud.instance_json(inst)})


# --- changes -----------------------------------------------------------------------------------


async def destroy_instance(request: web.Request) -> web.Response:
    try:
        iid = int(request.match_info["id"])
    except ValueError:
        raise ApiError(400, "invalid_args", "invalid instance_id") from None
    if not await _st(request).cloud.destroy(iid):
        raise ApiError(404, "not_found", "Instance not found")
    return reply({"success": True, "msg": "Instance destroyed."})


async def destroy_instances(request: web.Request) -> web.Response:
    body = await _object_body(request)
    ids = body.get("instance_ids")
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise ApiError(400, "invalid_args", "instance_ids must be a list of integers.")
    cloud = _st(request).cloud
    for iid in ids:
        await cloud.destroy(iid)
    return reply({"success": True})


async def manage_instance(request: web.Request) -> web.Response:
    inst = _instance(request)
    body = await _object_body(request)
    cloud = _st(request).cloud
    if "label" in body:
        label = body["label"]
        if label is not None and (not isinstance(label, str) or len(label) > LABEL_MAX):
            raise ApiError(400, "invalid_args", f"label must be at most {LABEL_MAX} chars.")
        inst.label = label
    state = body.get("state")
    if state is not None:
        if state == "stopped":
            if inst.actual_status != "stopped":
                await cloud.stop(inst)
        elif state == "running":
            if inst.bid is not None and inst.bid < float(inst.offer["min_bid"]):
                msg = "Your bid is below the current price; the machine is unavailable."
                return reply({"success": False, "error": "resources_unavailable", "msg": msg})
            await cloud.start(inst)
        else:
            raise ApiError(400, "invalid_args", "state must be 'running' or 'stopped'.")
    if "label" not in body and state is None:
        raise ApiError(400, "invalid_args", "Nothing to change: give state or label.")
    return reply({"success": True})


async def change_bid(request: web.Request) -> web.Response:
    inst = _instance(
        request, missing=(404, "no_such_instance", "Instance with that ID does not exist.")
    )
    body = await _object_body(request)
    price = body.get("price")
    low, high = _BID_PRICE
    if isinstance(price, bool) or not isinstance(price, int | float) or price < low:
        raise ApiError(400, "invalid_args", f"Please set a bid price >= {low}.")
    if price > high:
        raise ApiError(400, "invalid_args", f"Please set a bid price <= {high}.")
    if inst.bid is None:
        raise ApiError(400, "invalid_args", "Instance is on-demand; it has no bid.")
    await _st(request).cloud.change_bid(inst, float(price))
    return reply({"success": True})


async def reboot_instance(request: web.Request) -> web.Response:
    # The spec documents no 404 here: a missing id is a 400 like a malformed one.
    inst = _instance(request, missing=(400, "invalid_args", "invalid instance_id"))
    await _st(request).cloud.reboot(inst)
    return reply({"success": True})


async def request_logs(request: web.Request) -> web.Response:
    st = _st(request)
    bad = (404, "invalid_id", "Invalid instance id.")
    inst = _instance(request, missing=bad, bad_id=bad)
    body = await _object_body(request)
    lines = list(inst.log)
    try:
        tail = int(body.get("tail", 1000))
    except (TypeError, ValueError):
        raise ApiError(400, "invalid_args", "tail must be a number.") from None
    token = secrets.token_urlsafe(16)
    # Real logs appear at the URL a little later; clients poll it.
    st.logs.files[token] = (st.cloud.clock.now() + 2.0, "\n".join(lines[-tail:]) + "\n")
    url = f"{st.logs.base_url}/logs/{token}"
    return reply({"success": True, "result_url": url, "msg": "Logs requested."})


# --- keys, user, templates ---------------------------------------------------------------------


def _ssh_key(body: dict[str, Any], *, missing: tuple[int, str, str]) -> str:
    key = body.get("ssh_key")
    if not isinstance(key, str) or not key.strip():
        raise ApiError(*missing)
    if not _KEY_RE.match(key.strip()):
        raise ApiError(400, "invalid_args", "ssh_key must be an OpenSSH public key line.")
    return key.strip()


async def attach_key(request: web.Request) -> web.Response:
    inst = _instance(request)
    body = await _object_body(request)
    key = _ssh_key(body, missing=(400, "invalid_args", "ssh_key is required."))
    if key not in inst.keys:
        inst.keys[key] = _st(request).cloud.clock.epoch()
    return reply({"success": True, "msg": "SSH key attached."})


async def list_keys(request: web.Request) -> web.Response:
    st = _st(request)
    keys = st.cloud.account_keys
    if not keys:
        raise ApiError(404, "not_found", "No SSH keys found for the user")
    rows = [_key_json(st, k, v[0], v[1], "key") for k, v in sorted(keys.items())]
    return reply(rows)


def _key_json(st: SandboxState, key_id: int, key: str, at: float, name: str) -> dict[str, Any]:
    return {
        "id": key_id,
        "user_id": st.user_id,
        name: key,
        "created_at": _iso(at),
        "deleted_at": None,
    }


async def add_key(request: web.Request) -> web.Response:
    st = _st(request)
    cloud = st.cloud
    body = await _object_body(request)
    key = _ssh_key(body, missing=(400, "no_ssh_key", "No ssh key provided"))
    key_id = cloud.add_account_key(key)
    created = cloud.account_keys[key_id][1]
    return reply({"success": True, "key": _key_json(st, key_id, key, created, "public_key")})


async def delete_key(request: web.Request) -> web.Response:
    missing = (400, "no_ssh_key", "No ssh key provided")
    try:
        key_id = int(request.match_info["id"])
    except ValueError:
        raise ApiError(*missing) from None
    if _st(request).cloud.account_keys.pop(key_id, None) is None:
        raise ApiError(*missing)
    return reply({"success": True})


async def current_user(request: web.Request) -> web.Response:
    st = _st(request)
    balance = round(st.cloud.ledger.balance(st.cloud.clock.now()), 6)
    return reply(
        {
            "id": st.user_id,
            "key_id": st.user_id * 10 + 1,
            "sid": None,
            "username": "sandbox",
            "email": "sandbox@example.invalid",
            "fullname": "Sandbox User",
            "balance": balance,
            "credit": balance,
            "can_pay": balance > 0,
            "has_billing": True,
            "ssh_key": None,
            "billaddress_country": "NL",
        }
    )


async def search_templates(request: web.Request) -> web.Response:
    st = _st(request)
    filters = _query_json(request, "select_filters", {})
    if not isinstance(filters, dict):
        raise ApiError(400, "invalid_args", "select_filters must be an object.")
    try:
        found = [t for t in st.templates if matches(t, filters, known=set(st.templates[0]))]
    except QueryError as err:
        raise ApiError(400, "invalid_args", str(err)) from None
    return reply({"success": True, "templates_found": len(found), "templates": found})


ROUTES: list[web.RouteDef] = [
    web.post("/api/v0/bundles/", search_offers),
    web.put("/api/v0/asks/{id}/", create_instance),
    web.get("/api/v1/instances/", list_instances_v1),
    web.get("/api/v0/instances/", list_instances_legacy),
    web.delete("/api/v0/instances/", destroy_instances),
    web.get("/api/v0/instances/{id}/", show_instance),
    web.put("/api/v0/instances/{id}/", manage_instance),
    web.delete("/api/v0/instances/{id}/", destroy_instance),
    web.put("/api/v0/instances/bid_price/{id}/", change_bid),
    web.put("/api/v0/instances/reboot/{id}/", reboot_instance),
    web.put("/api/v0/instances/request_logs/{id}/", request_logs),
    web.post("/api/v0/instances/{id}/ssh/", attach_key),
    web.get("/api/v0/ssh/", list_keys),
    web.post("/api/v0/ssh/", add_key),
    web.delete("/api/v0/ssh/{id}/", delete_key),
    web.get("/api/v0/users/current", current_user),
    web.get("/api/v0/users/current/", current_user),
    web.get("/api/v0/template/", search_templates),
]
