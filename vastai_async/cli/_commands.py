"""Registers every command on the ``vastai-async`` group."""

from __future__ import annotations

import json

import click

from vastai_async.cli._app import cli, run_command


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
@click.pass_context
def config_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show the resolved configuration (secrets hidden)."""
    from vastai_async.config import get_vastai_config

    async def show() -> None:
        config = get_vastai_config()
        fields = {
            "api_base_url": config.api_base_url,
            "api_key": "<set>",
            "ssh_key_path": str(config.ssh_key_path),
            "preferred_gpus": list(config.preferred_gpus),
            "template_ids": list(config.template_ids),
            "max_bid_usd_per_hour": config.max_bid_usd_per_hour,
            "min_vram_gb": config.min_vram_gb,
            "default_disk_gb": config.default_disk_gb,
            "default_image": config.default_image,
            "owner": config.owner,
            "state_dir": str(config.state_dir),
        }
        if as_json:
            click.echo(json.dumps(fields, indent=2))
        else:
            for key, value in fields.items():
                click.echo(f"{key:22} {value}")

    run_command(ctx, show)
