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
    from vastai_async.errors import ConfigError
    from vastai_async.sandbox_link import read_sandbox_record, sandbox_config

    state = ctx.find_object(CLIState)
    assert state is not None
    if state.sandbox_url is not None:
        if state.sandbox_url == RECORDED:
            record = read_sandbox_record(name=state.sandbox_name)
            url, key, scale = record.url, record.api_key, record.time_scale
        elif state.sandbox_key:
            url, key, scale = state.sandbox_url, state.sandbox_key, state.sandbox_time_scale
        else:
            # A URL alone: the key and clock come from that sandbox's record, if it has one.
            try:
                record = read_sandbox_record(url=state.sandbox_url)
            except ConfigError:
                raise click.UsageError(
                    "--sandbox-url needs --sandbox-key (no sandbox is recorded at that URL)"
                ) from None
            url, key, scale = record.url, record.api_key, record.time_scale
        state.api_root = url
        return sandbox_config(url, key, time_scale=scale)
    config = get_vastai_config(require_ssh_key=not read_only)
    state.api_root = config.api_root
    return config


def make_service(ctx: click.Context, *, read_only: bool = False) -> VastAIService:
    """A service on :func:`config_for`'s config."""
    from vastai_async.service import VastAIService

    return VastAIService(config=config_for(ctx, read_only=read_only))


#: ``--sandbox`` given without a URL: use the sandbox recorded in the state directory.
RECORDED = "recorded"
