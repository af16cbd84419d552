"""Quickstart: search offers, rent the cheapest, prove SSH, terminate it.

python examples/quickstart.py             # your Vast.ai account (VASTAI_* / .env.local.vastai)
python examples/quickstart.py --sandbox   # the local sandbox from `vastai-async sandbox`
"""

from __future__ import annotations

import argparse

from _common import example_config, example_parser, run_example

from vastai_async import VastAIService


async def main(args: argparse.Namespace) -> None:
    config = example_config(sandbox=args.sandbox, max_bid_usd_per_hour=3.5)
    async with VastAIService(config=config) as vast:
        offers = await vast.search_offers(min_vram_gb=24)
        if not offers:
            raise SystemExit("no offer matches: raise VASTAI_MAX_BID_PER_HOUR or widen the GPUs")
        best = offers[0]
        print(f"{len(offers)} offers; renting {best.id}: {best.gpu_name}, {best.dph_total:.3f} $/h")

        # Returns once an SSH login into the machine worked (the host key is now pinned).
        rental = await vast.provision_instance(
            job_id="demo-job",
            offer_id=best.id,
            image="vastai/base-image:@vastai-automatic-tag",
            extra_env={"PROVISIONING_SCRIPT": "https://example.com/script.sh"},
            onstart_cmd="entrypoint.sh",
        )
        try:
            print(f"instance {rental.instance_id} is up: {rental.ssh_command()}")
        finally:
            # `async with rental:` does this for you (see run_job.py).
            await vast.terminate_instance(rental.instance_id)
        print(f"instance {rental.instance_id} terminated")


if __name__ == "__main__":
    run_example(main(example_parser(__doc__ or "").parse_args()))
