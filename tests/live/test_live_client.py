"""Live checks against the real Vast.ai: read-only, free (offers and the current user).

Skipped unless ``VASTAI_LIVE_TESTS=1`` and ``VASTAI_API_KEY`` are set (see ``tests/conftest.py``).
Nothing here rents, so nothing here spends money.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import LIVE_API_KEY
from vastai_async.client import VastAIClient
from vastai_async.config import VastAIConfig
from vastai_async.models import Offer, User

pytestmark = pytest.mark.live


def _live_config(tmp_path: Path) -> VastAIConfig:
    assert LIVE_API_KEY is not None  # the collection hook skips these tests otherwise
    return VastAIConfig(
        api_key=LIVE_API_KEY,
        ssh_key_path=tmp_path / "unused",
        ssh_public_key="ssh-ed25519 AAAAunused live@test",
        owner="live-test",
        state_dir=tmp_path,
    )


async def test_live_search_offers_reads_typed_offers(tmp_path: Path) -> None:
    """The real offer search answers and every offer reads into an Offer with a price."""
    query = {
        "verified": {"eq": True},
        "external": {"eq": False},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "num_gpus": {"eq": 1},
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "limit": 5,
    }
    async with VastAIClient.from_config(_live_config(tmp_path)) as client:
        offers = await client.search_offers(query)
    assert offers, "the live market returned no offer at all"
    assert all(isinstance(o, Offer) and o.dph_total >= 0 for o in offers)
    assert all(o.num_gpus == 1 for o in offers)


async def test_live_current_user_reads_the_account(tmp_path: Path) -> None:
    """The key is accepted by /users/current and the answer reads into a User."""
    async with VastAIClient.from_config(_live_config(tmp_path)) as client:
        user = await client.current_user()
    assert isinstance(user, User)
    assert user.id > 0
