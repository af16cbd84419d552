"""The one configured cattrs converter: wire dicts <-> :mod:`vastai_async.models`.

Every rename between a wire name and a model name is listed here (``_RENAMES``), and every wire
name read in place of another when it is missing (``_ALIASES``), nowhere else. Reading is
liberal, as the API is: numbers arriving as strings, ``0``/``1`` for booleans, padded IP
addresses, ``HostPort`` strings, ``ports`` as the v1 list's mapping or the spec's list of
integers, ``extra_env`` as ``[k, v]`` pairs or the spec's ``"K=V"`` strings. Two converters
come from one factory: :func:`structure` ignores unknown keys (production: Vast adds fields at
any time); :func:`structure_strict` rejects them (tests on payloads holding exactly the modelled
fields, so drift between the models and the recorded payloads is caught). Failures become
:class:`~vastai_async.errors.ResponseValidationError` with cattrs' per-field messages, which name
paths and expected types but never values (a value may be a secret).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from vastai_async.errors import ResponseValidationError
from vastai_async.models import (
    CreateInstanceRequest,
    CreateInstanceResponse,
    Instance,
    InstancePage,
    Offer,
    RentalInfo,
    SSHEndpoint,
    SSHKey,
    Template,
    User,
)

__all__ = ["make_converter", "structure", "structure_list", "structure_strict", "unstructure"]

T = TypeVar("T")

#: model field -> wire key, per model. The only place a name changes on the way in or out.
_RENAMES: Final[Mapping[type, Mapping[str, str]]] = {
    Offer: {
        "gpu_ram_mb": "gpu_ram",
        "gpu_total_ram_mb": "gpu_total_ram",
        "cpu_ram_mb": "cpu_ram",
        "disk_space_gb": "disk_space",
    },
    Instance: {
        "gpu_ram_mb": "gpu_ram",
        "gpu_total_ram_mb": "gpu_totalram",  # sic: the instance endpoints drop the underscore
        "disk_space_gb": "disk_space",
    },
}

#: wire key -> wire keys read instead when it is missing or null, per model. Alternates are
#: consumed, so strict mode accepts a payload carrying both (the spec's offer example does).
_ALIASES: Final[Mapping[type, Mapping[str, tuple[str, ...]]]] = {
    # The spec's search filter and example name ``reliability``; older answers carry only
    # ``reliability2`` (the same 0..1 figure).
    Offer: {"reliability": ("reliability2",)},
    # ``GET /ssh/`` lists ``key``; ``POST /ssh/`` answers ``public_key``.
    SSHKey: {"key": ("public_key",)},
}

#: Models read from the API (and RentalInfo, kept in the state folder).
_MODELS: Final = (
    Offer,
    Instance,
    InstancePage,
    User,
    SSHKey,
    Template,
    CreateInstanceResponse,
    SSHEndpoint,
    RentalInfo,
)

_INT_TEXT = re.compile(r"\s*[+-]?\d+(\.0*)?\s*\Z")
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})


def _to_int(value: Any, _: type) -> int:
    # bool is an int subclass; a bool where a count is expected is drift, not tolerance.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.match(value):
        return int(float(value)) if "." in value else int(value)
    raise ValueError("not an integer")


def _to_float(value: Any, _: type) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return float(value)  # raises ValueError on junk; "0.35" and " 1e3 " pass
    raise TypeError("not a number")


def _to_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("not a boolean")


def _to_str(value: Any, _: type) -> str:
    if isinstance(value, str):
        return value
    # A version such as driver_version may come as a bare number; containers never become text.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise TypeError("not a string")


def _ip(value: Any, _: Any) -> str | None:
    # Vast pads public_ipaddr with whitespace (and newlines); an empty address is no address.
    if value is None:
        return None
    text = _to_str(value, str).strip()
    return text or None


def _host_ports(value: Any, _: Any) -> dict[str, tuple[int, ...]] | None:
    # {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}, {"HostIp": "::", ...}]}: Docker lists
    # IPv4 and IPv6 bindings of the same port separately, so keep each port once, in order.
    if value is None:
        return None
    if isinstance(value, list):
        # The spec's show answer: exposed ports as integers ([8080, 8081]), with no host
        # mapping. Keep them as known ports whose host side is unknown; never invent one.
        return {f"{_to_int(port, int)}/tcp": () for port in value}
    if not isinstance(value, Mapping):
        raise TypeError("ports must be a mapping or a list")
    result: dict[str, tuple[int, ...]] = {}
    for key, bindings in value.items():
        ports: list[int] = []
        for binding in bindings or ():
            raw = binding.get("HostPort") if isinstance(binding, Mapping) else binding
            port = _to_int(raw, int)
            if port not in ports:
                ports.append(port)
        result[_to_str(key, str)] = tuple(ports)
    return result


def _extra_env(value: Any, _: Any) -> dict[str, str]:
    # The v1 list sends [[k, v], ...], the spec's Instance schema ["K=V", ...]; accept a dict too.
    # Values may be numbers: keep them as text.
    if value is None:
        return {}
    items = value.items() if isinstance(value, Mapping) else value
    result: dict[str, str] = {}
    for item in items:
        if isinstance(item, str):
            key, _sep, text = item.partition("=")
            result[key] = text
            continue
        key, val = item
        result[_to_str(key, str)] = "" if val is None else _to_str(val, str)
    return result


def _epoch(value: Any, _: Any) -> float | None:
    # Numbers, numeric strings, or ISO 8601 text ("2024-05-01T12:00:00Z"; naive means UTC).
    if value is None:
        return None
    try:
        return _to_float(value, float)
    except ValueError:
        stamp = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return stamp.timestamp()


def _unstructure_ports(value: dict[str, tuple[int, ...]] | None) -> Any:
    if value is None:
        return None
    return {
        key: [{"HostIp": "0.0.0.0", "HostPort": str(port)} for port in ports]
        for key, ports in value.items()
    }


def _field_overrides(cls: type) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        field: override(rename=wire) for field, wire in _RENAMES.get(cls, {}).items()
    }
    if cls in (Offer, Instance):
        overrides["public_ipaddr"] = override(struct_hook=_ip)
    if cls is Instance:
        overrides["ports"] = override(struct_hook=_host_ports, unstruct_hook=_unstructure_ports)
        overrides["extra_env"] = override(
            struct_hook=_extra_env, unstruct_hook=lambda env: [[k, v] for k, v in env.items()]
        )
    if cls is SSHKey:
        overrides["created_at"] = override(struct_hook=_epoch)
        overrides["deleted_at"] = override(struct_hook=_epoch)
    return overrides


def _with_aliases(
    fn: Callable[[Any, Any], Any], aliases: Mapping[str, tuple[str, ...]]
) -> Callable[[Any, Any], Any]:
    def hook(data: Any, cls: Any) -> Any:
        if isinstance(data, Mapping):
            data = dict(data)
            for primary, alternates in aliases.items():
                for alternate in alternates:
                    if alternate in data:
                        value = data.pop(alternate)
                        if data.get(primary) is None:
                            data[primary] = value
        return fn(data, cls)

    return hook


def make_converter(*, forbid_extra_keys: bool) -> cattrs.Converter:
    """Build a converter for the models.

    Args:
        forbid_extra_keys: reject keys no model field reads (strict mode, for tests).

    Returns:
        A configured :class:`cattrs.Converter`.
    """
    conv = cattrs.Converter(forbid_extra_keys=forbid_extra_keys, detailed_validation=True)
    conv.register_structure_hook(int, _to_int)
    conv.register_structure_hook(float, _to_float)
    conv.register_structure_hook(bool, _to_bool)
    conv.register_structure_hook(str, _to_str)
    for cls in _MODELS:
        overrides = _field_overrides(cls)
        structure_fn: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, conv, **overrides)
        if cls in _ALIASES:
            structure_fn = _with_aliases(structure_fn, _ALIASES[cls])
        conv.register_structure_hook(cls, structure_fn)
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **overrides))
    # The request goes out through its own to_wire(); this only lets callers persist it.
    conv.register_unstructure_hook(
        CreateInstanceRequest, make_dict_unstructure_fn(CreateInstanceRequest, conv)
    )
    return conv


_PRODUCTION: Final = make_converter(forbid_extra_keys=False)
_STRICT: Final = make_converter(forbid_extra_keys=True)


def _structure_with(conv: cattrs.Converter, data: Any, cls: Any, context: dict[str, Any]) -> Any:
    name = getattr(cls, "__name__", None) or repr(cls)
    if attrs.has(cls) and not isinstance(data, Mapping):
        raise ResponseValidationError(f"response does not fit {name}: not a JSON object", **context)
    try:
        return conv.structure(data, cls)
    except cattrs.BaseValidationError as err:
        problems = "; ".join(cattrs.transform_error(err, path="$"))
        raise ResponseValidationError(
            f"response does not fit {name}: {problems}", **context
        ) from err
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        # A body of the wrong shape altogether (a list where an object belongs, ...).
        raise ResponseValidationError(
            f"response does not fit {name}: {type(err).__name__}", **context
        ) from err


def structure(data: Any, cls: type[T], **context: Any) -> T:
    """Read a wire dict into ``cls``, ignoring keys no field reads.

    Args:
        data: the decoded JSON.
        cls: a model class.
        **context: ``method``, ``path``, ``instance_id``, ``offer_id`` for the error.

    Returns:
        The model instance.

    Raises:
        ResponseValidationError: the data does not fit the model.
    """
    result: T = _structure_with(_PRODUCTION, data, cls, context)
    return result


def structure_strict(data: Any, cls: type[T], **context: Any) -> T:
    """Like :func:`structure`, but unknown keys are an error (tests use it to catch drift)."""
    result: T = _structure_with(_STRICT, data, cls, context)
    return result


def structure_list(data: Any, cls: type[T], **context: Any) -> list[T]:
    """Read a JSON list of ``cls`` (e.g. the ``offers`` of a search), ignoring unknown keys.

    Raises:
        ResponseValidationError: the data is not a list or an item does not fit.
    """
    if not isinstance(data, list):
        raise ResponseValidationError(
            f"response does not fit list[{cls.__name__}]: not a list", **context
        )
    result: list[T] = _structure_with(_PRODUCTION, data, list[cls], context)  # type: ignore[valid-type]
    return result


def unstructure(obj: Any) -> Any:
    """Turn a model back into wire-shaped JSON data (wire names, ``[k, v]`` env pairs ...)."""
    return _PRODUCTION.unstructure(obj)
