"""Live: rent the cheapest matching offer on the real Vast.ai, run nvidia-smi -L, terminate.

Skipped unless ``VASTAI_LIVE_TESTS=1`` and ``VASTAI_API_KEY`` (and ``VASTAI_SSH_KEY_PATH``) are
set: it spends real money (a few cents).
"""

from __future__ import annotations

import pytest

from tests.conftest import LIVE_API_KEY, LIVE_SSH_KEY_PATH
from vastai_async import VastAIService, get_vastai_config

pytestmark = pytest.mark.live


async def test_live_provision_cheapest_offer_runs_nvidia_smi() -> None:
    if not LIVE_SSH_KEY_PATH:
        pytest.skip("live provisioning needs VASTAI_SSH_KEY_PATH too")
    config = get_vastai_config(api_key=LIVE_API_KEY, ssh_key_path=LIVE_SSH_KEY_PATH)
    async with VastAIService(config=config) as vast:
        offers = await vast.search_offers(limit=5)
        assert offers, "no offer matches the configured filters"
        async with await vast.provision_instance(
            job_id="live-test", offers=offers, fan_out=2
        ) as rental:
            result = await rental.run("nvidia-smi -L", check=True)
            assert "GPU 0" in result.stdout
        remaining = await vast.list_rentals(job_id="live-test")
        assert remaining == []
