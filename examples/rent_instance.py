"""Rent one offer, wait until SSH works, keep the machine running and print the ssh line.

The machine is relabelled ``vastai-async:kept:<job>:<your label>``: ``reap`` spares it and it
bills until you destroy it (``vastai-async destroy ID``).

    python examples/rent_instance.py --sandbox --offer 2001145 --label "my notebook"
    python examples/rent_instance.py --offer 123456 --image pytorch/pytorch:latest \\
        --env HF_HOME=/workspace/hf --port 8888 --port 53/udp --onstart "jupyter lab" --disk 100
"""

from __future__ import annotations

import argparse

from _common import example_config, example_parser, run_example

from vastai_async import VastAIService


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` from the command line."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


async def main(args: argparse.Namespace) -> None:
    config = example_config(sandbox=args.sandbox)
    async with VastAIService(config=config) as vast:
        rental = await vast.provision_instance(
            job_id=args.job_id,
            offer_id=args.offer,
            image=args.image,
            extra_env=dict(args.env),
            ports=args.port,
            onstart_cmd=args.onstart,
            disk_gb=args.disk,
            fan_out=1,
        )
        # Should detach fail, leaving the block destroys the machine rather than leak it.
        async with rental:
            await rental.detach(args.label)
    print(f"instance {rental.instance_id} kept running ({rental.info.dph_total} $/h)")
    print(f"destroy it with: vastai-async destroy {rental.instance_id}")
    print(rental.ssh_command())


if __name__ == "__main__":
    parser = example_parser(__doc__ or "")
    parser.add_argument("--offer", type=int, required=True, metavar="ID", help="offer to rent")
    parser.add_argument("--image", help="docker image (default: VASTAI_DEFAULT_IMAGE)")
    parser.add_argument(
        "--env", type=key_value, action="append", default=[], metavar="KEY=VALUE",
        help="container environment variable (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--port", action="append", default=[], metavar="PORT[/udp]",
        help="port to expose (repeatable)",
    )  # fmt: skip
    parser.add_argument("--onstart", metavar="CMD", help="command run when the container starts")
    parser.add_argument("--disk", type=float, metavar="GB", help="disk size in GB")
    parser.add_argument("--label", metavar="TEXT", help="your text, kept readable in the label")
    parser.add_argument("--job-id", default="rent", help="job id written into the label")
    run_example(main(parser.parse_args()))
