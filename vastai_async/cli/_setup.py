"""Builds the service a command talks to: the real Vast.ai, or a sandbox (``--sandbox``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from vastai_async.cli._app import CLIState

if TYPE_CHECKING:
    from vastai_async.service import VastAIService


def make_service(ctx: click.Context) -> VastAIService:
    """A service from the environment, or for the sandbox named by the global options.

    Raises:
        ConfigError: missing or invalid settings (shown as one line by ``run_command``).
    """
    from vastai_async.config import get_vastai_config
    from vastai_async.sandbox_link import read_sandbox_record, sandbox_config
    from vastai_async.service import VastAIService

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
        return VastAIService(config=sandbox_config(url, key, time_scale=scale))
    return VastAIService(config=get_vastai_config())


#: ``--sandbox`` given without a URL: use the sandbox recorded in the state directory.
RECORDED = "recorded"
