"""Builds the service a command talks to: the real Vast.ai, or a sandbox (``--sandbox``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from vastai_async.cli._app import CLIState

if TYPE_CHECKING:
    from vastai_async.config import VastAIConfig
    from vastai_async.service import VastAIService

#: Said after a configuration error: where settings come from, and how to go without an account.
CONFIG_HINT = (
    "set VASTAI_API_KEY (and VASTAI_SSH_KEY_PATH to rent) in the environment or in "
    "./.env.local.vastai, or add --sandbox to use a local Vast.ai "
    "(README, 'Configuration'; `vastai-async config` lists what is missing)"
)


def config_for(ctx: click.Context, *, read_only: bool = False) -> VastAIConfig:
    """The config from the environment, or for the sandbox named by the global options.

    Args:
        ctx: the click context.
        read_only: the command only searches, lists, shows or destroys: no SSH key needed.

    Raises:
        ConfigError: missing or invalid settings (shown as one line by ``run_command``).
    """
    from vastai_async.config import get_vastai_config
    from vastai_async.sandbox_link import read_sandbox_record, sandbox_config

    state = ctx.find_object(CLIState)
    assert state is not None
    if state.sandbox_url is not None:
        if state.sandbox_url == RECORDED:
            record = read_sandbox_record()
            url, key, scale = record.url, record.api_key, record.time_scale
        else:
            if not state.sandbox_key:
                raise click.UsageError("--sandbox-url needs --sandbox-key")
            url, key, scale = state.sandbox_url, state.sandbox_key, state.sandbox_time_scale
        return sandbox_config(url, key, time_scale=scale)
    return get_vastai_config(require_ssh_key=not read_only)


def make_service(ctx: click.Context, *, read_only: bool = False) -> VastAIService:
    """A service on :func:`config_for`'s config."""
    from vastai_async.service import VastAIService

    return VastAIService(config=config_for(ctx, read_only=read_only))


#: ``--sandbox`` given without a URL: use the sandbox recorded in the state directory.
RECORDED = "recorded"
