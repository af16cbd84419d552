"""Command group, global options, and the one place that turns errors into exit codes."""

from __future__ import annotations

import click

from vastai_async import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="vastai-async")
@click.option("--debug", is_flag=True, help="Show tracebacks and DEBUG logs.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Rent Vast.ai GPU machines from the command line."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    """Entry point of ``vastai-async``."""
    cli()
