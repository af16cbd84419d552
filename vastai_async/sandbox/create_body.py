"""The sandbox's reading of a create body (``PUT /asks/{id}/``): what the spec allows, plus what
the official client sends (``env`` as a dict as well as the spec's Docker-flag string).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from vastai_async.sandbox.app import ApiError

__all__ = ["CREATE_PRICE", "LABEL_MAX", "ONSTART_MAX", "create_args", "env_from_flags"]

LABEL_MAX = 1024  # PUT label maxLength (L3836)
ONSTART_MAX = 4048  # L13
CREATE_PRICE = (0.001, 128.0)  # L1678-1679

_ENV_FLAG_PORT = re.compile(r"\d{1,5}(?::\d{1,5})?(?:/(?:tcp|udp))?\Z")


def env_from_flags(text: str) -> dict[str, str]:
    """The spec's ``env`` string (``"-e K=V -p 8000:8000"``) as the official client's dict."""
    try:
        words = shlex.split(text)
    except ValueError:
        raise ApiError(400, "invalid_args", "env: unbalanced quotes.") from None
    env: dict[str, str] = {}
    it = iter(words)
    for word in it:
        flag, _, inline = word.partition("=") if word.startswith("--") else (word, "", "")
        if flag in ("-e", "--env"):
            value = inline or next(it, "")
            name, sep, val = value.partition("=")
            if not sep or not name:
                raise ApiError(400, "invalid_args", "env: -e takes NAME=VALUE.")
            env[name] = val
        elif flag in ("-p", "--publish"):
            spec = inline or next(it, "")
            if not _ENV_FLAG_PORT.match(spec):
                raise ApiError(400, "invalid_args", "env: -p takes HOST:CONTAINER[/proto].")
            host, _, rest = spec.partition(":")
            env[f"-p {host}:{rest or host}"] = "1"
        else:
            raise ApiError(400, "invalid_args", "env: only -e and -p options are understood.")
    return env


def create_args(
    body: dict[str, Any], templates: list[dict[str, Any]], offer: dict[str, Any]
) -> dict[str, Any]:
    """The create body read into ``Cloud.create`` arguments, checked as the spec documents.

    Raises:
        ApiError: 400 ``invalid_args`` / ``invalid_price`` naming what was wrong.
    """
    template = None
    if body.get("template_hash_id") is not None:
        template = next((t for t in templates if t["hash_id"] == body["template_hash_id"]), None)
        if template is None:
            raise ApiError(400, "invalid_args", "Unknown template_hash_id.")
    image = body.get("image") or (template["image"] if template else None)
    if not isinstance(image, str) or not image.strip():
        raise ApiError(400, "invalid_args", "image is required.")
    env = body.get("env") or {}
    if isinstance(env, str):  # the spec's form; the official client sends a dict
        env = env_from_flags(env)
    if not isinstance(env, dict):
        raise ApiError(400, "invalid_args", "env must be a string of docker options or an object.")
    price = body.get("price")
    if price is not None:
        low, high = CREATE_PRICE
        if isinstance(price, bool) or not isinstance(price, int | float):
            raise ApiError(400, "invalid_price", "price must be a number.")
        if not low <= price <= high:
            raise ApiError(400, "invalid_price", f"price must be between {low} and {high}.")
        if price < float(offer["min_bid"]):
            raise ApiError(400, "invalid_price", f"Bid {price} is below the minimum bid.")
    disk = body.get("disk", 10.0)
    if isinstance(disk, bool) or not isinstance(disk, int | float) or disk <= 0:
        raise ApiError(400, "invalid_args", "disk must be a positive number of GB.")
    if disk > float(offer["disk_space"]):
        raise ApiError(400, "invalid_args", "disk exceeds the offer's disk_space.")
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > LABEL_MAX):
        raise ApiError(400, "invalid_args", f"label must be a string of at most {LABEL_MAX}.")
    onstart = body.get("onstart")
    if onstart is not None and (not isinstance(onstart, str) or len(onstart) > ONSTART_MAX):
        raise ApiError(400, "invalid_args", f"onstart must be at most {ONSTART_MAX} chars.")
    runtype = body.get("runtype") or (template or {}).get("runtype") or "ssh"
    args = body.get("args")
    if args is not None and (not isinstance(args, list) or runtype != "args"):
        raise ApiError(400, "invalid_args", "args is a list and needs runtype 'args'.")
    return {
        "image": image.strip(),
        "env": {str(k): str(v) for k, v in env.items()},
        "onstart": onstart,
        "label": label,
        "runtype": str(runtype),
        "disk_gb": float(disk),
        "bid": None if price is None else float(price),
        "template_hash_id": body.get("template_hash_id"),
        "args": [str(a) for a in args] if args is not None else None,
    }
