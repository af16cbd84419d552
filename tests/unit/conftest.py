"""Unit-test fixtures: the aioresponses shim for aiohttp 3.14 and small builders.

aioresponses 0.7.9 builds ``ClientResponse`` objects without the ``stream_writer`` argument
aiohttp 3.14 made mandatory (upstream aioresponses issue 289). We must not pin aiohttp below 3.14
(a security release), so the shim below supplies the argument. ``test_aioresponses_shim.py`` fails
as soon as aioresponses no longer needs it, so it gets removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aioresponses
import aioresponses.core
import pytest
from aiohttp.client_reqrep import ConnectionKey
from yarl import URL

from vastai_async._retry import RetryPolicy
from vastai_async.client import VastAIClient
from vastai_async.config import VastAIConfig
from vastai_async.pacing import Pacing
from vastai_async.session import VastAISession


class _NoStreamWriter:
    """Stands in for the request's stream writer of a response that was never sent."""

    output_size = 0


class ShimClientResponse(aiohttp.ClientResponse):
    """``ClientResponse`` that accepts aioresponses' pre-3.14 constructor call."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _NoStreamWriter())
        super().__init__(method, url, **kwargs)


@pytest.fixture(autouse=True)
def _aioresponses_shim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make aioresponses build responses aiohttp 3.14 accepts."""
    monkeypatch.setattr(aioresponses.core, "ClientResponse", ShimClientResponse)


# -- builders shared by the session and client tests ----------------------------------------

#: A key distinctive enough that finding it anywhere (logs, reprs, errors, URLs) is a leak.
API_KEY = "sk-test-3f9a1c7e5b2d4a6f8e0c"
ROOT = "http://vast.test"
NO_PACING = Pacing(min_intervals={}, default_interval_s=0.0)
FAST_RETRY = RetryPolicy(attempts=2, initial_s=0.0)


def make_config(tmp_path: Path, **changes: Any) -> VastAIConfig:
    """A config pointing at ``ROOT`` (given as root + /api/v0, as the default is), no pacing."""
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "api_base_url": f"{ROOT}/api/v0",
        "ssh_key_path": tmp_path / "id_ed25519",
        "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest test@unit",
        "owner": "unit",
        "state_dir": tmp_path,
        "pacing": NO_PACING,
    }
    values.update(changes)
    return VastAIConfig(**values)


@pytest.fixture
def config(tmp_path: Path) -> VastAIConfig:
    """The unit tests' configuration."""
    return make_config(tmp_path)


@pytest.fixture
def mocked() -> Iterator[aioresponses.aioresponses]:
    """aioresponses active for the test; unmatched requests fail as connection errors."""
    with aioresponses.aioresponses() as mock:
        yield mock


@pytest.fixture
async def session(config: VastAIConfig) -> AsyncIterator[VastAISession]:
    """A session with fast retries (2 attempts, no wait) and no pacing."""
    async with VastAISession(config, retry=FAST_RETRY) as sess:
        yield sess


@pytest.fixture
async def client(session: VastAISession) -> VastAIClient:
    """A client over :func:`session`."""
    return VastAIClient(session)


def sent(mock: aioresponses.aioresponses) -> list[tuple[str, URL, dict[str, Any]]]:
    """Every request aioresponses saw: ``(method, url with query, call kwargs)``."""
    return [
        (method, url, call.kwargs)
        for (method, url), calls in mock.requests.items()
        for call in calls
    ]


def connector_error(message: str = "Connection refused") -> aiohttp.ClientConnectorError:
    """What aiohttp raises when the TCP connection is refused (nothing was sent)."""
    key = ConnectionKey("vast.test", 80, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, message))
