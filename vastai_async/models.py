"""Typed, frozen views of what the Vast.ai API sends and receives.

Field names are snake_case and keep the wire name where it is natural; where a unit is added to a
name (``gpu_ram`` MB on the wire becomes ``gpu_ram_mb``) the rename lives in one place,
:mod:`vastai_async._converter`. Memory stays in the API's MB; the ``*_gb`` properties divide by
1000, never 1024 (a 24564 MB card must pass a 24 GB filter). States are plain ``str`` with known
values in :class:`InstanceStatus`, so a state Vast adds tomorrow never breaks parsing.

This module has no dependency on cattrs: turning dicts into these classes is the converter's job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

# Re-exported: the request checks below raise it; it lives in the one error tree.
from vastai_async.errors import InvalidRequestError, OutbidError

__all__ = [
    "CHANGE_BID_RANGE",
    "CREATE_PRICE_RANGE",
    "DEFAULT_RUNTYPE",
    "MAX_LABEL_CHARS",
    "MAX_ONSTART_CHARS",
    "CreateInstanceRequest",
    "CreateInstanceResponse",
    "Instance",
    "InstancePage",
    "InstanceStatus",
    "InvalidRequestError",
    "Offer",
    "RentalInfo",
    "SSHEndpoint",
    "SSHKey",
    "Template",
    "User",
    "decode_wire_env",
    "encode_port",
]

#: Direct and proxy SSH, spelled as the official CLI spells ``--ssh --direct`` (sic ``direc``).
#: The published spec's enum lists ``ssh_direct`` and ``ssh_proxy`` as single values; we send
#: what the official client sends, which works against production (docs/wire-notes.md).
DEFAULT_RUNTYPE: Final = "ssh_direc ssh_proxy"
#: The spec's limit on ``onstart`` (its description; the schema states none).
MAX_ONSTART_CHARS: Final = 4048
#: The spec's ``maxLength`` of a label set with ``PUT /instances/{id}``.
MAX_LABEL_CHARS: Final = 1024
#: Create's ``price`` (an interruptible bid), USD/hour: the spec's minimum and maximum.
CREATE_PRICE_RANGE: Final = (0.001, 128.0)
#: Change-bid's ``price``, USD/hour: the spec's minimum and maximum (lower than create's).
CHANGE_BID_RANGE: Final = (0.001, 32.0)
#: Slack when comparing a price Vast reports with the bid we sent (float rounding on the wire).
_PRICE_SLACK: Final = 1e-6

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# A lenient docker reference: no whitespace or option-like leading dash (Vast's own default
# "vastai/base-image:@vastai-automatic-tag" is no strict reference, so the grammar is loose).
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}\Z")
_PORT_SPEC = re.compile(r"(\d{1,5})(?:/(tcp|udp))?\Z")
_WIRE_PORT_KEY = re.compile(r"-p (\d{1,5}):(\d{1,5})(?:/(tcp|udp))?\Z")


class InstanceStatus:
    """Known values of ``actual_status`` (and the other state fields). States stay plain ``str``."""

    CREATED: Final = "created"
    LOADING: Final = "loading"
    RUNNING: Final = "running"
    STOPPED: Final = "stopped"
    FROZEN: Final = "frozen"
    EXITED: Final = "exited"
    REBOOTING: Final = "rebooting"
    UNKNOWN: Final = "unknown"
    OFFLINE: Final = "offline"

    #: States a fresh rental never comes back from by itself.
    FATAL: Final = frozenset({EXITED, UNKNOWN, OFFLINE})


@attrs.frozen(kw_only=True)
class Offer:
    """A rentable machine offer from ``POST /bundles/``.

    Attributes mirror the wire fields; ``gpu_ram_mb``, ``gpu_total_ram_mb``, ``cpu_ram_mb`` and
    ``disk_space_gb`` are renamed to carry their unit. ``reliability`` is the wire's
    ``reliability`` (the spec's filter name), or ``reliability2`` when only that is sent.
    ``dph_total`` is USD/hour including storage for the searched ``allocated_storage``.
    """

    id: int
    gpu_name: str
    num_gpus: int
    dph_total: float
    ask_contract_id: int | None = None
    machine_id: int | None = None
    host_id: int | None = None
    gpu_ram_mb: float | None = None
    gpu_total_ram_mb: float | None = None
    cpu_cores: float | None = None
    cpu_ram_mb: float | None = None
    disk_space_gb: float | None = None
    dph_base: float | None = None
    min_bid: float | None = None
    storage_cost: float | None = None
    inet_up: float | None = None
    inet_down: float | None = None
    reliability: float | None = None
    verification: str | None = None
    rentable: bool | None = None
    rented: bool | None = None
    geolocation: str | None = None
    public_ipaddr: str | None = None
    direct_port_count: int | None = None
    cuda_max_good: float | None = None
    driver_version: str | None = None
    dlperf: float | None = None
    score: float | None = None
    duration: float | None = None

    @property
    def gpu_ram_gb(self) -> float | None:
        """VRAM per GPU in GB (MB / 1000)."""
        return None if self.gpu_ram_mb is None else self.gpu_ram_mb / 1000

    @property
    def cpu_ram_gb(self) -> float | None:
        """System RAM in GB (MB / 1000)."""
        return None if self.cpu_ram_mb is None else self.cpu_ram_mb / 1000


@attrs.frozen(kw_only=True)
class SSHEndpoint:
    """Where to log into a machine.

    Attributes:
        host: host name or IP address.
        port: TCP port.
        kind: ``"direct"`` (the machine's public address) or ``"proxy"`` (Vast's SSH proxy).
        user: login user; Vast machines use ``root``.
    """

    host: str
    port: int
    kind: Literal["direct", "proxy"]
    user: str = "root"


@attrs.frozen(kw_only=True)
class Instance:
    """A rented instance as the list and show endpoints describe it.

    ``extra_env`` is a dict (the wire sends ``[k, v]`` pairs); ``ports`` maps ``"22/tcp"`` to the
    host ports as ints, and is ``None`` until the container runs. ``gpu_total_ram_mb`` is the
    wire's ``gpu_totalram`` (sic). ``start_date`` is epoch seconds.
    """

    id: int
    machine_id: int | None = None
    actual_status: str | None = None
    intended_status: str | None = None
    cur_state: str | None = None
    next_state: str | None = None
    status_msg: str | None = None
    label: str | None = None
    image_uuid: str | None = None
    image_runtype: str | None = None
    # Dicts are mutable: keep them out of the generated hash so frozen instances stay hashable.
    extra_env: dict[str, str] = attrs.field(factory=dict, hash=False)
    ssh_host: str | None = None
    ssh_port: int | None = None
    public_ipaddr: str | None = None
    ports: dict[str, tuple[int, ...]] | None = attrs.field(default=None, hash=False)
    direct_port_start: int | None = None
    direct_port_end: int | None = None
    direct_port_count: int | None = None
    start_date: float | None = None
    dph_total: float | None = None
    gpu_name: str | None = None
    num_gpus: int | None = None
    gpu_ram_mb: float | None = None
    gpu_total_ram_mb: float | None = None
    disk_space_gb: float | None = None
    is_bid: bool | None = None
    min_bid: float | None = None
    dph_base: float | None = None

    def is_running(self) -> bool:
        """Whether Vast reports the container running (not yet proof that SSH answers)."""
        return self.actual_status == InstanceStatus.RUNNING

    def is_outbid(self) -> bool:
        """Whether the market stopped this interruptible rental (a higher bid took the machine).

        The published spec documents outbid only as the ``client:outbid`` notification, so the
        SDK decides the instance-field signature (docs/wire-notes.md): ``is_bid`` is true, the
        caller still wants it running (``intended_status`` ``running``) and the machine
        contract is stopped (``cur_state`` ``stopped``) while the container does not run. A stop
        the caller asked for sets ``intended_status`` to ``stopped`` and is never read as outbid.
        """
        return (
            self.is_bid is True
            and self.intended_status == InstanceStatus.RUNNING
            and self.cur_state == InstanceStatus.STOPPED
            and self.actual_status != InstanceStatus.RUNNING
        )

    def outbid_error(self) -> OutbidError | None:
        """An :class:`OutbidError` describing this instance when :meth:`is_outbid`, else ``None``.

        For a held rental: raise it from a method that found the machine gone, so the caller
        learns the market took it (``dph_base`` is reported as the bid held).
        """
        if not self.is_outbid():
            return None
        return OutbidError(
            "interruptible rental stopped by the market: outbid",
            instance_id=self.id,
            bid=self.dph_base,
            min_bid=self.min_bid,
        )

    def fatal_reason(self) -> str | None:
        """Why this instance cannot become a usable fresh rental, or ``None`` if it still can.

        Fatal: ``exited``, ``unknown``, ``offline`` (the spec: "will never reach running");
        a ``status_msg`` reporting an OCI runtime failure or an ``Error``; and an outbid
        interruptible rental (:meth:`is_outbid`). A stop the caller asked for is not fatal.
        """
        status = self.actual_status
        msg = self.status_msg or ""
        # The message says more than the status ("exited" alone hides an OCI failure).
        if "OCI runtime create failed" in msg:
            return f"OCI runtime create failed (status {status})"
        if status in InstanceStatus.FATAL:
            return f"status {status}"
        if "Error" in msg:
            return "status message reports an Error"
        if self.is_outbid():
            return "outbid: the market stopped this interruptible rental"
        return None

    def interruptible_mismatch(self, bid: float) -> str | None:
        """Why this instance is not the interruptible rental at ``bid`` we asked for, or ``None``.

        Checked right after a create with a bid: ``is_bid`` must not be false, and the GPU rate
        Vast bills (``dph_base``), when stated, must not exceed the bid. A field the answer
        leaves out cannot disprove the rental and is not held against it.

        Args:
            bid: the create's ``price``, USD/hour.
        """
        if self.is_bid is False:
            return "created with a bid but Vast reports an on-demand rental (is_bid false)"
        if self.dph_base is not None and self.dph_base > bid * (1 + _PRICE_SLACK) + _PRICE_SLACK:
            return f"billed {self.dph_base:g} USD/h, above the bid of {bid:g} USD/h"
        return None

    def is_fatal(self) -> bool:
        """Whether :meth:`fatal_reason` finds a reason."""
        return self.fatal_reason() is not None

    def ssh_endpoints(self) -> list[SSHEndpoint]:
        """The endpoints to try, direct first.

        Direct is ``public_ipaddr`` + the first host port mapped to ``22/tcp``, once known. Proxy is
        ``ssh_host`` + ``ssh_port``, plus one when ``"jupyter"`` is in ``image_runtype`` (the
        official CLI's rule).
        """
        endpoints: list[SSHEndpoint] = []
        ssh_ports = (self.ports or {}).get("22/tcp") or ()
        if self.public_ipaddr and ssh_ports:
            endpoints.append(SSHEndpoint(host=self.public_ipaddr, port=ssh_ports[0], kind="direct"))
        if self.ssh_host and self.ssh_port:
            port = self.ssh_port + 1 if "jupyter" in (self.image_runtype or "") else self.ssh_port
            endpoints.append(SSHEndpoint(host=self.ssh_host, port=port, kind="proxy"))
        return endpoints


@attrs.frozen(kw_only=True)
class InstancePage:
    """One page of the v1 instance list (at most 25 rows); ``next_token`` is ``None`` at the end."""

    instances: tuple[Instance, ...] = ()
    next_token: str | None = None
    instances_found: int | None = None
    total_instances: int | None = None


@attrs.frozen(kw_only=True)
class User:
    """The account behind the API key (``GET /users/current``); ``balance``/``credit`` in USD."""

    id: int
    email: str | None = None
    balance: float | None = None
    credit: float | None = None
    username: str | None = None


@attrs.frozen(kw_only=True)
class SSHKey:
    """A public key registered on the account.

    ``key`` is the OpenSSH line (the list answer's ``key``, the add answer's ``public_key``);
    ``created_at`` and ``deleted_at`` are epoch seconds when known (the wire sends ISO dates).
    """

    id: int
    key: str
    user_id: int | None = None
    created_at: float | None = None
    deleted_at: float | None = None


@attrs.frozen(kw_only=True)
class Template:
    """A Vast template; only ``id`` is required, the rest is read if present.

    The spec's schema names only ``id``, ``name`` and ``image``; ``hash_id`` (what a create's
    ``template_hash_id`` takes) is read when the answer carries it. ``env`` is the template's
    docker-style option string (``"-e A=1 -p 8080:8080"``).
    """

    id: int
    hash_id: str | None = None
    name: str | None = None
    image: str | None = None
    tag: str | None = None
    env: str | None = None
    onstart: str | None = None
    runtype: str | None = None


@attrs.frozen(kw_only=True)
class CreateInstanceResponse:
    """Answer to ``PUT /asks/{id}/``: ``new_contract`` is the new instance's id."""

    success: bool
    new_contract: int
    instance_api_key: str | None = attrs.field(default=None, repr=False)


@attrs.frozen(kw_only=True)
class RentalInfo:
    """Pure data about a rental whose SSH login was proven; :class:`Rental` is the live handle.

    Attributes:
        instance_id: the Vast instance id.
        job_id: the caller's job id.
        owner: the owning service's id (from the label).
        label: the instance label.
        offer: the offer it was rented from, when known.
        ssh: the endpoint whose login was proven.
        host_key: the pinned OpenSSH public host key line.
        dph_total: USD/hour.
        created_at: epoch seconds of the create request.
        ready_at: epoch seconds of the first proven login.
        bid_usd_per_hour: the bid of an interruptible rental (``None``: on demand).
    """

    instance_id: int
    job_id: str
    owner: str
    label: str
    ssh: SSHEndpoint
    host_key: str
    created_at: float
    offer: Offer | None = None
    dph_total: float | None = None
    ready_at: float | None = None
    bid_usd_per_hour: float | None = None


def encode_port(spec: str) -> str:
    """The create body's env key for a port spec: ``"8080/tcp"`` -> ``"-p 8080:8080"``.

    UDP keeps its suffix (``"53/udp"`` -> ``"-p 53:53/udp"``); a bare ``"8080"`` means TCP.

    Raises:
        InvalidRequestError: the spec is not ``PORT[/tcp|/udp]`` with 1 <= PORT <= 65535.
    """
    match = _PORT_SPEC.match(spec)
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        raise InvalidRequestError(f"port {spec!r} must look like '8080/tcp' or '53/udp'")
    port, proto = int(match.group(1)), match.group(2) or "tcp"
    return f"-p {port}:{port}" + ("/udp" if proto == "udp" else "")


def decode_wire_env(env: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """Split a create body's ``env`` into variables and port specs (the inverse of ``to_wire``).

    Returns:
        ``(variables, ports)`` with ports as ``"8080/tcp"`` / ``"53/udp"``, in wire order.
    """
    variables: dict[str, str] = {}
    ports: list[str] = []
    for key, value in env.items():
        match = _WIRE_PORT_KEY.match(key)
        if match is None:
            variables[key] = value
        else:
            ports.append(f"{match.group(2)}/{match.group(3) or 'tcp'}")
    return variables, tuple(ports)


def _check_request(req: CreateInstanceRequest) -> None:
    # Fail before anything is sent or billed; messages never quote values (env may hold secrets).
    if not req.image and not req.template_hash_id:
        raise InvalidRequestError("an image or a template_hash_id is required")
    if req.image is not None and not _IMAGE.match(req.image):
        raise InvalidRequestError(
            f"image {req.image[:80]!r} is not a docker image reference (e.g. 'ubuntu:22.04')"
        )
    for key in req.env:
        if not _ENV_NAME.match(key):
            raise InvalidRequestError(
                f"env key {key!r} is not a valid variable name (pass ports through ports=)"
            )
    for spec in req.ports:
        encode_port(spec)
    if req.onstart is not None and len(req.onstart) > MAX_ONSTART_CHARS:
        raise InvalidRequestError(f"onstart is longer than {MAX_ONSTART_CHARS} characters")
    if req.label is not None and len(req.label) > MAX_LABEL_CHARS:
        raise InvalidRequestError(f"label is longer than {MAX_LABEL_CHARS} characters")
    if not (math.isfinite(req.disk_gb) and req.disk_gb > 0):
        raise InvalidRequestError("disk_gb must be a positive number")
    low, high = CREATE_PRICE_RANGE
    if req.price is not None and not (math.isfinite(req.price) and low <= req.price <= high):
        raise InvalidRequestError(
            f"price (bid, USD/hour) must be between {low:g} and {high:g}, or None for on-demand"
        )
    if req.args is not None and req.runtype != "args":
        raise InvalidRequestError("args are only sent with runtype 'args'")


@attrs.frozen(kw_only=True)
class CreateInstanceRequest:
    """What to rent an offer with; validated on construction, sent as :meth:`to_wire`.

    Attributes:
        image: docker image (or ``None`` when ``template_hash_id`` names one).
        env: environment variables; keys must be valid variable names.
        ports: ports to expose, ``"8080/tcp"`` or ``"53/udp"``.
        price: bid in USD/hour for an interruptible rental, ``None`` for on-demand.
        disk_gb: disk size in GB.
        label: instance label (at most 1024 characters).
        onstart: script run at container start (at most 4048 characters).
        image_login: registry credentials ``"-u USER -p PASS registry"`` (secret).
        template_hash_id: template to start from.
        runtype: space-separated launch mode; the default asks for direct and proxy SSH.
        args: container arguments, only with ``runtype="args"``.
        cancel_unavail: fail (410) instead of waiting when the offer is unavailable; ``None``
            leaves the key out so Vast's default applies (true for on-demand, false for
            interruptible).
        force: the official CLI's ``--force``.

    Raises:
        InvalidRequestError: on construction, for any of the rules above.
    """

    image: str | None = None
    env: dict[str, str] = attrs.field(factory=dict, hash=False)
    ports: tuple[str, ...] = ()
    price: float | None = None
    disk_gb: float = 10.0
    label: str | None = None
    onstart: str | None = None
    image_login: str | None = attrs.field(default=None, repr=False)
    template_hash_id: str | None = None
    runtype: str = DEFAULT_RUNTYPE
    args: tuple[str, ...] | None = None
    cancel_unavail: bool | None = None
    force: bool = False

    def __attrs_post_init__(self) -> None:
        _check_request(self)

    def to_wire(self) -> dict[str, Any]:
        """The JSON body of ``PUT /asks/{id}/``, with the official CLI's keys.

        Ports become env keys ``"-p 8080:8080"`` (``"-p 53:53/udp"``) with value ``"1"``: ``env``
        goes out as the official client's dict, not the spec's Docker-flag string. The
        ``cancel_unavail`` key is sent only when set, so Vast's per-type default applies.
        """
        env = dict(self.env)
        for spec in self.ports:
            env[encode_port(spec)] = "1"
        body: dict[str, Any] = {
            "client_id": "me",
            "image": self.image,
            "env": env,
            "price": self.price,
            "disk": float(self.disk_gb),
            "label": self.label,
            "extra": None,
            "onstart": self.onstart,
            "image_login": self.image_login,
            "python_utf8": False,
            "lang_utf8": False,
            "use_jupyter_lab": False,
            "jupyter_dir": None,
            "force": self.force,
            "template_hash_id": self.template_hash_id,
            "user": None,
            "runtype": self.runtype,
        }
        if self.cancel_unavail is not None:
            body["cancel_unavail"] = self.cancel_unavail
        if self.runtype == "args":
            body["args"] = list(self.args or ())
        return body
