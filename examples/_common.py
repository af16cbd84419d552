"""Shared by the examples: a config for the real Vast.ai or for a local sandbox, and a runner.

Real account: put ``VASTAI_API_KEY`` and ``VASTAI_SSH_KEY_PATH`` in the environment or in
``.env.local.vastai`` (see ``.env.local.vastai.example``).

No account: start ``vastai-async sandbox`` in another terminal and pass ``--sandbox`` to any
example; or name a sandbox with ``VASTAI_SANDBOX_URL`` and ``VASTAI_SANDBOX_KEY`` (and
``VASTAI_SANDBOX_TIME_SCALE``, its wall seconds per simulated second).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Coroutine
from typing import Any

from vastai_async import ConfigError, VastAIConfig, VastAIError, get_vastai_config
from vastai_async.sandbox_link import read_sandbox_record, sandbox_config

__all__ = ["example_config", "example_parser", "run_example"]


def example_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the ``--sandbox`` flag every example understands."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sandbox",
        action="store_true",
        help="use the local sandbox recorded by `vastai-async sandbox` (no account needed)",
    )
    return parser


def example_config(*, sandbox: bool = False, **overrides: Any) -> VastAIConfig:
    """The config an example runs with.

    Args:
        sandbox: use the sandbox recorded in the state directory by ``vastai-async sandbox``.
        **overrides: any :func:`~vastai_async.get_vastai_config` argument, e.g.
            ``max_bid_usd_per_hour=3.5``.

    Returns:
        A sandbox config (from ``VASTAI_SANDBOX_URL``/``VASTAI_SANDBOX_KEY`` when set, else the
        recorded sandbox when ``sandbox``), otherwise the real account's config from
        ``VASTAI_*`` variables and ``.env.local.vastai``.
    """
    url = os.environ.get("VASTAI_SANDBOX_URL")
    key = os.environ.get("VASTAI_SANDBOX_KEY")
    if url and key:
        scale = _time_scale(os.environ.get("VASTAI_SANDBOX_TIME_SCALE", "1"))
        return sandbox_config(url, key, time_scale=scale, **overrides)
    if sandbox:
        record = read_sandbox_record()
        return sandbox_config(record.url, record.api_key, time_scale=record.time_scale, **overrides)
    return get_vastai_config(**overrides)


def _time_scale(raw: str) -> float:
    try:
        scale = float(raw)
    except ValueError:
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigError([("VASTAI_SANDBOX_TIME_SCALE", "must be a number > 0")])
    return scale


def run_example(main: Coroutine[Any, Any, None]) -> None:
    """Run an example's ``main()``; an SDK error becomes one line on stderr and exit status 1.

    Ctrl-C cancels ``main()``, so ``async with rental:`` blocks still destroy their machines.
    """
    try:
        asyncio.run(main)
    except ConfigError as err:
        sys.exit(f"error: {err}\n(set them in .env.local.vastai, or try --sandbox with no account)")
    except VastAIError as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit(130)
