"""Turning ``provision_instance`` arguments into a validated create request.

Everything here runs before anything is rented: a refused argument costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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
    if extra_env is not None and any(v == config.api_key for v in extra_env.values()):
        # The account key must never be written onto a rented machine.
        raise InvalidRequestError("extra_env must not contain the Vast.ai API key")
    if onstart_cmd is not None and config.api_key in onstart_cmd:
        raise InvalidRequestError("onstart_cmd must not contain the Vast.ai API key")
    return CreateInstanceRequest(
        image=image if image is not None else (None if template else config.default_image),
        env=dict(extra_env or {}),
        ports=tuple(ports or ()),
        price=bid_usd_per_hour,
        disk_gb=disk_gb if disk_gb is not None else config.default_disk_gb,
        onstart=onstart_cmd,
        template_hash_id=template,
    )
