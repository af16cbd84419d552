"""JSON Schemas of every Vast.ai operation the SDK uses, written from the published spec's facts.

Source: Vast.ai's OpenAPI 3.1 spec (repository vast-ai/docs, ``api-reference/openapi.yaml``), as
summarised with line numbers in ``vast-openapi-facts.md``; ``Lnnn`` below is a spec line. These
schemas are the project's own text, not a copy of the spec file. Where the spec and the official
client differ on a request, the schema admits what the official client sends (docs/wire-notes.md):
``env`` as a dict, ``runtype`` as space-separated words with ``ssh_direc``, nulls for unset
strings, and the official client's extra keys. Response schemas leave objects open (Vast adds
fields at any time) but pin the types of every field the SDK reads, the error codes the spec
documents, and the exact answer of create.

``OPERATIONS`` is keyed like the pacing table: ``"METHOD /api/vN/path/{id}/"``.
"""

from __future__ import annotations

from typing import Any, Final

Schema = dict[str, Any]

_NUM: Final = {"type": "number"}
_INT: Final = {"type": "integer"}
_STR: Final = {"type": "string"}
_BOOL: Final = {"type": "boolean"}
_OPT_STR: Final = {"type": ["string", "null"]}
_OPT_NUM: Final = {"type": ["number", "null"]}
_DATE_TIME: Final = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}"}
_OPS: Final = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin")  # L6425-6447


def _obj(required: tuple[str, ...] = (), *, closed: bool = False, **props: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": props, "required": list(required)}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _error(*codes: str, **extra: Any) -> Schema:
    """The spec's Error schema ``{success: false, error, msg}`` (L9325-9334) with these codes."""
    props: dict[str, Any] = {
        "success": {"const": False},
        "error": {"enum": list(codes)} if codes else _STR,
        "msg": _STR,
        **extra,
    }
    return _obj(("error", "msg"), **props)


#: 429 on most routes: ``{"detail": "API requests too frequent endpoint threshold=X"}``.
_RATE_DETAIL: Final = _obj(("detail",), detail={"type": "string", "pattern": "threshold="})
_AUTH: Final = _error("auth_error")  # 401 "Invalid user key" (L3914-3917)
_OK: Final = _obj(("success",), success={"const": True})
_EMPTY_BODY: Final = _obj(closed=True)

#: A filter ``{op: value}``; a bare value is read as ``eq`` by the v1 list.
_FILTER: Final = {
    "anyOf": [
        {
            "type": "object",
            "propertyNames": {"enum": list(_OPS)},
            "minProperties": 1,
        },
        {"type": ["string", "number", "boolean", "null"]},
    ]
}

# --- offers ----------------------------------------------------------------------------------

_SEARCH_REQUEST: Final = {
    "type": "object",
    "properties": {
        # [field, direction] pairs (L6695-6711)
        "order": {
            "type": "array",
            "items": {
                "type": "array",
                "prefixItems": [_STR, {"enum": ["asc", "desc"]}],
                "minItems": 1,
                "maxItems": 2,
            },
        },
        # L6461-6466 enum, L6724 example: both spellings
        "type": {"enum": ["ondemand", "on-demand", "bid", "reserved"]},
        "limit": {"type": "integer", "minimum": 1},
        "allocated_storage": {"type": "number", "exclusiveMinimum": 0},  # L6712-6721
        "gpu_name": {"type": "object", "propertyNames": {"enum": list(_OPS)}},
        "reliability": {"type": "object", "properties": {"gte": _NUM}},  # L6520-6523
        "geolocation": {"type": "object", "propertyNames": {"enum": list(_OPS)}},
    },
    "additionalProperties": _FILTER,
}

#: Offer fields the SDK reads, with the spec example's types (L6745-6853).
_OFFER: Final = _obj(
    ("id", "gpu_name", "num_gpus", "dph_total"),
    id=_INT,
    ask_contract_id=_INT,
    machine_id=_INT,
    host_id=_INT,
    gpu_name=_STR,
    num_gpus=_INT,
    gpu_ram=_NUM,
    gpu_total_ram=_NUM,
    cpu_cores=_NUM,
    cpu_ram=_NUM,
    disk_space=_NUM,
    dph_base=_NUM,
    dph_total=_NUM,
    min_bid=_NUM,
    is_bid=_BOOL,
    storage_cost=_NUM,
    inet_up=_NUM,
    inet_down=_NUM,
    reliability=_NUM,
    reliability2=_NUM,
    verification=_OPT_STR,
    rentable=_BOOL,
    rented=_BOOL,
    geolocation=_OPT_STR,
    direct_port_count=_INT,
    cuda_max_good=_NUM,
    driver_version=_OPT_STR,
)

# --- create ----------------------------------------------------------------------------------

_RUNTYPE_WORDS: Final = (
    "ssh|jupyter|args|ssh_proxy|ssh_direct|ssh_direc|jupyter_proxy|jupyter_direct"
)

_CREATE_REQUEST: Final = _obj(
    (),
    closed=True,
    # the spec's fields (L1622-1774); nulls where the official client sends them
    image=_OPT_STR,
    template_hash_id=_OPT_STR,
    label=_OPT_STR,
    disk={"type": "number", "exclusiveMinimum": 0},
    runtype={"type": "string", "pattern": rf"^({_RUNTYPE_WORDS})( ({_RUNTYPE_WORDS}))*$"},
    target_state={"enum": ["running", "stopped"]},
    price={"anyOf": [{"type": "null"}, {"type": "number", "minimum": 0.001, "maximum": 128}]},
    env={
        "anyOf": [
            _STR,  # the spec's Docker-flag form
            {"type": "object", "additionalProperties": _STR},  # the official client's dict
        ]
    },
    cancel_unavail=_BOOL,
    vm=_BOOL,
    onstart={"type": ["string", "null"], "maxLength": 4048},  # L13
    args={"type": "array", "items": _STR},
    args_str=_STR,
    use_jupyter_lab=_BOOL,
    jupyter_dir=_OPT_STR,
    python_utf8=_BOOL,
    lang_utf8=_BOOL,
    force=_BOOL,
    user=_OPT_STR,
    image_login=_OPT_STR,
    volume_info={"type": "object"},
    # the official client's keys the spec does not list
    client_id={"const": "me"},
    extra={"type": ["string", "null"]},
)
_CREATE_REQUEST["anyOf"] = [
    {"required": ["image"], "properties": {"image": _STR}},
    {"required": ["template_hash_id"], "properties": {"template_hash_id": _STR}},
]

# --- instances -------------------------------------------------------------------------------

_PORT_MAP: Final = {  # the v1 row's ports (L8188-8208), also what the official client reads
    "type": "object",
    "additionalProperties": {
        "type": ["array", "null"],
        "items": _obj(("HostPort",), HostIp=_STR, HostPort={"type": "string", "pattern": r"^\d+$"}),
    },
}
_EXTRA_ENV: Final = {  # pairs (v1, L8028-8038) or "K=V" strings (Instance, L9672-9677)
    "type": "array",
    "items": {
        "anyOf": [
            _STR,
            {"type": "array", "prefixItems": [_STR, _OPT_STR], "minItems": 2, "maxItems": 2},
        ]
    },
}
_INSTANCE_FIELDS: Final[dict[str, Any]] = {
    "id": _INT,
    "machine_id": _INT,
    "actual_status": _OPT_STR,  # L9616-9621
    "intended_status": _OPT_STR,
    "cur_state": _OPT_STR,
    "next_state": _OPT_STR,
    "status_msg": _OPT_STR,
    "label": _OPT_STR,
    "image_uuid": _OPT_STR,
    "image_runtype": _OPT_STR,
    "extra_env": _EXTRA_ENV,
    "ssh_host": _OPT_STR,
    "ssh_port": {"type": ["integer", "null"]},
    "public_ipaddr": _OPT_STR,
    "direct_port_start": _INT,
    "direct_port_end": _INT,
    "direct_port_count": _INT,
    "start_date": _OPT_NUM,
    "dph_base": _NUM,
    "dph_total": _NUM,
    "min_bid": _NUM,
    "is_bid": _BOOL,
    "gpu_name": _STR,
    "num_gpus": _INT,
    "gpu_ram": _NUM,
    "gpu_totalram": _NUM,
    "disk_space": _NUM,
    "reliability2": _NUM,
}
#: The show answer's Instance (L9600+): ports as the spec's integers or the v1 mapping.
_INSTANCE: Final = _obj(
    ("id",),
    **_INSTANCE_FIELDS,
    ports={"anyOf": [{"type": "array", "items": _INT}, _PORT_MAP, {"type": "null"}]},
)
#: A v1 list row: ports only as the mapping, or null until running (L8188-8208).
_ROW: Final = _obj(("id",), **_INSTANCE_FIELDS, ports={"anyOf": [_PORT_MAP, {"type": "null"}]})

_JSON_TEXT: Final = {"type": "string", "pattern": r"^[\[{]"}
_LIST_QUERY: Final = _obj(
    (),
    closed=True,
    limit={"type": "string", "pattern": r"^-?\d+$"},  # default/max 25 (L7885-7894)
    after_token=_STR,
    order_by=_JSON_TEXT,
    select_cols=_JSON_TEXT,
    select_filters=_JSON_TEXT,
)
_LIST_PAGE: Final = _obj(
    ("success", "instances_found", "total_instances", "label_counts", "next_token", "instances"),
    success={"const": True},
    instances_found={"type": "integer", "minimum": 0, "maximum": 25},
    total_instances={"type": "integer", "minimum": 0},
    label_counts={"type": "object", "additionalProperties": _INT},
    next_token=_OPT_STR,
    instances={"type": "array", "items": _ROW, "maxItems": 25},
)

_STATE_REQUEST: Final = {
    **_obj(
        (),
        closed=True,
        state={"enum": ["stopped", "running"]},
        label={"type": "string", "maxLength": 1024},
    ),
    "minProperties": 1,  # L3823-3837: at least one
}

# --- keys, user, templates -------------------------------------------------------------------

_KEY_LINE: Final = {"type": "string", "minLength": 1}
_SSH_KEY_ROW: Final = _obj(
    ("id", "key"),
    id=_INT,
    user_id=_INT,
    key=_STR,
    created_at=_DATE_TIME,
    deleted_at={"anyOf": [_DATE_TIME, {"type": "null"}]},
)
_ADDED_KEY: Final = _obj(
    ("success", "key"),
    success={"const": True},
    key=_obj(
        ("id", "public_key"),
        id=_INT,
        user_id=_INT,
        public_key=_STR,
        created_at=_DATE_TIME,
        deleted_at={"anyOf": [_DATE_TIME, {"type": "null"}]},
    ),
)
_TEMPLATE: Final = _obj(("id",), id=_INT, name=_OPT_STR, image=_OPT_STR, hash_id=_OPT_STR)

#: route key -> {"request": body schema | None, "query": schema | None, "responses": {status: s}}.
OPERATIONS: Final[dict[str, dict[str, Any]]] = {
    "POST /api/v0/bundles/": {  # L6414-6881
        "request": _SEARCH_REQUEST,
        "query": None,
        "responses": {
            200: _obj(("offers",), offers={"type": "array", "items": _OFFER}),
            400: _error("invalid_request"),  # L6854-6866
            401: _AUTH,
            404: _error(),  # "Unauthorized" (L6867-6878)
            429: _RATE_DETAIL,
        },
    },
    "PUT /api/v0/asks/{id}/": {  # L1579-1893
        "request": _CREATE_REQUEST,
        "query": None,
        "responses": {
            200: _obj(  # exactly {success, new_contract} (L1784-1792)
                ("success", "new_contract"), closed=True, success={"const": True}, new_contract=_INT
            ),
            # L1793-1815; missing_billing is vast-api.md's (not in the spec)
            400: _error(
                "invalid_args", "invalid_price", "no_ssh_key_for_vm", "missing_billing", ask_id=_INT
            ),
            401: _AUTH,
            403: _error("invalid_args"),
            404: _error(  # L1842-1861: the code stays invalid_args, the msg names no_such_ask
                "invalid_args", ask_id=_INT, msg={"type": "string", "pattern": "no_such_ask"}
            ),
            410: _error("no_such_ask", ask_id=_INT),  # L1862-1882
            429: _RATE_DETAIL,
        },
    },
    "GET /api/v1/instances/": {  # L7872-8396
        "request": None,
        "query": _LIST_QUERY,
        "responses": {
            200: _LIST_PAGE,
            400: _error("invalid_request", "invalid_token"),
            401: _AUTH,
            429: _RATE_DETAIL,
        },
    },
    "GET /api/v0/instances/{id}/": {  # L3876-3930
        "request": None,
        "query": _obj((), closed=True, owner={"const": "me"}),  # ours; harmless (no such param)
        "responses": {
            # null: vast-api.md's answer for a missing instance (the spec documents no 404)
            200: _obj(("instances",), instances={"anyOf": [_INSTANCE, {"type": "null"}]}),
            401: _AUTH,
            429: _RATE_DETAIL,
        },
    },
    "DELETE /api/v0/instances/{id}/": {  # L3711-3794
        "request": _EMPTY_BODY,
        "query": None,
        "responses": {
            200: _obj(("success",), success={"const": True}, msg=_STR),
            400: _error("invalid_args"),
            401: _AUTH,
            404: _error("not_found"),
            429: {"anyOf": [_error("rate_limit_exceeded"), _RATE_DETAIL]},
        },
    },
    "DELETE /api/v0/instances/": {  # not in the spec: what the official client sends
        "request": _obj(
            ("instance_ids",), closed=True, instance_ids={"type": "array", "items": _INT}
        ),
        "query": None,
        "responses": {200: _OK, 400: _error("invalid_args"), 401: _AUTH, 429: _RATE_DETAIL},
    },
    "PUT /api/v0/instances/{id}/": {  # L3795-3875
        "request": _STATE_REQUEST,
        "query": None,
        "responses": {
            # 200 success:false resources_unavailable is vast-api.md's (unverifiable)
            200: {"anyOf": [_OK, _error("resources_unavailable")]},
            400: _error(),
            401: _AUTH,
            404: _error(),
            429: _RATE_DETAIL,
        },
    },
    "PUT /api/v0/instances/bid_price/{id}/": {  # L497-590
        "request": _obj(
            ("client_id", "price"),
            closed=True,
            client_id={"const": "me"},
            price={"type": "number", "minimum": 0.001, "maximum": 32.0},
        ),
        "query": None,
        "responses": {
            200: _OK,
            400: _error("invalid_args"),
            401: _AUTH,
            404: _error("no_such_instance"),
            429: _RATE_DETAIL,
        },
    },
    "PUT /api/v0/instances/reboot/{id}/": {  # L5592-5657
        "request": _EMPTY_BODY,
        "query": None,
        "responses": {200: _OK, 400: _error("invalid_args"), 401: _AUTH, 429: _RATE_DETAIL},
    },
    "PUT /api/v0/instances/request_logs/{id}/": {  # L4600-4685
        "request": _obj(
            (),
            closed=True,
            tail={"type": "string", "pattern": r"^\d+$"},
            filter=_STR,
            daemon_logs={"enum": ["true", "false"]},
        ),
        "query": None,
        "responses": {
            200: _obj(
                ("success", "result_url"), success={"const": True}, result_url=_STR, msg=_STR
            ),
            401: _AUTH,
            403: _error("not_authorized"),
            404: _error("invalid_id"),
        },
    },
    "POST /api/v0/instances/{id}/ssh/": {  # L30-93
        "request": _obj(("ssh_key",), closed=True, ssh_key=_KEY_LINE),
        "query": None,
        "responses": {200: _OK, 400: _error(), 401: _AUTH, 404: _error()},
    },
    "GET /api/v0/ssh/": {  # L1994-2043
        "request": None,
        "query": None,
        "responses": {
            200: {"type": "array", "items": _SSH_KEY_ROW},
            401: _AUTH,
            404: _error(),  # "No SSH keys found for the user"
        },
    },
    "POST /api/v0/ssh/": {  # L1894-1990
        "request": _obj(("ssh_key",), closed=True, ssh_key=_KEY_LINE),
        "query": None,
        "responses": {
            200: _ADDED_KEY,
            # no_ssh_key (L1954-1970); invalid_args: the sandbox's refusal of a malformed line
            400: _error("no_ssh_key", "invalid_args"),
            401: _AUTH,
            429: _RATE_DETAIL,
        },
    },
    "DELETE /api/v0/ssh/{id}/": {  # L3417-3543
        "request": _EMPTY_BODY,
        "query": None,
        "responses": {200: _OK, 400: _error("no_ssh_key"), 401: _AUTH},
    },
    "GET /api/v0/users/current": {  # L8939-8991
        "request": None,
        "query": None,
        "responses": {
            200: _obj(
                ("id",), id=_INT, key_id=_INT, email=_OPT_STR, balance=_NUM, ssh_key=_OPT_STR
            ),
            401: _AUTH,
        },
    },
    "GET /api/v0/template/": {  # L2814-2912
        "request": None,
        "query": _obj((), closed=True, select_filters=_JSON_TEXT, select_cols=_JSON_TEXT),
        "responses": {
            200: _obj(
                ("success", "templates_found", "templates"),
                success={"const": True},
                templates_found=_INT,
                templates={"type": "array", "items": _TEMPLATE},
            ),
            401: _AUTH,
            429: _RATE_DETAIL,
        },
    },
}
