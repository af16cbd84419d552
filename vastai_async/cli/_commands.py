"""Every command of ``vastai-async`` except ``sandbox`` and ``demo``.

Each command builds a :class:`~vastai_async.VastAIService` from the environment (or the
sandbox named by ``--sandbox``), runs one coroutine through :func:`run_command`, and prints a
table for people or JSON (``--json``) for scripts.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import click

from vastai_async.cli._app import CLIState, cli, fail, run_command
from vastai_async.cli._output import print_json, print_table
from vastai_async.cli._progress import ProgressPrinter
from vastai_async.cli._setup import CONFIG_HINT, config_for, make_service
from vastai_async.errors import InvalidRequestError

if TYPE_CHECKING:
    from vastai_async.rental import Rental
    from vastai_async.service import VastAIService

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")

#: Value types whose bad values are usage errors (exit 2, click's format), not failures.
POSITIVE = click.FloatRange(min=0, min_open=True)
NON_NEGATIVE = click.FloatRange(min=0)
_PORT_RE = re.compile(r"[0-9]{1,5}(/(tcp|udp))?")


def _check_ports(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    for port in value:
        match = _PORT_RE.fullmatch(port)
        if match is None or not 1 <= int(port.split("/")[0]) <= 65535:
            raise click.BadParameter(f"expected PORT or PORT/udp (1-65535), got {port!r}")
    return value


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _money(usd: float) -> str:
    return "$0" if usd == 0 else "less than $0.01" if usd < 0.01 else f"${usd:.2f}"


def _state(ctx: click.Context) -> CLIState:
    state = ctx.find_object(CLIState)
    assert state is not None
    return state


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--env")
        env[key] = value
    return env


@cli.command("config")
@json_option
@click.pass_context
def config_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show the resolved configuration (secrets hidden) and every setting that is missing.

    Exits 1 when a setting is invalid or missing (the API key; the SSH key is needed only to
    rent and log in).
    """
    from vastai_async.errors import ConfigError

    problems: list[tuple[str, str]] = []
    fields: dict[str, Any] = {}
    try:
        config = config_for(ctx, read_only=True)
    except ConfigError as err:
        problems = list(err.problems)
    else:
        fields = {
            "api_base_url": config.api_base_url,
            "api_key": "<set>",
            "ssh_key_path": str(config.ssh_key_path) if config.ssh_key_path else None,
            "preferred_gpus": list(config.preferred_gpus),
            "template_ids": list(config.template_ids),
            "max_bid_usd_per_hour": config.max_bid_usd_per_hour,
            "min_vram_gb": config.min_vram_gb,
            "default_disk_gb": config.default_disk_gb,
            "default_image": config.default_image,
            "owner": config.owner,
            "state_dir": str(config.state_dir),
        }
        if config.ssh_key_path is None:
            problems.append(("VASTAI_SSH_KEY_PATH", "missing (needed to rent and log in)"))
    if as_json:
        print_json({**fields, "problems": [{"name": n, "reason": r} for n, r in problems]})
    else:
        for key, value in fields.items():
            click.echo(f"{key:22} {'-' if value is None else value}")
        for name, reason in problems:
            click.echo(
                f"{'missing' if 'missing' in reason else 'invalid'}: {name}: {reason}", err=True
            )
        if problems:
            click.echo(CONFIG_HINT, err=True)
    if any(name != "VASTAI_SSH_KEY_PATH" for name, _ in problems):
        sys.exit(1)


@cli.command("search")
@click.option("--gpu", "gpus", multiple=True, help="GPU name, short or full (repeatable).")
@click.option("--min-vram-gb", type=NON_NEGATIVE, help="Minimum VRAM per GPU in GB.")
@click.option("--max-usd-per-hour", type=POSITIVE, help="Price ceiling (never above the config's).")
@click.option("--num-gpus", type=click.IntRange(min=1), help="Exact number of GPUs.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most N offers."
)
@click.option(
    "--query", "cli_query", help="Official CLI query string, e.g. 'num_gpus=1 reliability>0.98'."
)
@json_option
@click.pass_context
def search_cmd(
    ctx: click.Context,
    gpus: tuple[str, ...],
    min_vram_gb: float | None,
    max_usd_per_hour: float | None,
    num_gpus: int | None,
    limit: int,
    cli_query: str | None,
    as_json: bool,
) -> None:
    """Search offers with the config's defaults and these filters, cheapest first.

    The config's price ceiling always holds; options may only narrow the search.

    \b
    Examples:
      vastai-async search --gpu 4090 --gpu A100 --max-usd-per-hour 1.5
      vastai-async search --query 'num_gpus=2 reliability>0.98 inet_down>500' --json
    """
    from vastai_async.query import OfferQuery

    async def search() -> None:
        async with make_service(ctx, read_only=True) as vast:
            query = OfferQuery.from_config(vast.config)
            if num_gpus is not None:
                query = attrs.evolve(query, num_gpus=num_gpus)
            if cli_query:
                query = query.with_cli_query(cli_query)
            offers = await vast.search_offers(
                query=query,
                gpus=gpus or None,
                min_vram_gb=min_vram_gb,
                max_usd_per_hour=max_usd_per_hour,
                limit=limit,
            )
        if as_json:
            print_json([attrs.asdict(o) for o in offers])
            return
        print_table(
            ["offer", "machine", "gpu", "n", "vram GB", "$/h", "reliab.", "location"],
            [
                [
                    o.id,
                    o.machine_id,
                    o.gpu_name,
                    o.num_gpus,
                    _fmt(o.gpu_ram_gb, ".1f"),
                    _fmt(o.dph_total, ".3f"),
                    _fmt(o.reliability, ".3f"),
                    o.geolocation,
                ]
                for o in offers
            ],
            title=(
                f"the {limit} cheapest offers (--limit {limit} reached; there may be more)"
                if len(offers) >= limit
                else _plural(len(offers), "offer")
            ),
        )

    run_command(ctx, search)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


@cli.command("list")
@click.option("--job-id", help="Only this job's instances.")
@click.option("--owner", help="Only this owner's instances.")
@click.option("--mine", is_flag=True, help="Only this process's owner id (rarely useful here).")
@json_option
@click.pass_context
def list_cmd(
    ctx: click.Context, job_id: str | None, owner: str | None, mine: bool, as_json: bool
) -> None:
    """List instances carrying a vastai-async label (every owner unless --owner/--mine).

    \b
    Examples:
      vastai-async list
      vastai-async list --job-id train-1 --json
    """

    async def run() -> None:
        async with make_service(ctx, read_only=True) as vast:
            rentals = await vast.list_rentals(job_id=job_id, owner=owner, all_owners=not mine)
        if as_json:
            print_json([attrs.asdict(r) for r in rentals])
            return
        print_table(
            ["instance", "job", "owner", "status", "$/h", "label"],
            [
                [
                    r.instance_id,
                    r.job_id,
                    "(kept)" if r.kept else r.owner,
                    r.status,
                    _fmt(r.dph_total, ".3f"),
                    r.label,
                ]
                for r in rentals
            ],
            title=_plural(len(rentals), "instance"),
        )

    run_command(ctx, run)


@cli.command("show")
@click.argument("instance_id", type=int)
@json_option
@click.pass_context
def show_cmd(ctx: click.Context, instance_id: int, as_json: bool) -> None:
    """Show one instance."""

    async def run() -> None:
        async with make_service(ctx, read_only=True) as vast:
            inst = await vast.client.show_instance(instance_id)
        data = attrs.asdict(inst)
        if as_json:
            print_json(data)
            return
        for key in (
            "id",
            "label",
            "actual_status",
            "status_msg",
            "gpu_name",
            "num_gpus",
            "dph_total",
            "ssh_host",
            "ssh_port",
            "public_ipaddr",
            "ports",
            "start_date",
        ):
            click.echo(f"{key:14} {_show_value(data.get(key))}")

    run_command(ctx, run)


def _show_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(_show_value(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show_value(v)}" for k, v in value.items()) or "-"
    return str(value)


@cli.command("destroy")
@click.argument("instance_ids", type=int, nargs=-1, required=True)
@json_option
@click.pass_context
def destroy_cmd(ctx: click.Context, instance_ids: tuple[int, ...], as_json: bool) -> None:
    """Destroy instances and confirm they are gone.

    \b
    Example:
      vastai-async destroy 4242 4243
    """

    async def run() -> None:
        results: dict[int, str] = {}
        async with make_service(ctx, read_only=True) as vast:
            for instance_id in instance_ids:
                destroyed = await vast.terminate_instance(instance_id)
                # Vast answers the same for an id that never existed and one already destroyed.
                results[instance_id] = (
                    "destroyed" if destroyed else "not found: never existed or already destroyed"
                )
        if as_json:
            print_json({str(k): v for k, v in results.items()})
        else:
            for instance_id, what in results.items():
                click.echo(f"{instance_id}: {what}")

    run_command(ctx, run)


@cli.command("reap")
@click.option("--job-id", help="Destroy this job's instances.")
@click.option("--owner", help="Destroy this owner's instances.")
@click.option(
    "--older-than", "older_than_s", type=float, help="Destroy instances older than S seconds."
)
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.option("--dry-run", is_flag=True, help="Show what would be destroyed; destroy nothing.")
@json_option
@click.pass_context
def reap_cmd(
    ctx: click.Context,
    job_id: str | None,
    owner: str | None,
    older_than_s: float | None,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Destroy orphaned instances: named job/owner, dead owners, or too old.

    Kept rentals and instances without a vastai-async label are never touched. Shows what it
    would destroy and asks; with no terminal to ask it refuses unless --yes.

    \b
    Examples:
      vastai-async reap                      # dead owners' instances, after asking
      vastai-async reap --job-id train-1 --yes
      vastai-async reap --older-than 86400 --yes --json
      vastai-async reap --dry-run            # the plan only
    """
    interactive = sys.stdin.isatty()
    if older_than_s is not None and older_than_s < 0:
        raise click.BadParameter("must be >= 0", param_hint="--older-than")

    async def run() -> None:
        async with make_service(ctx, read_only=True) as vast:
            plan = await vast.reap(
                job_id=job_id, owner=owner, older_than_s=older_than_s, dry_run=True
            )
            if not plan.destroyed or dry_run:
                report = plan
            else:
                if not yes and not interactive:
                    for instance_id, reason in plan.destroyed:
                        click.echo(f"would destroy {instance_id}: {reason}", err=True)
                    fail("nothing destroyed: reap needs --yes when there is no terminal to ask")
                if not yes:
                    # The plan and the question go to stderr: stdout stays the result (--json).
                    for instance_id, reason in plan.destroyed:
                        click.echo(f"would destroy {instance_id}: {reason}", err=True)
                    if not click.confirm("destroy these?", default=False, err=True):
                        click.echo("nothing destroyed", err=True)
                        return
                report = await vast.reap(
                    job_id=job_id, owner=owner, older_than_s=older_than_s, dry_run=False
                )
        if as_json:
            print_json(
                {
                    "dry_run": dry_run,
                    "destroyed": [{"instance_id": i, "reason": r} for i, r in report.destroyed],
                    "spared": [{"instance_id": i, "reason": r} for i, r in report.spared],
                }
            )
            return
        verb = "would destroy" if dry_run else "destroyed"
        for instance_id, reason in report.destroyed:
            click.echo(f"{verb} {instance_id}: {reason}")
        for instance_id, reason in report.spared:
            click.echo(f"spared {instance_id}: {reason}")
        if not report.destroyed:
            click.echo("nothing to reap")

    run_command(ctx, run)


def _provision_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option("--image", help="Docker image (default: the config's)."),
            click.option("--env", "env_pairs", multiple=True, help="KEY=VALUE (repeatable)."),
            click.option(
                "--port",
                "ports",
                multiple=True,
                callback=_check_ports,
                help="PORT[/udp] to expose (repeatable).",
            ),
            click.option("--onstart", help="Command run when the container starts."),
            click.option("--disk", "disk_gb", type=POSITIVE, help="Disk in GB."),
            click.option(
                "--timeout", "timeout_s", type=POSITIVE, help="Overall deadline in seconds."
            ),
        ]
    ):
        func = option(func)
    return func


@cli.command("provision")
@click.option("--job-id", required=True, help="Your job id ([A-Za-z0-9._-]).")
@click.option(
    "--fan-out",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Candidates rented at once.",
)
@click.option(
    "--hedge",
    "hedge_start",
    type=click.IntRange(min=1),
    default=None,
    help="Hedged: start this many candidates, add more (up to --fan-out) only when they are "
    "late against the boot times seen so far.",
)
@click.option("--max-usd-per-hour", type=POSITIVE, help="Price ceiling for candidates.")
@click.option("--min-vram-gb", type=NON_NEGATIVE, help="Minimum VRAM per GPU in GB.")
@click.option("--gpu", "gpus", multiple=True, help="GPU name, short or full (repeatable).")
@_provision_options
@click.option("--keep/--no-keep", default=True, show_default=True, help="Keep the winner running.")
@json_option
@click.pass_context
def provision_cmd(
    ctx: click.Context,
    job_id: str,
    fan_out: int,
    hedge_start: int | None,
    max_usd_per_hour: float | None,
    min_vram_gb: float | None,
    gpus: tuple[str, ...],
    image: str | None,
    env_pairs: tuple[str, ...],
    ports: tuple[str, ...],
    onstart: str | None,
    disk_gb: float | None,
    timeout_s: float | None,
    keep: bool,
    as_json: bool,
) -> None:
    """Race several offers; keep the first machine whose SSH login works, destroy the rest.

    Shows each candidate's status, probes, elapsed time and spend (a live table on a
    terminal, plain lines otherwise), then the winner, what the losers cost, and its ssh line.
    Ctrl-C destroys every instance the race created.

    \b
    Examples:
      vastai-async provision --job-id train-1 --fan-out 3 --gpu 4090
      vastai-async provision --job-id ci-42 --no-keep --json
      vastai-async provision --job-id cheap --fan-out 4 --hedge 2
    """
    env = _parse_env(env_pairs)
    state = _state(ctx)

    async def run() -> None:
        from vastai_async.hedging import HedgePolicy

        progress = ProgressPrinter(live=sys.stderr.isatty() and not as_json)
        async with make_service(ctx) as vast:
            state.live_instance_ids = vast.live_instance_ids
            offers = await vast.search_offers(
                gpus=gpus or None, min_vram_gb=min_vram_gb, max_usd_per_hour=max_usd_per_hour
            )
            if not offers:
                raise InvalidRequestError(
                    "no offer matches the GPU, VRAM and price filters; widen --gpu, "
                    "--min-vram-gb or --max-usd-per-hour (see `vastai-async search`)"
                )
            rental = await _provision(
                vast,
                progress,
                timeout_s,
                job_id=job_id,
                offers=offers,
                image=image,
                extra_env=env,
                ports=ports,
                onstart_cmd=onstart,
                disk_gb=disk_gb,
                fan_out=fan_out,
                hedge=None if hedge_start is None else HedgePolicy(start=hedge_start),
            )
            # Inside ``async with``: if keeping fails, the machine is destroyed, not lost.
            async with rental:
                if keep:
                    await rental.detach()
        _print_winner(rental, progress, kept=keep, as_json=as_json)

    run_command(ctx, run)


@cli.command("rent")
@click.option("--offer", "offer_id", type=int, required=True, help="The offer id to rent.")
@_provision_options
@click.option("--label", help="Your text, kept readable in the instance label.")
@click.option("--job-id", default="rent", show_default=True, help="Job id written into the label.")
@json_option
@click.pass_context
def rent_cmd(
    ctx: click.Context,
    offer_id: int,
    image: str | None,
    env_pairs: tuple[str, ...],
    ports: tuple[str, ...],
    onstart: str | None,
    disk_gb: float | None,
    timeout_s: float | None,
    label: str | None,
    job_id: str,
    as_json: bool,
) -> None:
    """Rent one offer, wait until SSH works, keep it running and print the ssh line.

    The instance is labelled as kept (reap spares it), with your --label readable in it.

    \b
    Example:
      vastai-async rent --offer 123456 --image pytorch/pytorch --env HF_TOKEN=... \\
          --port 8080 --port 53/udp --disk 100 --label "notebook"
    """
    env = _parse_env(env_pairs)
    state = _state(ctx)

    async def run() -> None:
        progress = ProgressPrinter(live=sys.stderr.isatty() and not as_json)
        async with make_service(ctx) as vast:
            state.live_instance_ids = vast.live_instance_ids
            rental = await _provision(
                vast,
                progress,
                timeout_s,
                job_id=job_id,
                offer_id=offer_id,
                image=image,
                extra_env=env,
                ports=ports,
                onstart_cmd=onstart,
                disk_gb=disk_gb,
                fan_out=1,
            )
            # Inside ``async with``: if keeping fails, the machine is destroyed, not lost.
            async with rental:
                await rental.detach(label)
        _print_winner(rental, progress, kept=True, as_json=as_json)

    run_command(ctx, run)


async def _provision(
    vast: VastAIService, progress: ProgressPrinter, timeout_s: float | None, **kwargs: Any
) -> Rental:
    """``provision_instance`` with live progress and the ``--timeout`` deadline."""
    timings = vast.timings
    if timeout_s is not None:
        timings = timings.replace(overall_s=timeout_s)
    with progress:
        return await vast.provision_instance(timings=timings, on_event=progress.on_event, **kwargs)


def _print_winner(rental: Any, progress: ProgressPrinter, *, kept: bool, as_json: bool) -> None:
    info = rental.info
    losers_usd = progress.losers_spend_usd(info.instance_id)
    if as_json:
        print_json(
            {
                "instance_id": info.instance_id,
                "job_id": info.job_id,
                "ssh": {"host": info.ssh.host, "port": info.ssh.port, "kind": info.ssh.kind},
                "ssh_command": rental.ssh_command(),
                "dph_total": info.dph_total,
                "kept": kept,
                "losers_estimated_usd": losers_usd,
            }
        )
        return
    click.echo(
        f"winner: instance {info.instance_id} ({info.ssh.kind} {info.ssh.host}:{info.ssh.port})"
    )
    click.echo(
        f"price: {_fmt(info.dph_total, '.3f')} $/h (GPU and its disk, as billed); "
        f"the other candidates cost {_money(losers_usd)}"
    )
    if kept:
        click.echo("kept running: " + rental.ssh_command())
    else:
        click.echo(f"destroyed instance {info.instance_id} (--no-keep)")


@cli.command("ssh")
@click.argument("instance_id", type=int)
@click.option("--exec", "do_exec", is_flag=True, help="Run ssh instead of printing the line.")
@click.option(
    "--any-label",
    is_flag=True,
    help="Accept an instance without our label (its host key is pinned at first login).",
)
@click.pass_context
def ssh_cmd(ctx: click.Context, instance_id: int, do_exec: bool, any_label: bool) -> None:
    """Print (or exec) the ssh line for an instance, with its pinned host key.

    \b
    Examples:
      vastai-async ssh 4242            # prints: ssh -i KEY -p PORT -o ... root@HOST
      vastai-async ssh 4242 --exec     # logs in
    """

    async def run() -> str:
        async with make_service(ctx) as vast:
            rental = await vast.get_rental(instance_id, require_label=not any_label)
            return rental.ssh_command()

    line = run_command(ctx, run)
    if do_exec:
        argv = shlex.split(line)
        os.execvp(argv[0], argv)  # noqa: S606  (the user asked to run ssh)
    click.echo(line)


@cli.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("instance_id", type=int)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "--any-label",
    is_flag=True,
    help="Accept an instance without our label (its host key is pinned at first login).",
)
@click.pass_context
def run_cmd(
    ctx: click.Context, instance_id: int, command: tuple[str, ...], any_label: bool
) -> None:
    """Run a command on a rental over SSH (pinned host key) and print its output.

    One argument is a shell line; several (after ``--``) are quoted word by word. Exits with
    the remote command's exit status.

    \b
    Examples:
      vastai-async run 4242 'nvidia-smi -L'
      vastai-async run 4242 -- nvidia-smi -L
    """
    line = command[0] if len(command) == 1 else shlex.join(command)

    async def run() -> int:
        async with make_service(ctx) as vast:
            rental = await vast.get_rental(instance_id, require_label=not any_label)
            result = await rental.run(line)
        click.echo(result.stdout, nl=False)
        click.echo(result.stderr, nl=False, err=True)
        return result.exit_status if result.exit_status is not None else 1

    code = run_command(ctx, run)
    sys.exit(code)


@cli.command("logs")
@click.argument("instance_id", type=int)
@click.option(
    "--tail", type=click.IntRange(min=1), default=1000, show_default=True, help="Last N lines."
)
@click.pass_context
def logs_cmd(ctx: click.Context, instance_id: int, tail: int) -> None:
    """Print an instance's container logs."""

    async def run() -> None:
        async with make_service(ctx, read_only=True) as vast:
            text = await vast.client.request_logs(instance_id, tail=tail)
        click.echo(text, nl=not text.endswith("\n"))

    run_command(ctx, run)
