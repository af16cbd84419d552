"""Command group, global options, and the one place that turns errors into exit codes.

Exit codes: 0 success, 1 failure (one clear line on stderr, a traceback only with ``--debug``),
2 usage (click's own). Commands run their coroutine through :func:`run_command`, which turns
Ctrl-C / SIGTERM into cancellation of that coroutine so that whatever it rented is torn down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click

from vastai_async import __version__
from vastai_async.errors import ConfigError, VastAIError

T = TypeVar("T")

#: Exit code of a command cut short by Ctrl-C / SIGTERM (the shell's convention: 128 + SIGINT).
EXIT_INTERRUPTED = 130


class CLIState:
    """What global options leave for commands, and what a third Ctrl-C should name."""

    def __init__(
        self,
        *,
        debug: bool,
        sandbox_url: str | None = None,
        sandbox_key: str | None = None,
        sandbox_time_scale: float = 1.0,
        sandbox_name: str | None = None,
    ) -> None:
        self.debug = debug
        self.sandbox_url = sandbox_url
        self.sandbox_key = sandbox_key
        self.sandbox_time_scale = sandbox_time_scale
        self.sandbox_name = sandbox_name
        #: The API root the command talks to, once known (named in connection errors).
        self.api_root: str | None = None
        #: Instance ids a running command may still own; named if the user forces an exit.
        self.live_instance_ids: Callable[[], list[int]] = list


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="vastai-async")
@click.option("--debug", is_flag=True, help="Show tracebacks, wire details and DEBUG logs.")
@click.option(
    "--sandbox",
    "use_sandbox",
    is_flag=True,
    help="Talk to the sandbox `vastai-async sandbox` recorded in the state directory.",
)
@click.option(
    "--sandbox-name", default=None, help="Talk to the recorded sandbox started with --name NAME."
)
@click.option("--sandbox-url", default=None, help="Talk to the sandbox at this URL instead.")
@click.option(
    "--sandbox-key",
    default=None,
    help="API key of the sandbox at --sandbox-url (default: from its record).",
)
@click.option(
    "--sandbox-time-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="time_scale of the sandbox at --sandbox-url.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    debug: bool,
    use_sandbox: bool,
    sandbox_name: str | None,
    sandbox_url: str | None,
    sandbox_key: str | None,
    sandbox_time_scale: float,
) -> None:
    """Rent Vast.ai GPU machines from the command line.

    Configuration comes from VASTAI_* variables or ./.env.local.vastai (README,
    "Configuration"); `vastai-async config` shows what is set and missing. With --sandbox no
    account is needed. Read-only commands (search, list, show, logs, destroy, reap) need only
    the API key. Exit codes: 0 success,
    1 failure (one line on stderr; --debug for the traceback), 2 usage, 130 interrupted.
    Ctrl-C or SIGTERM destroys what the running command created.

    \b
    Examples:
      vastai-async demo                            # the whole story, no account
      vastai-async sandbox &                       # a local Vast.ai for the --sandbox commands
      vastai-async --sandbox search --gpu 4090 --max-usd-per-hour 1
      vastai-async search --query 'num_gpus=1 reliability>0.98' --json
      vastai-async provision --job-id train-1 --fan-out 3
      vastai-async rent --offer 123456 --image pytorch/pytorch --label "my box"
      vastai-async ssh 4242 --exec
      vastai-async run 4242 'nvidia-smi -L'
      vastai-async reap --job-id train-1 --yes
    """
    recorded = use_sandbox or sandbox_name is not None
    ctx.obj = CLIState(
        debug=debug,
        sandbox_url=sandbox_url if sandbox_url else ("recorded" if recorded else None),
        sandbox_key=sandbox_key,
        sandbox_time_scale=sandbox_time_scale,
        sandbox_name=sandbox_name,
    )
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")


def fail(message: str) -> None:
    """Print one error line and exit 1."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def run_command(ctx: click.Context, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a command's coroutine; map errors to one line and exit codes; handle signals.

    The first Ctrl-C (or SIGTERM) cancels the coroutine, so its ``finally`` blocks and the SDK's
    shielded teardown destroy what it created. A second one says teardown is still running; a
    third exits at once naming the instance ids that may be left (``reap`` finds them).

    Args:
        ctx: the click context (for ``--debug``).
        make: builds the coroutine to run (called inside the event loop).

    Returns:
        What the coroutine returned.
    """
    state: CLIState = ctx.find_object(CLIState) or CLIState(debug=False)
    try:
        return asyncio.run(_run_with_signals(state, make))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except asyncio.CancelledError:
        click.echo("interrupted: teardown finished", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except ConfigError as err:
        if state.debug:
            traceback.print_exc()
        from vastai_async.cli._setup import CONFIG_HINT

        named = any(name.startswith("VASTAI_") for name, _ in err.problems)
        fail(f"{err}; {CONFIG_HINT}" if named else str(err))
    except VastAIError as err:
        if state.debug:
            traceback.print_exc()
        fail(str(err) if state.debug else describe_error(err, state))
    except (click.ClickException, click.Abort):
        raise  # click prints these itself (usage errors exit 2)
    except Exception as err:
        # Not an SDK error: a bug or an unexpected environment. Still one line for people.
        if state.debug:
            traceback.print_exc()
        text = str(err).splitlines()[0] if str(err) else ""
        hint = "" if state.debug else " (run with --debug for the traceback)"
        fail(f"{type(err).__name__}: {text}{hint}" if text else f"{type(err).__name__}{hint}")
    raise AssertionError("unreachable")  # pragma: no cover


def describe_error(err: VastAIError, state: CLIState) -> str:
    """One line in words for people; the wire details (status, error code) need ``--debug``."""
    from vastai_async.errors import APIConnectionError, APIError, NotFoundError

    if isinstance(err, APIConnectionError):
        what, _, cause = err.message.partition(": ")
        text = what + (f" to {state.api_root}" if state.api_root else "")
        text += f" ({cause})" if cause else ""
        if state.sandbox_url is not None:
            text += "; is the sandbox still running? (`vastai-async sandbox`)"
        return text
    if isinstance(err, NotFoundError) and err.instance_id is not None:
        return f"instance {err.instance_id} not found: never existed or already destroyed"
    if isinstance(err, APIError):
        subject = (
            f" (instance {err.instance_id})"
            if err.instance_id is not None
            else f" (offer {err.offer_id})"
            if err.offer_id is not None
            else ""
        )
        return f"{err.msg or err.message}{subject} (--debug for details)"
    return str(err).splitlines()[0]


async def _run_with_signals(state: CLIState, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(make())
    presses = 0

    def on_signal() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            click.echo("cancelling: tearing down what was created ...", err=True)
            task.cancel()
        elif presses == 2:
            click.echo("teardown is still running; press Ctrl-C again to quit now", err=True)
        else:
            ids = state.live_instance_ids()
            left = ", ".join(str(i) for i in ids) if ids else "none known"
            click.echo(
                f"quitting now; instances possibly left: {left} ('vastai-async reap' finds them)",
                err=True,
            )
            sys.stderr.flush()
            # A hard exit: the user asked three times; nothing more may block.
            os._exit(EXIT_INTERRUPTED)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await task
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def register_commands() -> click.Group:
    """Attach every command to the group (idempotent) and return it."""
    from vastai_async.cli import _commands  # noqa: F401  (registers the commands)
    from vastai_async.cli._demo import demo_cmd
    from vastai_async.cli.hosts_cmd import hosts_cmd
    from vastai_async.cli.sandbox_cmd import sandbox_cmd

    cli.add_command(sandbox_cmd)
    cli.add_command(hosts_cmd)
    cli.add_command(demo_cmd)
    return cli


def main() -> None:
    """Entry point of ``vastai-async``."""
    register_commands()(prog_name="vastai-async")
