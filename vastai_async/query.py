"""Offer search: typed filters -> the Vast query JSON, plus the client-side check behind it.

:class:`OfferQuery` turns a few typed filters into the ``POST /bundles/`` body (memory in MB,
GPU names as Vast's full names) and, with :meth:`OfferQuery.matches`, re-checks every offer on our
side: the server filter narrows the search, the client predicate is the guarantee (a short GPU name
such as ``4090`` has no server-side substring operator, and an unknown name has no server filter at
all). :func:`parse_cli_query` reads the official CLI's query strings into the same JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs

from vastai_async.errors import InvalidRequestError
from vastai_async.models import Offer

if TYPE_CHECKING:
    from vastai_async.config import VastAIConfig

__all__ = ["KNOWN_GPU_NAMES", "OfferQuery", "full_gpu_names", "gpu_name_matches", "parse_cli_query"]

#: Vast's full GPU names a short name may expand to for the server-side ``gpu_name`` filter.
KNOWN_GPU_NAMES: Final = (
    "RTX 3060",
    "RTX 3070",
    "RTX 3080",
    "RTX 3080 Ti",
    "RTX 3090",
    "RTX 3090 Ti",
    "RTX 4060 Ti",
    "RTX 4070",
    "RTX 4070 Ti",
    "RTX 4080",
    "RTX 4080S",
    "RTX 4090",
    "RTX 5080",
    "RTX 5090",
    "RTX A4000",
    "RTX A5000",
    "RTX A6000",
    "RTX 6000Ada",
    "A10",
    "A40",
    "A100 PCIE",
    "A100 SXM4",
    "A100X",
    "H100 PCIE",
    "H100 SXM",
    "H100 NVL",
    "H200",
    "L4",
    "L40",
    "L40S",
    "Tesla V100",
)

OfferType = Literal["on-demand", "bid", "reserved"]
_TYPES: Final = ("on-demand", "bid", "reserved")
_DIRECTIONS: Final = ("asc", "desc")
_OPS: Final = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})


def _words(name: str) -> list[str]:
    # The CLI writes spaces as underscores (RTX_4090); case never distinguishes two GPUs.
    return name.replace("_", " ").lower().split()


def gpu_name_matches(wanted: str, gpu_name: str) -> bool:
    """Whether ``wanted`` names ``gpu_name`` as whole words.

    ``4090`` matches ``RTX 4090`` but not ``RTX 40900``; ``A100`` matches ``A100 SXM4`` and
    ``A100 PCIE`` but not ``A1000``; a full name matches itself. Case and ``_``/space are ignored.
    """
    want, have = _words(wanted), _words(gpu_name)
    if not want:
        return False
    return any(have[i : i + len(want)] == want for i in range(len(have) - len(want) + 1))


def full_gpu_names(wanted: str) -> tuple[str, ...]:
    """The known full names ``wanted`` matches as whole words (empty when it names none)."""
    return tuple(name for name in KNOWN_GPU_NAMES if gpu_name_matches(wanted, name))


def _str_tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _order_tuple(value: Iterable[Iterable[str]]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in value:
        field, direction = item
        pairs.append((str(field), str(direction)))
    return tuple(pairs)


def _filters_copy(value: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {field: dict(ops) for field, ops in value.items()}


@attrs.frozen(kw_only=True)
class OfferQuery:
    """What offers to look for. ``None`` leaves a filter out.

    Attributes:
        gpus: short or full GPU names (``"4090"``, ``"A100"``, ``"RTX A6000"``); any may match.
        min_vram_gb: VRAM per GPU, GB (1 GB = 1000 MB, as Vast counts).
        num_gpus: exact number of GPUs.
        max_usd_per_hour: ceiling on ``dph_total``.
        min_reliability: 0..1.
        verified: only verified hosts (the official CLI's default).
        rentable: only offers that can be rented now.
        rented: ``False`` skips offers already rented.
        external: ``False`` skips external (non-Vast-billed) offers.
        min_direct_ports: minimum direct ports.
        geolocation_in: country codes (``"US"``) or full locations; any may match.
        min_cuda: minimum ``cuda_max_good``.
        min_disk_gb: minimum disk space, GB.
        type: ``"on-demand"``, ``"bid"`` (interruptible) or ``"reserved"``.
        order: ``(field, "asc" | "desc")`` pairs.
        limit: maximum number of offers the server returns.
        allocated_storage_gb: disk the server prices ``dph_total`` for.
        extra_filters: raw ``{field: {op: value}}`` filters merged last (e.g. from
            :func:`parse_cli_query`); :meth:`matches` does not check them.

    Raises:
        InvalidRequestError: on construction, for an unknown type, order direction or operator,
            or a non-positive limit.
    """

    gpus: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    min_vram_gb: float | None = None
    num_gpus: int | None = None
    max_usd_per_hour: float | None = None
    min_reliability: float | None = None
    verified: bool | None = True
    rentable: bool | None = True
    rented: bool | None = False
    external: bool | None = False
    min_direct_ports: int | None = None
    geolocation_in: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    min_cuda: float | None = None
    min_disk_gb: float | None = None
    type: OfferType = "on-demand"
    order: tuple[tuple[str, str], ...] = attrs.field(
        default=(("dph_total", "asc"),), converter=_order_tuple
    )
    limit: int | None = None
    allocated_storage_gb: float | None = None
    extra_filters: dict[str, dict[str, Any]] = attrs.field(
        factory=dict, converter=_filters_copy, hash=False
    )

    def __attrs_post_init__(self) -> None:
        if self.type not in _TYPES:
            raise InvalidRequestError(f"type must be one of {', '.join(_TYPES)}")
        for field, direction in self.order:
            if direction not in _DIRECTIONS:
                raise InvalidRequestError(f"order direction for {field!r} must be asc or desc")
        if self.limit is not None and self.limit <= 0:
            raise InvalidRequestError("limit must be positive")
        for field, ops in self.extra_filters.items():
            unknown = set(ops) - _OPS
            if unknown:
                raise InvalidRequestError(f"unknown operator(s) for {field!r}: {sorted(unknown)}")

    @classmethod
    def from_config(cls, config: VastAIConfig, **overrides: Any) -> OfferQuery:
        """The query a config asks for: its GPUs, VRAM floor and price ceiling, then overrides.

        Args:
            config: supplies ``preferred_gpus``, ``min_vram_gb``, ``max_bid_usd_per_hour``.
            **overrides: any :class:`OfferQuery` field.
        """
        fields: dict[str, Any] = {
            "gpus": config.preferred_gpus,
            "min_vram_gb": config.min_vram_gb,
            "max_usd_per_hour": config.max_bid_usd_per_hour,
        }
        fields.update(overrides)
        return cls(**fields)

    def with_cli_query(self, query: str) -> OfferQuery:
        """A copy with the filters of an official-CLI query string added to ``extra_filters``."""
        merged = _filters_copy(self.extra_filters)
        for field, ops in parse_cli_query(query).items():
            merged.setdefault(field, {}).update(ops)
        return attrs.evolve(self, extra_filters=merged)

    def server_gpu_names(self) -> tuple[str, ...] | None:
        """Full names for the server's ``gpu_name: {"in": ...}``, or ``None`` for no such filter.

        When any wanted name maps to no known full name, no server filter is sent (it would hide
        that GPU's offers); :meth:`matches` still applies the whole-word rule.
        """
        if not self.gpus:
            return None
        names: list[str] = []
        for wanted in self.gpus:
            full = full_gpu_names(wanted)
            if not full:
                return None
            names.extend(n for n in full if n not in names)
        return tuple(names)

    def to_wire(self) -> dict[str, Any]:
        """The ``POST /bundles/`` body: ``{field: {op: value}}`` filters plus order/type/limit."""
        q: dict[str, Any] = {}
        for field, flag in (
            ("verified", self.verified),
            ("rentable", self.rentable),
            ("rented", self.rented),
            ("external", self.external),
        ):
            if flag is not None:
                q[field] = {"eq": flag}
        names = self.server_gpu_names()
        if names is not None:
            q["gpu_name"] = {"in": list(names)}
        if self.min_vram_gb is not None:
            q["gpu_ram"] = {"gte": _mb(self.min_vram_gb)}
        if self.num_gpus is not None:
            q["num_gpus"] = {"eq": self.num_gpus}
        if self.max_usd_per_hour is not None:
            q["dph_total"] = {"lte": self.max_usd_per_hour}
        if self.min_reliability is not None:
            # The spec's filter name (and the current official CLI's); not ``reliability2``.
            q["reliability"] = {"gte": self.min_reliability}
        if self.min_direct_ports is not None:
            q["direct_port_count"] = {"gte": self.min_direct_ports}
        if self.geolocation_in:
            q["geolocation"] = {"in": list(self.geolocation_in)}
        if self.min_cuda is not None:
            q["cuda_max_good"] = {"gte": self.min_cuda}
        if self.min_disk_gb is not None:
            q["disk_space"] = {"gte": self.min_disk_gb}
        for field, ops in self.extra_filters.items():
            q.setdefault(field, {}).update(ops)
        q["order"] = [[field, direction] for field, direction in self.order]
        q["type"] = self.type
        if self.limit is not None:
            q["limit"] = self.limit
        if self.allocated_storage_gb is not None:
            q["allocated_storage"] = self.allocated_storage_gb
        return q

    def matches(self, offer: Offer) -> bool:
        """Whether ``offer`` satisfies the typed filters, checked on our side.

        A numeric floor or ceiling fails when the offer does not state the value (it cannot be
        guaranteed); ``verification``, ``rentable`` and ``rented`` fail only when stated wrong.
        ``external`` and ``extra_filters`` are left to the server.
        """
        if self.gpus and not any(gpu_name_matches(g, offer.gpu_name) for g in self.gpus):
            return False
        if self.max_usd_per_hour is not None and not offer.dph_total <= self.max_usd_per_hour:
            return False
        if self.num_gpus is not None and offer.num_gpus != self.num_gpus:
            return False
        floors = (
            (self.min_vram_gb, offer.gpu_ram_gb),
            (self.min_reliability, offer.reliability),
            (self.min_direct_ports, offer.direct_port_count),
            (self.min_cuda, offer.cuda_max_good),
            (self.min_disk_gb, offer.disk_space_gb),
        )
        for floor, value in floors:
            if floor is not None and (value is None or value < floor):
                return False
        if self.verified and offer.verification not in (None, "verified"):
            return False
        for wanted, stated in ((self.rentable, offer.rentable), (self.rented, offer.rented)):
            if wanted is not None and stated is not None and stated != wanted:
                return False
        return not self.geolocation_in or _geo_matches(self.geolocation_in, offer.geolocation)


def _mb(gb: float) -> int | float:
    # 24 GB -> 24000 MB; keep an int when the product is whole so the JSON reads as the CLI's.
    mb = gb * 1000
    return int(mb) if float(mb).is_integer() else mb


def _geo_matches(wanted: tuple[str, ...], geolocation: str | None) -> bool:
    if not geolocation:
        return False
    country = geolocation.rsplit(",", 1)[-1].strip().lower()
    full = geolocation.strip().lower()
    return any(w.strip().lower() in (country, full) for w in wanted)


# --- the official CLI's query strings ------------------------------------------------------------

# The official CLI's tokenizer: field, optional operator, value (a [list], a "quoted string" or a
# bare word).
_CLI_TOKEN = re.compile(
    r"([a-zA-Z0-9_]+)( *[=><!]+| +(?:[lg]te?|nin|neq|eq|not ?eq|not ?in|in) )?( *)"
    r"(\[[^\]]+\]|\"[^\"]+\"|[^ ]+)?( *)"
)
_CLI_OPS: Final[Mapping[str, str]] = {
    ">=": "gte",
    ">": "gt",
    "gt": "gt",
    "gte": "gte",
    "<=": "lte",
    "<": "lt",
    "lt": "lt",
    "lte": "lte",
    "!=": "neq",
    "==": "eq",
    "=": "eq",
    "eq": "eq",
    "neq": "neq",
    "noteq": "neq",
    "not eq": "neq",
    "notin": "notin",
    "not in": "notin",
    "nin": "notin",
    "in": "in",
}
_CLI_ALIASES: Final[Mapping[str, str]] = {
    "cuda_vers": "cuda_max_good",
    "display_active": "gpu_display_active",
    "dlperf_usd": "dlperf_per_dphtotal",
    "dph": "dph_total",
    "flops_usd": "flops_per_dphtotal",
}
#: The CLI takes RAM in GB and duration in days; the API wants MB and seconds.
_CLI_MULTIPLIERS: Final[Mapping[str, float]] = {
    "cpu_ram": 1000,
    "gpu_ram": 1000,
    "gpu_total_ram": 1000,
    "duration": 24 * 60 * 60,
}
_CLI_LITERALS: Final[Mapping[str, Any]] = {
    "true": True,
    "True": True,
    "false": False,
    "False": False,
    "None": None,
    "null": None,
}


def _driver_number(version: str) -> int:
    # "535.104.05" -> 535104005: the CLI pads each part to three digits so versions compare.
    return int("".join(part.zfill(3) for part in version.split(".")))


def parse_cli_query(query: str) -> dict[str, dict[str, Any]]:
    """Read an official-CLI search string into ``{field: {op: value}}`` filters.

    Follows ``vastai search offers``: operators ``= == != > >= < <= in notin`` (and ``eq``,
    ``neq``, ``gt`` ...); ``in``/``notin`` take ``[a,b]``; ``_`` in a value means a space
    (``gpu_name=RTX_4090``); ``true``/``false``/``None``; ``gpu_ram``, ``gpu_total_ram`` and
    ``cpu_ram`` in GB become MB (x1000) and ``duration`` in days becomes seconds; a dotted
    ``driver_version`` becomes the CLI's comparable number; ``field=any`` (or ``*``, ``?``) drops
    a filter. Other values stay strings, as the CLI sends them: the API coerces.

    Example:
        ``parse_cli_query("gpu_ram>=24 num_gpus=1 geolocation in [US,CA]")`` gives
        ``{"gpu_ram": {"gte": 24000.0}, "num_gpus": {"eq": "1"},
        "geolocation": {"in": ["US", "CA"]}}``.

    Raises:
        InvalidRequestError: unparsed text, an unknown operator or a blank value.
    """
    text = query.strip()
    tokens = _CLI_TOKEN.findall(text)
    if "".join("".join(t) for t in tokens) != text:
        raise InvalidRequestError("query has text that is not 'field op value' (quote it?)")
    result: dict[str, dict[str, Any]] = {}
    for raw_field, raw_op, _, raw_value, _ in tokens:
        field = _CLI_ALIASES.get(raw_field, raw_field)
        op = _CLI_OPS.get(raw_op.strip())
        if op is None:
            raise InvalidRequestError(f"unknown operator {raw_op.strip()!r} for {raw_field!r}")
        stripped = raw_value.strip(",[]")
        value: Any
        if op in ("in", "notin"):
            value = [v.strip().replace("_", " ").strip('"') for v in stripped.split(",")]
            value = [v for v in value if v]
        else:
            value = stripped
        if not value:
            raise InvalidRequestError(f"blank value for {raw_field!r}")
        if value in ("?", "*", "any"):
            if op != "eq":
                raise InvalidRequestError("a wildcard only makes sense with '='")
            result.pop(field, None)
            continue
        if isinstance(value, list):
            value = [_cli_value(field, v) for v in value]
        else:
            value = _cli_value(field, value.replace("_", " ").strip('"'))
        result.setdefault(field, {})[op] = value
    return result


def _cli_value(field: str, value: str) -> Any:
    # Units and literals the way the CLI converts them; everything else stays the CLI's string.
    try:
        if field in _CLI_MULTIPLIERS:
            return float(value) * _CLI_MULTIPLIERS[field]
        if field == "driver_version" and "." in value:
            return _driver_number(value)
    except ValueError as err:
        raise InvalidRequestError(f"{field!r} needs a number") from err
    return _CLI_LITERALS.get(value, value)
