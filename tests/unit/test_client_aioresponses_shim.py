"""The aioresponses shim in ``tests/unit/conftest.py`` is still needed (and still works)."""

from __future__ import annotations

import aiohttp
import aioresponses.core
import pytest
from aioresponses import aioresponses as mock_http
from aioresponses.core import RequestMatch
from yarl import URL


def test_shim_still_needed_remove_it_when_this_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioresponses without the shim still breaks on this aiohttp; when it stops, drop the shim."""
    monkeypatch.setattr(aioresponses.core, "ClientResponse", aiohttp.ClientResponse)
    match = RequestMatch("http://example.invalid/x", payload={})
    with pytest.raises(TypeError, match="stream_writer"):
        match._build_response(URL("http://example.invalid/x"))


async def test_shim_lets_aioresponses_answer() -> None:
    """With the shim, a mocked answer reads back with its status, headers and JSON body."""
    with mock_http() as mocked:
        mocked.get("http://example.invalid/x", payload={"a": 1}, headers={"X-T": "1"})
        async with aiohttp.ClientSession() as http, http.get("http://example.invalid/x") as resp:
            assert resp.status == 200
            assert resp.headers["X-T"] == "1"
            assert await resp.json() == {"a": 1}
