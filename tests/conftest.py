"""Test-wide guards: no test reads a real account, a real .env file or the user's state folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Every request a VastAISession sends during a test is checked against its contract.
pytest_plugins = ["tests.contract.plugin"]

#: Noted before the autouse fixture wipes ``VASTAI_*``: live tests run only when both are set.
LIVE_REQUESTED = os.environ.get("VASTAI_LIVE_TESTS") == "1"
LIVE_API_KEY = os.environ.get("VASTAI_API_KEY") if LIVE_REQUESTED else None
LIVE_SSH_KEY_PATH = os.environ.get("VASTAI_SSH_KEY_PATH") if LIVE_REQUESTED else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_live = pytest.mark.skip(reason="live test: set VASTAI_LIVE_TESTS=1 and VASTAI_API_KEY")
    for item in items:
        if "live" in item.keywords and not (LIVE_REQUESTED and LIVE_API_KEY):
            item.add_marker(skip_live)


@pytest.fixture(autouse=True)
def _isolated_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Clear ``VASTAI_*``, work in a temporary folder, keep state in a temporary folder."""
    for name in list(os.environ):
        if name.startswith("VASTAI_"):
            monkeypatch.delenv(name)
    work = tmp_path_factory.mktemp("cwd")
    state = tmp_path_factory.mktemp("state")
    monkeypatch.chdir(work)
    monkeypatch.setenv("VASTAI_STATE_DIR", str(state))
    return work
