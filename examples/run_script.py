"""Run your own script on a rental: upload it with its input, run it, fetch what it wrote.

The script below is ordinary Python: it reads a JSON input, asks ``nvidia-smi`` for the GPUs,
computes, and writes ``results/result.json``. On the sandbox it runs for real (``python3`` on
this machine, in the instance's own folder, with the environment Vast.ai sets), so this is the
same round trip a job makes on a rented GPU.

    python examples/run_script.py --sandbox
    python examples/run_script.py --numbers 3 4 12
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import example_config, example_parser, run_example

from vastai_async import VastAIService

#: The job: any script your machine image can run.
JOB = """\
import json, os, subprocess, sys

numbers = json.load(open(sys.argv[1]))["numbers"]
gpus = subprocess.run(
    ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
    capture_output=True, text=True, check=True,
).stdout.splitlines()
result = {
    "instance": os.environ.get("CONTAINER_ID"),
    "gpus": gpus,
    "sum_of_squares": sum(n * n for n in numbers),
}
os.makedirs("results", exist_ok=True)
with open("results/result.json", "w") as f:
    json.dump(result, f)
print(f"job on {result['instance']}: {len(gpus)} GPU(s), sum of squares {result['sum_of_squares']}")
"""


async def main(args: argparse.Namespace) -> None:
    config = example_config(sandbox=args.sandbox)
    async with VastAIService(config=config) as vast:
        rental = await vast.provision_instance(job_id=args.job_id, fan_out=2)
        print(f"rented instance {rental.instance_id}")
        async with rental:
            with tempfile.TemporaryDirectory() as tmp:
                script, data = write_inputs(Path(tmp), args.numbers)
                # Relative paths land in the instance's home folder, where commands start.
                await rental.put(script, "job.py")
                await rental.put(data, "input.json")
                run = await rental.run("python3 job.py input.json", check=True, timeout=600)
                print(run.stdout.rstrip())
                fetched = Path(tmp, "result.json")
                await rental.get("results/result.json", fetched)
                result = read_json(fetched)
            print(f"fetched result: sum_of_squares={result['sum_of_squares']}")
            for line in result["gpus"]:
                print(f"  GPU: {line}")
        print(f"instance {rental.instance_id} destroyed")


# Small local file work, kept out of the async function.
def write_inputs(folder: Path, numbers: list[int]) -> tuple[Path, Path]:
    script = folder / "job.py"
    script.write_text(JOB)
    data = folder / "input.json"
    data.write_text(json.dumps({"numbers": numbers}))
    return script, data


def read_json(path: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


if __name__ == "__main__":
    parser = example_parser(__doc__ or "")
    parser.add_argument("--job-id", default="run-script", help="job id written into the label")
    parser.add_argument("--numbers", type=int, nargs="+", default=[1, 2, 3, 4], help="the input")
    run_example(main(parser.parse_args()))
