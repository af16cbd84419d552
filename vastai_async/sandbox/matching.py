"""Vast's filter language on plain JSON rows: operators, ordering and keyset paging.

One engine serves offer search (``POST /bundles/``), the v1 instance list (``select_filters``,
``order_by``) and template search. Values arrive as the official clients send them: numbers
and booleans often as strings (``{"num_gpus": {"eq": "1"}}``), so the row's own type decides
how the filter value is read. A filter a row cannot be compared with is a client mistake and
raises :class:`QueryError` (answered as 400 ``invalid_args``), so a wire slip on the SDK's side
shows up in tests instead of silently matching nothing.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "OPERATORS",
    "QueryError",
    "decode_token",
    "encode_token",
    "matches",
    "parse_order",
    "sort_rows",
]

OPERATORS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})

_TRUE = {"true", "True", "1", 1}
_FALSE = {"false", "False", "0", 0}


class QueryError(ValueError):
    """A filter, order or token the server cannot read (HTTP 400 ``invalid_args``)."""


def _version_number(value: Any) -> int | None:
    """``"535.104.05"`` -> 535104005, as the official CLI encodes driver versions."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    text = str(value)
    if text.isdigit():
        return int(text)
    parts = text.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return int("".join(p.zfill(3) for p in parts))
    return None


def _coerce(field: str, row_value: Any, arg: Any) -> Any:
    """Read ``arg`` in the type of the row's value."""
    if arg is None:
        return None
    if isinstance(row_value, bool):
        if arg in _TRUE:
            return True
        if arg in _FALSE:
            return False
        raise QueryError(f"{field}: expected a boolean, got {arg!r}")
    if isinstance(row_value, int | float):
        if isinstance(arg, bool):
            return int(arg)
        try:
            return float(arg)
        except (TypeError, ValueError):
            raise QueryError(f"{field}: expected a number, got {arg!r}") from None
    if isinstance(row_value, str) and not isinstance(arg, str):
        return json.dumps(arg) if isinstance(arg, list | dict) else str(arg)
    return arg


def _compare_one(field: str, row_value: Any, op: str, arg: Any) -> bool:
    if field == "driver_version" and row_value is not None:
        row_num = _version_number(row_value)
        if op in ("in", "notin"):
            args = arg if isinstance(arg, list) else [arg]
            hit = row_num in {_version_number(a) for a in args}
            return hit if op == "in" else not hit
        arg_num = _version_number(arg)
        if row_num is not None and arg_num is not None:
            row_value, arg = row_num, arg_num
    if op in ("in", "notin"):
        if not isinstance(arg, list):
            raise QueryError(f"{field}: {op} takes a list, got {arg!r}")
        if row_value is None:
            hit = None in arg
        else:
            hit = row_value in [_coerce(field, row_value, a) for a in arg]
        return hit if op == "in" else not hit
    if row_value is None:
        if op == "eq":
            return arg is None
        if op == "neq":
            return arg is not None
        return False
    value = _coerce(field, row_value, arg)
    if op == "eq":
        return bool(row_value == value)
    if op == "neq":
        return bool(row_value != value)
    if value is None:
        return False
    try:
        if op == "gt":
            return bool(row_value > value)
        if op == "gte":
            return bool(row_value >= value)
        if op == "lt":
            return bool(row_value < value)
        return bool(row_value <= value)
    except TypeError:
        raise QueryError(f"{field}: cannot compare {row_value!r} with {arg!r}") from None


def matches(
    row: Mapping[str, Any], filters: Mapping[str, Any], *, known: Iterable[str] | None = None
) -> bool:
    """Whether ``row`` passes every ``{field: {op: value}}`` filter.

    Args:
        row: a JSON object (offer, instance, template).
        filters: the filter object, special keys already removed.
        known: fields a filter may name; a field outside it raises :class:`QueryError`.
            Defaults to the row's own keys.

    Raises:
        QueryError: unknown field or operator, or a value of the wrong type.
    """
    allowed = set(known) if known is not None else set(row)
    for field, spec in filters.items():
        if field not in allowed:
            raise QueryError(f"unknown filter field {field!r}")
        if not isinstance(spec, Mapping):
            # A bare value is read as equality, as the v1 list endpoint tolerates.
            spec = {"eq": spec}
        for op, arg in spec.items():
            if op not in OPERATORS:
                raise QueryError(f"{field}: unknown operator {op!r}")
            if not _compare_one(field, row.get(field), op, arg):
                return False
    return True


def parse_order(raw: Any) -> list[tuple[str, bool]]:
    """Read ``[["dph_total", "asc"], ...]`` or ``[{"col": "id", "dir": "desc"}]``.

    Returns:
        ``(field, descending)`` pairs.
    """
    if raw is None:
        return []
    if isinstance(raw, str | Mapping):
        raw = [raw]
    if not isinstance(raw, list):
        raise QueryError(f"order must be a list, got {raw!r}")
    out: list[tuple[str, bool]] = []
    for item in raw:
        field: Any
        direction: Any
        if isinstance(item, str):
            field, direction = item, "asc"
        elif isinstance(item, Mapping):
            field, direction = item.get("col"), item.get("dir", "asc")
        elif isinstance(item, list) and len(item) in (1, 2):
            field, direction = item[0], item[1] if len(item) == 2 else "asc"
        else:
            raise QueryError(f"unreadable order item {item!r}")
        if not isinstance(field, str) or str(direction).lower() not in ("asc", "desc"):
            raise QueryError(f"unreadable order item {item!r}")
        out.append((field, str(direction).lower() == "desc"))
    return out


def _cmp_value(a: Any, b: Any) -> int:
    # None sorts after every value in ascending order, as SQL's NULLS LAST.
    if a is None or b is None:
        return (a is None) - (b is None)
    try:
        return int(a > b) - int(a < b)
    except TypeError:
        sa, sb = str(a), str(b)
        return int(sa > sb) - int(sa < sb)


def row_key(row: Mapping[str, Any], order: Sequence[tuple[str, bool]]) -> list[Any]:
    """The values a row is sorted on, ``id`` last as the tie-break."""
    return [row.get(field) for field, _ in order] + [row.get("id")]


def _comparator(order: Sequence[tuple[str, bool]]) -> Callable[[list[Any], list[Any]], int]:
    directions = [desc for _, desc in order] + [False]

    def cmp(a: list[Any], b: list[Any]) -> int:
        for x, y, desc in zip(a, b, directions, strict=True):
            c = _cmp_value(x, y)
            if c:
                return -c if desc else c
        return 0

    return cmp


def sort_rows(
    rows: Iterable[Mapping[str, Any]],
    order: Sequence[tuple[str, bool]],
    *,
    after: list[Any] | None = None,
    known: Iterable[str] | None = None,
) -> list[Mapping[str, Any]]:
    """Rows sorted on ``order`` (then ``id``); with ``after``, only rows past that key.

    Raises:
        QueryError: an order field outside ``known``.
    """
    if known is not None:
        allowed = set(known)
        for field, _ in order:
            if field not in allowed:
                raise QueryError(f"unknown order field {field!r}")
    cmp = _comparator(order)
    keyed = [(row_key(r, order), r) for r in rows]
    if after is not None:
        if len(after) != len(order) + 1:
            raise QueryError("page token does not fit this order")
        keyed = [(k, r) for k, r in keyed if cmp(k, after) > 0]
    directions = [desc for _, desc in order] + [False]
    try:
        # Fast path: one stable sort per key, last key first (None last when ascending, first
        # when descending, as the comparator orders them).
        for i in reversed(range(len(directions))):
            keyed.sort(key=lambda kr: (kr[0][i] is None, kr[0][i]), reverse=directions[i])
    except TypeError:  # mixed types in one column: compare as the comparator does

        def by_key(
            a: tuple[list[Any], Mapping[str, Any]], b: tuple[list[Any], Mapping[str, Any]]
        ) -> int:
            return cmp(a[0], b[0])

        keyed.sort(key=functools.cmp_to_key(by_key))
    return [r for _, r in keyed]


def encode_token(key: list[Any]) -> str:
    """An opaque page token carrying the last row's sort key."""
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_token(token: str) -> list[Any]:
    """Read a token made by :func:`encode_token`.

    Raises:
        QueryError: the token is not one of ours.
    """
    try:
        padded = token + "=" * (-len(token) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise QueryError("unreadable after_token") from None
    if not isinstance(value, list):
        raise QueryError("unreadable after_token")
    return value
