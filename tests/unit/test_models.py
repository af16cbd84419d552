"""Models and the cattrs converter: strict/production reading of recorded payloads, tolerance
rules, instance state helpers, SSH endpoints, and the create body."""

from __future__ import annotations

import math
from typing import Any

import cattrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit import payloads
from vastai_async._converter import structure, structure_list, structure_strict, unstructure
from vastai_async.errors import ResponseValidationError, VastAIError
from vastai_async.models import (
    DEFAULT_RUNTYPE,
    CreateInstanceRequest,
    CreateInstanceResponse,
    Instance,
    InstancePage,
    InstanceStatus,
    InvalidRequestError,
    Offer,
    RentalInfo,
    SSHEndpoint,
    SSHKey,
    Template,
    User,
    decode_wire_env,
    encode_port,
)

MODELLED = [
    pytest.param(payloads.OFFER_MODELLED, Offer, id="offer"),
    pytest.param(payloads.OFFER_SPARSE, Offer, id="offer-sparse"),
    pytest.param(payloads.INSTANCE_LOADING, Instance, id="instance-loading"),
    pytest.param(payloads.INSTANCE_RUNNING, Instance, id="instance-running"),
    pytest.param(payloads.INSTANCE_CREATED, Instance, id="instance-created"),
    pytest.param(payloads.V1_PAGE, InstancePage, id="v1-page"),
    pytest.param(payloads.USER, User, id="user"),
    pytest.param(payloads.SSH_KEY, SSHKey, id="ssh-key"),
    pytest.param(payloads.TEMPLATE, Template, id="template"),
    pytest.param(payloads.CREATE_RESPONSE, CreateInstanceResponse, id="create-response"),
]

RECORDED = [
    pytest.param(payloads.OFFER_RECORDED, Offer, id="offer"),
    pytest.param(payloads.INSTANCE_RECORDED, Instance, id="instance"),
    pytest.param(payloads.USER_RECORDED, User, id="user"),
    pytest.param({**payloads.V1_PAGE, "success": True}, InstancePage, id="v1-page"),
]


# --- converter: strict and production modes -------------------------------------------------


@pytest.mark.parametrize(("payload", "cls"), MODELLED)
def test_strict_mode_accepts_payloads_holding_exactly_the_modelled_fields(
    payload: dict[str, Any], cls: type[Any]
) -> None:
    assert isinstance(structure_strict(payload, cls), cls)


@pytest.mark.parametrize(("payload", "cls"), RECORDED)
def test_production_ignores_unknown_fields_that_strict_mode_rejects(
    payload: dict[str, Any], cls: type[Any]
) -> None:
    assert isinstance(structure(payload, cls), cls)
    with pytest.raises(ResponseValidationError, match="extra fields found"):
        structure_strict(payload, cls)


def test_offer_wire_names_units_and_quirks_are_read() -> None:
    offer = structure(payloads.OFFER_RECORDED, Offer)
    assert offer.id == 14718503
    assert offer.num_gpus == 1  # sent as "1"
    assert offer.dph_total == pytest.approx(0.3411111111111111)  # sent as a string
    assert offer.gpu_ram_mb == 24564
    assert offer.gpu_total_ram_mb == 24564
    assert offer.cpu_ram_mb == 128732
    assert offer.disk_space_gb == 412.5
    assert offer.reliability == 0.9962  # from reliability2
    assert offer.public_ipaddr == "203.0.113.17"  # whitespace stripped
    assert offer.rentable is True  # sent as 1
    assert offer.rented is False  # sent as 0
    assert offer.driver_version == "550.107.02"


def test_offer_ram_in_gb_divides_by_1000_so_a_24564_mb_card_counts_as_24_gb() -> None:
    offer = structure(payloads.OFFER_MODELLED, Offer)
    assert offer.gpu_ram_gb == pytest.approx(24.564)
    assert offer.gpu_ram_gb is not None
    assert offer.gpu_ram_gb >= 24
    assert offer.cpu_ram_gb == pytest.approx(128.732)


def test_nulls_become_none_where_the_model_allows_it() -> None:
    offer = structure_strict(payloads.OFFER_SPARSE, Offer)
    assert offer.gpu_ram_mb is None
    assert offer.gpu_ram_gb is None
    assert offer.public_ipaddr is None
    assert offer.reliability is None
    assert offer.machine_id is None  # missing altogether


def test_instance_ports_become_int_host_ports_without_ipv6_duplicates() -> None:
    inst = structure(payloads.INSTANCE_RECORDED, Instance)
    assert inst.ports == {"22/tcp": (41234,), "8080/tcp": (41235,), "53/udp": (41236,)}
    assert inst.ssh_port == 30017  # sent as "30017"
    assert inst.public_ipaddr == "203.0.113.17"
    assert inst.gpu_total_ram_mb == 24564  # wire gpu_totalram (sic)
    assert inst.disk_space_gb == 64.0


def test_instance_ports_are_none_until_running() -> None:
    assert structure(payloads.INSTANCE_LOADING, Instance).ports is None


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        ([["JOB", "42"], ["-p 8080:8080", "1"]], {"JOB": "42", "-p 8080:8080": "1"}),
        ({"JOB": "42"}, {"JOB": "42"}),
        ([["N", 3], ["EMPTY", None]], {"N": "3", "EMPTY": ""}),
        (None, {}),
        ([], {}),
    ],
)
def test_extra_env_pairs_or_dict_become_a_str_dict(wire: Any, expected: dict[str, str]) -> None:
    inst = structure(payloads.variant(payloads.INSTANCE_LOADING, extra_env=wire), Instance)
    assert inst.extra_env == expected


def test_blank_public_ipaddr_reads_as_no_address() -> None:
    inst = structure(payloads.variant(payloads.INSTANCE_RUNNING, public_ipaddr=" \n"), Instance)
    assert inst.public_ipaddr is None
    assert [e.kind for e in inst.ssh_endpoints()] == ["proxy"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("num_gpus", "2", 2),
        ("num_gpus", 2.0, 2),
        ("num_gpus", " 4 ", 4),
        ("num_gpus", "4.0", 4),
        ("dph_total", "0.35", 0.35),
        ("dph_total", 1, 1.0),
        ("rentable", 1, True),
        ("rentable", 0, False),
        ("rentable", "true", True),
        ("rentable", "False", False),
        ("driver_version", 535, "535"),
    ],
)
def test_tolerated_wire_spellings(field: str, value: Any, expected: Any) -> None:
    offer = structure(payloads.variant(payloads.OFFER_MODELLED, **{field: value}), Offer)
    assert getattr(offer, field) == expected
    assert type(getattr(offer, field)) is type(expected)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_gpus", "four"),
        ("num_gpus", 1.5),
        ("num_gpus", True),
        ("num_gpus", [1]),
        ("dph_total", "cheap"),
        ("dph_total", {"usd": 1}),
        ("rentable", 2),
        ("rentable", "maybe"),
        ("gpu_name", ["RTX 4090"]),
        ("gpu_name", None),
    ],
)
def test_wrong_types_raise_response_validation_error_naming_the_field(
    field: str, value: Any
) -> None:
    bad = payloads.variant(payloads.OFFER_MODELLED, **{field: value})
    with pytest.raises(ResponseValidationError, match=rf"\$\.{field}") as info:
        structure(bad, Offer, method="POST", path="/api/v0/bundles/")
    assert isinstance(info.value.__cause__, cattrs.BaseValidationError)
    assert info.value.path == "/api/v0/bundles/"
    assert isinstance(info.value, VastAIError)


def test_missing_required_field_is_reported() -> None:
    bad = payloads.variant(payloads.OFFER_MODELLED, id=...)
    with pytest.raises(ResponseValidationError, match=r"required field missing @ \$\.id"):
        structure(bad, Offer)


def test_validation_messages_never_quote_values() -> None:
    secret = "sk-THIS-MUST-NOT-LEAK"
    bad = payloads.variant(payloads.CREATE_RESPONSE, new_contract=secret)
    with pytest.raises(ResponseValidationError) as info:
        structure(bad, CreateInstanceResponse)
    assert secret not in str(info.value)


@pytest.mark.parametrize("body", [[1, 2], "offers", None, 3])
def test_a_body_that_is_not_an_object_is_a_validation_error(body: Any) -> None:
    with pytest.raises(ResponseValidationError, match="not a JSON object"):
        structure(body, Offer)


def test_structure_list_reads_every_offer_and_rejects_a_non_list() -> None:
    offers = structure_list([payloads.OFFER_RECORDED, payloads.OFFER_SPARSE], Offer)
    assert [o.id for o in offers] == [14718503, 9001]
    with pytest.raises(ResponseValidationError, match="not a list"):
        structure_list({"offers": []}, Offer)
    with pytest.raises(ResponseValidationError, match=r"\$\[1\]\.num_gpus"):
        structure_list([payloads.OFFER_SPARSE, {**payloads.OFFER_SPARSE, "num_gpus": "x"}], Offer)


def test_v1_page_reads_nested_instances() -> None:
    page = structure_strict(payloads.V1_PAGE, InstancePage)
    assert [i.id for i in page.instances] == [21450017, 21450017]
    assert page.instances[1].ports is not None
    assert page.next_token == "eyJpZCI6IDIxNDUwMDE4fQ=="
    assert page.instances_found == 27


def test_last_v1_page_has_no_token() -> None:
    page = structure({"success": True, "instances": [], "next_token": None}, InstancePage)
    assert page.next_token is None
    assert page.instances == ()


def test_user_and_ssh_key_are_read() -> None:
    user = structure(payloads.USER, User)
    assert user.balance == 12.57  # sent as a string
    key = structure(payloads.SSH_KEY, SSHKey)
    assert key.created_at == 1741944413.0  # naive ISO text read as UTC
    assert structure({"id": 1, "key": "k", "created_at": 1700000000}, SSHKey).created_at == 1.7e9


@pytest.mark.parametrize(
    "model",
    [
        structure(payloads.OFFER_RECORDED, Offer),
        structure(payloads.INSTANCE_RECORDED, Instance),
        structure(payloads.INSTANCE_CREATED, Instance),
        structure(payloads.TEMPLATE, Template),
        RentalInfo(
            instance_id=21450017,
            job_id="job-42",
            owner="host-1234-ab12",
            label="vastai-async:host-1234-ab12:job-42:r1",
            offer=structure(payloads.OFFER_MODELLED, Offer),
            ssh=SSHEndpoint(host="203.0.113.17", port=41234, kind="direct"),
            host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey",
            dph_total=0.34,
            created_at=1732800000.0,
            ready_at=1732800042.5,
        ),
    ],
    ids=["offer", "instance", "instance-created", "template", "rental-info"],
)
def test_unstructure_gives_wire_names_that_structure_strict_reads_back(model: Any) -> None:
    data = unstructure(model)
    assert structure_strict(data, type(model)) == model


def test_offer_unstructures_to_wire_names() -> None:
    data = unstructure(structure(payloads.OFFER_MODELLED, Offer))
    assert data["reliability"] == 0.9962  # the spec's name; read from reliability2 if alone
    assert data["gpu_ram"] == 24564
    assert "gpu_ram_mb" not in data


def test_instances_with_dict_fields_are_hashable() -> None:
    inst = structure(payloads.INSTANCE_RUNNING, Instance)
    assert hash(inst) == hash(structure(payloads.INSTANCE_RUNNING, Instance))


def test_secrets_are_not_in_reprs() -> None:
    resp = structure(payloads.CREATE_RESPONSE, CreateInstanceResponse)
    assert payloads.CREATE_RESPONSE["instance_api_key"] not in repr(resp)
    req = CreateInstanceRequest(image="img", image_login="-u me -p hunter2 docker.io")
    assert "hunter2" not in repr(req)


# --- instance state -----------------------------------------------------------------------------


def _inst(**fields: Any) -> Instance:
    return structure(payloads.variant(payloads.INSTANCE_LOADING, **fields), Instance)


@pytest.mark.parametrize(
    ("fields", "fatal"),
    [
        ({"actual_status": "loading"}, False),
        ({"actual_status": "running", "status_msg": "success, running img/ssh"}, False),
        ({"actual_status": None, "status_msg": None}, False),
        ({"actual_status": "created"}, False),
        ({"actual_status": "rebooting"}, False),
        ({"actual_status": "some_future_state"}, False),
        ({"actual_status": "exited"}, True),
        ({"actual_status": "unknown"}, True),
        ({"actual_status": "offline"}, True),
        (
            {"status_msg": "Error response from daemon: OCI runtime create failed: runc"},
            True,
        ),
        ({"status_msg": "Error: image not found"}, True),
        # a stop the caller asked for (every state field stopped) is not a failure
        (
            {
                "actual_status": "stopped",
                "intended_status": "stopped",
                "cur_state": "stopped",
                "next_state": "stopped",
            },
            False,
        ),
        # stopped while Vast still intends to run it (e.g. a reboot in progress) is not final
        ({"actual_status": "stopped", "intended_status": "running"}, False),
        # the outbid signature: an interruptible, still wanted running, its contract stopped
        (
            {
                "is_bid": True,
                "actual_status": "stopped",
                "intended_status": "running",
                "cur_state": "stopped",
                "next_state": "stopped",
            },
            True,
        ),
        # the same on an on-demand rental is not an outbid
        (
            {
                "is_bid": False,
                "actual_status": "stopped",
                "intended_status": "running",
                "cur_state": "stopped",
            },
            False,
        ),
    ],
)
def test_fatal_states(fields: dict[str, Any], fatal: bool) -> None:
    inst = _inst(**fields)
    assert inst.is_fatal() is fatal
    assert (inst.fatal_reason() is not None) is fatal


def test_is_running_only_for_running() -> None:
    assert _inst(actual_status=InstanceStatus.RUNNING).is_running()
    assert not _inst(actual_status=InstanceStatus.LOADING).is_running()
    assert not _inst(actual_status=None).is_running()


def test_unknown_states_parse_as_plain_strings() -> None:
    assert _inst(actual_status="hibernating").actual_status == "hibernating"


# --- SSH endpoints ------------------------------------------------------------------------------


def test_running_instance_offers_direct_first_then_proxy() -> None:
    inst = structure(payloads.INSTANCE_RUNNING, Instance)
    assert inst.ssh_endpoints() == [
        SSHEndpoint(host="203.0.113.17", port=41234, kind="direct"),
        SSHEndpoint(host="ssh5.vast.ai", port=30017, kind="proxy"),
    ]


def test_loading_instance_has_only_the_proxy_endpoint() -> None:
    assert structure(payloads.INSTANCE_LOADING, Instance).ssh_endpoints() == [
        SSHEndpoint(host="ssh5.vast.ai", port=30017, kind="proxy", user="root")
    ]


def test_jupyter_runtype_moves_the_proxy_port_up_by_one() -> None:
    inst = _inst(image_runtype="jupyter_proxy ssh_proxy")
    assert inst.ssh_endpoints() == [SSHEndpoint(host="ssh5.vast.ai", port=30018, kind="proxy")]


def test_no_endpoint_known_gives_an_empty_list() -> None:
    assert Instance(id=1).ssh_endpoints() == []


# --- create body --------------------------------------------------------------------------------

OFFICIAL_KEYS = {
    "client_id",
    "image",
    "env",
    "price",
    "disk",
    "label",
    "extra",
    "onstart",
    "image_login",
    "python_utf8",
    "lang_utf8",
    "use_jupyter_lab",
    "jupyter_dir",
    "force",
    "template_hash_id",
    "user",
    "runtype",
}


def test_create_body_has_exactly_the_official_cli_keys() -> None:
    body = CreateInstanceRequest(image="vastai/base-image:cuda-12.4.1", disk_gb=64).to_wire()
    assert set(body) == OFFICIAL_KEYS
    assert body["client_id"] == "me"
    assert body["runtype"] == DEFAULT_RUNTYPE == "ssh_direc ssh_proxy"
    assert body["price"] is None  # on demand
    assert body["disk"] == 64.0
    assert body["extra"] is None
    assert body["user"] is None
    assert body["jupyter_dir"] is None
    assert body["python_utf8"] is body["lang_utf8"] is body["use_jupyter_lab"] is False


def test_create_body_sends_args_only_with_runtype_args() -> None:
    body = CreateInstanceRequest(image="img", runtype="args", args=("python", "-m", "x")).to_wire()
    assert set(body) == OFFICIAL_KEYS | {"args"}
    assert body["args"] == ["python", "-m", "x"]
    assert "args" not in CreateInstanceRequest(image="img", runtype="ssh_proxy").to_wire()


def test_create_body_encodes_ports_as_env_keys_with_value_1() -> None:
    req = CreateInstanceRequest(
        image="img",
        env={"JOB": "42", "TOKEN": "x"},
        ports=("8080/tcp", "53/udp", "9000"),
        price=0.25,
        label="vastai-async:o:j:r",
        onstart="nvidia-smi",
        template_hash_id="abc",
        image_login="-u u -p p r",
        cancel_unavail=True,
    )
    body = req.to_wire()
    assert body["env"] == {
        "JOB": "42",
        "TOKEN": "x",
        "-p 8080:8080": "1",
        "-p 53:53/udp": "1",
        "-p 9000:9000": "1",
    }
    assert body["price"] == 0.25
    assert body["cancel_unavail"] is True
    assert body["image_login"] == "-u u -p p r"
    assert req.env == {"JOB": "42", "TOKEN": "x"}  # to_wire does not touch the model


@pytest.mark.parametrize(
    ("spec", "key"),
    [("8080/tcp", "-p 8080:8080"), ("53/udp", "-p 53:53/udp"), ("22", "-p 22:22")],
)
def test_encode_port(spec: str, key: str) -> None:
    assert encode_port(spec) == key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image": "img", "env": {"-p 8080:8080": "1"}}, "ports="),
        ({"image": "img", "env": {"1ABC": "x"}}, "variable name"),
        ({"image": "img", "env": {"A-B": "x"}}, "variable name"),
        ({"image": "img", "env": {"": "x"}}, "variable name"),
        ({"image": "img", "ports": ("80/sctp",)}, "port"),
        ({"image": "img", "ports": ("0/tcp",)}, "port"),
        ({"image": "img", "ports": ("70000/tcp",)}, "port"),
        ({"image": "img", "ports": ("8080:8080",)}, "port"),
        ({"image": "img", "onstart": "x" * 4049}, "onstart"),
        ({"image": "img", "label": "x" * 1025}, "label"),
        ({"image": "img", "disk_gb": 0}, "disk_gb"),
        ({"image": "img", "disk_gb": -5}, "disk_gb"),
        ({"image": "img", "disk_gb": math.nan}, "disk_gb"),
        ({"image": "img", "price": -0.01}, "price"),
        ({"image": "img", "price": math.inf}, "price"),
        ({"image": "img", "args": ("x",)}, "runtype 'args'"),
        ({}, "image or a template_hash_id"),
    ],
)
def test_invalid_create_requests_are_refused_locally(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match) as info:
        CreateInstanceRequest(**kwargs)
    assert isinstance(info.value, VastAIError)
    assert isinstance(info.value, ValueError)


def test_limits_are_inclusive() -> None:
    req = CreateInstanceRequest(
        template_hash_id="h", onstart="x" * 4048, label="y" * 1024, price=0.001
    )
    assert req.to_wire()["price"] == 0.001
    assert CreateInstanceRequest(image="img", price=128).to_wire()["price"] == 128


@pytest.mark.parametrize("price", [0, 0.0009, 128.001, float("nan"), float("inf"), -1])
def test_create_price_outside_the_spec_range_is_refused(price: float) -> None:
    """The spec's create price is 0.001..128 USD/h; anything else never goes out."""
    with pytest.raises(InvalidRequestError, match=r"between 0\.001 and 128"):
        CreateInstanceRequest(image="img", price=price)


@pytest.mark.parametrize(("asked", "sent"), [(None, None), (True, True), (False, False)])
def test_cancel_unavail_goes_out_only_when_asked(asked: bool | None, sent: bool | None) -> None:
    body = CreateInstanceRequest(image="img", cancel_unavail=asked).to_wire()
    assert body.get("cancel_unavail", None) is sent
    assert ("cancel_unavail" in body) is (asked is not None)


def test_refusal_never_quotes_an_env_value() -> None:
    with pytest.raises(InvalidRequestError) as info:
        CreateInstanceRequest(image="img", env={"OK": "hunter2", "BAD KEY": "s3cr3t"})
    assert "hunter2" not in str(info.value)
    assert "s3cr3t" not in str(info.value)


_env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
_ports = st.lists(
    st.tuples(st.integers(1, 65535), st.sampled_from(["tcp", "udp"])),
    unique_by=lambda p: p[0],
    max_size=5,
)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(env=st.dictionaries(_env_names, st.text(max_size=20), max_size=6), ports=_ports)
def test_env_and_port_encoding_round_trips(
    env: dict[str, str], ports: list[tuple[int, str]]
) -> None:
    specs = tuple(f"{port}/{proto}" for port, proto in ports)
    body = CreateInstanceRequest(image="img", env=env, ports=specs).to_wire()
    assert all(v == "1" for k, v in body["env"].items() if k.startswith("-p "))
    assert decode_wire_env(body["env"]) == (env, specs)
