"""Run a job: rent a machine, send it an input file, run a command, fetch the file back, tear down.

``async with rental:`` destroys the machine when the block ends, whether the job succeeded,
raised, or was cancelled with Ctrl-C.

    python examples/run_job.py --sandbox
    python examples/run_job.py --command "nvidia-smi -L"
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import example_config, example_parser, run_example

from vastai_async import VastAIService


async def main(args: argparse.Namespace) -> None:
    config = example_config(sandbox=args.sandbox)
    async with VastAIService(config=config) as vast:
        rental = await vast.provision_instance(job_id=args.job_id, fan_out=2)
        print(f"rented instance {rental.instance_id} ({rental.info.dph_total} $/h)")
        async with rental:
            result = await rental.run(args.command, check=True)
            print(f"$ {args.command}\n{result.stdout.rstrip()}")

            with tempfile.TemporaryDirectory() as tmp:
                sent = write_file(Path(tmp, "input.txt"), "hello from run_job.py\n")
                await rental.put(sent, "input.txt")  # relative paths land in the home folder
                remote = await rental.run("cat input.txt", check=True)
                print(f"remote input.txt: {remote.stdout.strip()}")

                back = Path(tmp, "output.txt")
                await rental.get("input.txt", back)
                print(f"fetched input.txt back, identical: {same_bytes(sent, back)}")
        print(f"instance {rental.instance_id} destroyed")


# Small local file work, kept out of the async function.
def write_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def same_bytes(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


if __name__ == "__main__":
    parser = example_parser(__doc__ or "")
    parser.add_argument("--job-id", default="run-job", help="job id written into the label")
    parser.add_argument("--command", default="nvidia-smi -L", help="the job's command")
    run_example(main(parser.parse_args()))
