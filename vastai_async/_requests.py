"""Turning ``provision_instance`` arguments into a validated create request.

Everything here runs before anything is rented: a refused argument costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from urllib.parse import quote, quote_plus

from vastai_async.config import VastAIConfig
from vastai_async.errors import InvalidRequestError
from vastai_async.models import CreateInstanceRequest

__all__ = ["build_create_request"]


def build_create_request(
    config: VastAIConfig,
    *,
    image: str | None,
    template: str | None,
    extra_env: Mapping[str, str] | None,
    ports: Sequence[str] | None,
    onstart_cmd: str | None,
    disk_gb: float | None,
    bid_usd_per_hour: float | None,
) -> CreateInstanceRequest:
    """The create request for these arguments, with the config's defaults and rules applied.

    Raises:
        InvalidRequestError: a template outside ``VASTAI_TEMPLATE_IDS``, a bid that is not
            positive or above the ceiling, non-string env values, the API key in the env or
            the onstart script, or any rule of :class:`CreateInstanceRequest`.
    """
    if template is not None and config.template_ids and template not in config.template_ids:
        raise InvalidRequestError(f"template {template!r} is not in VASTAI_TEMPLATE_IDS")
    if bid_usd_per_hour is not None:
        if not (math.isfinite(bid_usd_per_hour) and bid_usd_per_hour > 0):
            raise InvalidRequestError("bid_usd_per_hour must be a positive number or None")
        if bid_usd_per_hour > config.max_bid_usd_per_hour:
            raise InvalidRequestError(
                f"bid_usd_per_hour {bid_usd_per_hour:g} is above the ceiling "
                f"VASTAI_MAX_BID_PER_HOUR={config.max_bid_usd_per_hour:g}"
            )
    if extra_env is not None and any(not isinstance(v, str) for v in extra_env.values()):
        raise InvalidRequestError("extra_env values must be strings")
    _refuse_api_key(config.api_key, extra_env, onstart_cmd)
    return CreateInstanceRequest(
        image=image if image is not None else (None if template else config.default_image),
        env=dict(extra_env or {}),
        ports=tuple(ports or ()),
        price=bid_usd_per_hour,
        disk_gb=disk_gb if disk_gb is not None else config.default_disk_gb,
        onstart=onstart_cmd,
        template_hash_id=template,
    )


def _refuse_api_key(
    api_key: str | None, extra_env: Mapping[str, str] | None, onstart_cmd: str | None
) -> None:
    # The account key must never be written onto a rented machine, in any spelling a URL or a
    # header would carry it: refuse it as a substring of every env key and value and of the
    # onstart script (the message names where, never the key).
    if not api_key:
        return
    forms = {api_key, quote(api_key, safe=""), quote_plus(api_key)}
    places = [("onstart_cmd", onstart_cmd or "")]
    for key, value in (extra_env or {}).items():
        places.append((f"extra_env key {key!r}" if api_key not in key else "an extra_env key", key))
        places.append(
            (f"extra_env[{key!r}]" if api_key not in key else "an extra_env value", value)
        )
    for where, text in places:
        if any(form in text for form in forms):
            raise InvalidRequestError(
                f"{where} contains the Vast.ai API key; it must never "
                "be written onto a rented machine"
            )
