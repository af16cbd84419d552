"""Checking the arguments of the public entry points, from their type annotations, in one place.

Each entry point's arguments are described once, as a frozen attrs class whose annotations are
the types a caller may pass and whose validators state the ranges. :func:`check_arguments`
compares every value with its annotation (``bool`` is not a number, a ``str`` is not a sequence
of strings, NaN is not a number) and raises :class:`~vastai_async.errors.InvalidRequestError`
naming the argument, before anything is sent or rented. Nothing is coerced: ``disk_gb="64"`` is
refused, not read as 64.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, Union

import attrs

from vastai_async.config import VastAIConfig
from vastai_async.errors import InvalidRequestError
from vastai_async.events import EventCallback
from vastai_async.labels import validate_id
from vastai_async.models import Offer
from vastai_async.query import OfferQuery
from vastai_async.timings import Timings

__all__ = [
    "InstanceArguments",
    "ProvisionArguments",
    "SearchArguments",
    "check_arguments",
    "search_query",
    "validate_instance_id",
    "validate_provision_args",
    "validate_search_args",
]

_A = TypeVar("_A")


# --- range validators (types are checked from the annotations before these run) ---------------


def _finite(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise InvalidRequestError(f"{attribute.name} must be a finite number, got {value!r}")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise InvalidRequestError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value >= 0:
        raise InvalidRequestError(f"{attribute.name} must be >= 0, got {value!r}")


def _not_blank(_: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not value.strip():
        raise InvalidRequestError(f"{attribute.name} must not be blank")


def _job_id(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    validate_id(attribute.name, value)


def _not_empty(_: object, attribute: attrs.Attribute[Any], value: Sequence[Any] | None) -> None:
    if value is not None and len(value) == 0:
        raise InvalidRequestError(f"{attribute.name} is empty")


_NUMBER = (_finite, _positive)


@attrs.frozen(kw_only=True)
class SearchArguments:
    """The arguments of :meth:`VastAIService.search_offers <vastai_async.VastAIService>`.

    ``gpus`` may be one comma-separated string (the config's form); ``query`` may be an
    official-CLI query string (what ``vastai-async search --query`` takes).
    """

    min_vram_gb: float | None = attrs.field(default=None, validator=[_finite, _non_negative])
    gpus: str | Sequence[str] | None = None
    max_usd_per_hour: float | None = attrs.field(default=None, validator=_NUMBER)
    query: OfferQuery | str | None = None
    limit: int | None = attrs.field(default=None, validator=_positive)

    def gpu_names(self) -> tuple[str, ...] | None:
        """``gpus`` as a tuple of names (a string is split on commas, as in the config)."""
        if self.gpus is None:
            return None
        items = self.gpus.split(",") if isinstance(self.gpus, str) else self.gpus
        return tuple(g.strip() for g in items if g.strip())

    def offer_query(self, base: OfferQuery) -> OfferQuery:
        """``query`` as an :class:`OfferQuery`: a CLI string's filters are added to ``base``."""
        if isinstance(self.query, OfferQuery):
            return self.query
        if isinstance(self.query, str):
            return base.with_cli_query(self.query)
        return base


@attrs.frozen(kw_only=True)
class ProvisionArguments:
    """The arguments of :meth:`VastAIService.provision_instance <vastai_async.VastAIService>`."""

    job_id: str = attrs.field(validator=_job_id)
    offer_id: int | None = attrs.field(default=None, validator=_positive)
    offers: Sequence[Offer] | None = attrs.field(default=None, validator=_not_empty)
    query: OfferQuery | None = None
    image: str | None = attrs.field(default=None, validator=_not_blank)
    template: str | None = attrs.field(default=None, validator=_not_blank)
    extra_env: Mapping[str, str] | None = None
    ports: Sequence[str] | None = None
    onstart_cmd: str | None = None
    disk_gb: float | None = attrs.field(default=None, validator=_NUMBER)
    bid_usd_per_hour: float | None = attrs.field(default=None, validator=_NUMBER)
    fan_out: int = attrs.field(default=3, validator=_positive)
    timings: Timings | None = None
    max_spend_usd: float | None = attrs.field(default=None, validator=_NUMBER)
    on_event: EventCallback | None = None

    def __attrs_post_init__(self) -> None:
        if sum(x is not None for x in (self.offer_id, self.offers, self.query)) > 1:
            raise InvalidRequestError("give at most one of offer_id, offers, query")


def check_arguments(cls: type[_A], **arguments: Any) -> _A:
    """``cls(**arguments)`` after checking every value against its annotation in ``cls``.

    Raises:
        InvalidRequestError: naming the first argument whose type or value is wrong.
    """
    hints = typing.get_type_hints(cls)
    for name, value in arguments.items():
        hint = hints[name]
        if not _conforms(value, hint):
            raise InvalidRequestError(
                f"{name} must be {_describe(hint)}, got {_describe_value(value)}"
            )
    return cls(**arguments)


@attrs.frozen(kw_only=True)
class InstanceArguments:
    """An instance id, as :meth:`terminate_instance`, :meth:`get_rental` and :meth:`adopt` take."""

    instance_id: int = attrs.field(validator=_positive)


def validate_instance_id(instance_id: Any) -> int:
    """A checked instance id (a positive ``int``; ``bool`` and ``"42"`` are refused)."""
    return check_arguments(InstanceArguments, instance_id=instance_id).instance_id


def validate_search_args(**arguments: Any) -> SearchArguments:
    """Checked :class:`SearchArguments` (see :func:`check_arguments`)."""
    return check_arguments(SearchArguments, **arguments)


def validate_provision_args(**arguments: Any) -> ProvisionArguments:
    """Checked :class:`ProvisionArguments` (see :func:`check_arguments`)."""
    return check_arguments(ProvisionArguments, **arguments)


def search_query(config: VastAIConfig, args: SearchArguments) -> OfferQuery:
    """The query :meth:`VastAIService.search_offers` sends, from checked arguments.

    The config's price ceiling always holds (a query or argument may only lower it), and the
    search prices the disk the rental will have, so ``dph_total`` is what the instance bills:
    ``allocated_storage_gb`` when the query sets it, else its ``min_disk_gb`` (what a rental of
    that disk searches with), else the config's ``default_disk_gb``.
    """
    overrides: dict[str, Any] = {}
    if args.min_vram_gb is not None:
        overrides["min_vram_gb"] = args.min_vram_gb
    gpus = args.gpu_names()
    if gpus is not None:
        overrides["gpus"] = gpus
    if args.limit is not None:
        overrides["limit"] = args.limit
    base = args.offer_query(OfferQuery.from_config(config))
    ceilings = [config.max_bid_usd_per_hour]
    ceilings += [c for c in (args.max_usd_per_hour, base.max_usd_per_hour) if c is not None]
    overrides["max_usd_per_hour"] = min(ceilings)
    if base.allocated_storage_gb is None:
        disk = base.min_disk_gb if base.min_disk_gb is not None else config.default_disk_gb
        overrides["allocated_storage_gb"] = disk
    return attrs.evolve(base, **overrides)


# --- annotation matching -------------------------------------------------------------------------


def _conforms(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if hint is float:
        # An int is a fine float; a bool is not a number anyone means.
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (Callable, typing.get_origin(Callable[[], None])):
        return callable(value)
    if origin is Sequence or hint is Sequence:
        # A string is a sequence of characters, never what a list argument means.
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            return False
        return not args or all(_conforms(item, args[0]) for item in value)
    if origin is Mapping or hint is Mapping:
        if not isinstance(value, Mapping):
            return False
        return not args or all(
            _conforms(k, args[0]) and _conforms(v, args[1]) for k, v in value.items()
        )
    if isinstance(hint, type):
        return isinstance(value, hint)
    raise TypeError(f"internal error: no rule for the annotation {hint!r}")  # pragma: no cover


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is type(None):
        return "None"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if hint is float:
        return "a number"
    if hint is int:
        return "an integer"
    if hint is str:
        return "a string"
    if origin in (Callable, typing.get_origin(Callable[[], None])):
        return "a callable"
    if origin is Sequence:
        return f"a list of {_plural(args[0])}"
    if origin is Mapping:
        return f"a mapping of {_plural(args[0])} to {_plural(args[1])}"
    if isinstance(hint, type):
        return f"an {hint.__name__}" if hint.__name__[0] in "AEIOU" else f"a {hint.__name__}"
    return str(hint)  # pragma: no cover


def _plural(hint: Any) -> str:
    return {str: "strings", int: "integers", float: "numbers"}.get(
        hint, f"{getattr(hint, '__name__', hint)} objects"
    )


def _describe_value(value: Any) -> str:
    if isinstance(value, list | tuple | set):
        kinds = sorted({type(v).__name__ for v in value})
        return f"{type(value).__name__} of {', '.join(kinds) or 'nothing'}"
    if isinstance(value, str | bool | int | float) or value is None:
        return f"{type(value).__name__} {value!r}"
    return type(value).__name__
