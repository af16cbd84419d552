"""Testing your own Vast.ai code against the sandbox: no account, no money, no network.

``vastai-async`` installs a pytest plugin with these fixtures:

- ``vastai_sandbox``: a local Vast.ai (HTTP API, market, lifecycle, real SSH on 127.0.0.1);
  tune it with ``@pytest.mark.vastai_sandbox(offers=..., seed=..., time_scale=...)``.
- ``vastai_service``: a ``VastAIService`` already pointed at it, on its fast clock.

Run: ``pytest test_my_gpu_job.py``.
"""

from __future__ import annotations

import pytest

from vastai_async import SSHCommandError, VastAIService
from vastai_async.sandbox import Sandbox

# The fixtures are async: mark the tests for pytest-asyncio (or set asyncio_mode = "auto").
pytestmark = pytest.mark.asyncio


# --- your code (normally imported from your package) ----------------------------------------


async def list_gpus(vast: VastAIService, job_id: str, command: str = "nvidia-smi -L") -> list[str]:
    """Rent a machine, list its GPUs, give the machine back."""
    rental = await vast.provision_instance(job_id=job_id, fan_out=2)
    async with rental:  # destroyed on exit, even if the command fails
        result = await rental.run(command, check=True)
    return result.stdout.splitlines()


# --- your tests -------------------------------------------------------------------------------


async def test_job_lists_gpus_and_gives_the_machine_back(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    gpus = await list_gpus(vastai_service, job_id="gpu-check")

    assert gpus
    assert gpus[0].startswith("GPU 0: ")
    # Nothing is left running (and billing) once the job returns.
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_failing_job_still_gives_the_machine_back(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    with pytest.raises(SSHCommandError):
        await list_gpus(vastai_service, job_id="gpu-check", command="false")

    assert vastai_sandbox.alive_instance_ids() == set()


@pytest.mark.vastai_sandbox(offers=10, seed=7)
async def test_job_rents_another_offer_when_the_best_is_taken(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    offers = await vastai_service.search_offers()
    vastai_sandbox.take_offer(offers[0].id)  # someone else rents it before we do

    rental = await vastai_service.provision_instance(job_id="gpu-check", offers=offers, fan_out=1)
    async with rental:
        assert rental.info.offer is not None
        assert rental.info.offer.id != offers[0].id

    assert vastai_sandbox.alive_instance_ids() == set()
