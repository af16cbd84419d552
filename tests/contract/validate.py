"""Checking one exchange against its contract with ``jsonschema`` (Draft 2020-12)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator

from tests.contract.schemas import OPERATIONS

__all__ = ["has_contract", "request_problems", "response_problems", "route_of"]

_VALIDATORS: dict[int, Draft202012Validator] = {}


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    key = id(schema)
    if key not in _VALIDATORS:
        Draft202012Validator.check_schema(schema)
        _VALIDATORS[key] = Draft202012Validator(schema)
    return _VALIDATORS[key]


def _problems(schema: dict[str, Any] | None, data: Any, what: str) -> list[str]:
    if schema is None:
        return []
    return [
        f"{what}: {'/'.join(map(str, err.absolute_path)) or '$'}: {err.message[:300]}"
        for err in _validator(schema).iter_errors(data)
    ]


def has_contract(route: str) -> bool:
    """Whether ``"METHOD /template/"`` has a contract."""
    return route in OPERATIONS


def request_problems(
    route: str, params: Mapping[str, str] | None, body: Any, *, method: str
) -> list[str]:
    """What is wrong with a request on ``route`` (empty when it fits its contract)."""
    op = OPERATIONS[route]
    found = _problems(op["query"] or {"maxProperties": 0}, dict(params or {}), f"{route} query")
    if method in ("GET", "HEAD"):
        return found
    return found + _problems(op["request"] or {"maxProperties": 0}, body, f"{route} body")


def response_problems(route: str, status: int, raw: bytes) -> list[str]:
    """What is wrong with an answer on ``route`` (empty when it fits its contract)."""
    responses = OPERATIONS[route]["responses"]
    if status not in responses:
        return [f"{route}: status {status} is not documented ({sorted(responses)})"]
    try:
        data = json.loads(raw)
    except ValueError:
        return [f"{route}: {status} answer is not JSON"]
    return _problems(responses[status], data, f"{route} {status}")


def route_of(method: str, path: str) -> str | None:
    """The contract's route key for a concrete ``method`` and ``path`` (query ignored)."""
    want = path.split("?", 1)[0].strip("/").split("/")
    for route in OPERATIONS:
        r_method, template = route.split(" ", 1)
        parts = template.strip("/").split("/")
        if (
            r_method == method
            and len(parts) == len(want)
            and all(p == w or p.startswith("{") for p, w in zip(parts, want, strict=True))
        ):
            return route
    return None
