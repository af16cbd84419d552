"""pytest plugin (entry point ``vastai_async``): a local Vast.ai for your own tests.

Installed with the package; pytest loads it automatically, in every project of that environment,
so loading it does nothing but register a marker and the fixture names. The async fixtures need
pytest-asyncio: install the ``testing`` extra (``pip install 'vastai-async[testing]'``). Without
it pytest runs as before, and a test that asks for a sandbox fixture fails with that hint.

Fixtures (function scope, working in pytest-asyncio's strict and auto modes):

- ``vastai_sandbox``: a started :class:`~vastai_async.sandbox.Sandbox` (real HTTP and SSH on
  127.0.0.1). Its instances run commands with a real ``/bin/sh`` (as you, in a folder per
  instance; ``shell="emulated"`` for built-ins only). Tune it per test with
  ``@pytest.mark.vastai_sandbox(offers=20, time_scale=0.02, seed=1, rate_limits=True)``.
- ``vastai_ssh_key``: path of a fresh ed25519 private key (mode 0600; ``.pub`` beside it).
- ``vastai_config``: a :class:`~vastai_async.VastAIConfig` for that sandbox whose timings and
  pacing run on the sandbox's clock.
- ``vastai_service``: an entered :class:`~vastai_async.VastAIService` on that config.

Example::

    async def test_my_job_runs(vastai_service, vastai_sandbox):
        rental = await vastai_service.provision_instance(job_id="t1", fan_out=2)
        async with rental:
            assert (await rental.run("nvidia-smi -L")).stdout.startswith("GPU 0")
        assert vastai_sandbox.alive_instance_ids() == set()
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

try:
    import pytest_asyncio
except ImportError:  # the plugin loads in every project: never break pytest for them
    pytest_asyncio = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from vastai_async.config import VastAIConfig
    from vastai_async.sandbox import Sandbox
    from vastai_async.service import VastAIService

__all__ = ["vastai_config", "vastai_sandbox", "vastai_service", "vastai_ssh_key"]

#: What a test asking for an async fixture is told when pytest-asyncio is missing.
MISSING_ASYNCIO_HINT = (
    "the vastai_async fixtures vastai_sandbox, vastai_config and vastai_service need "
    "pytest-asyncio: pip install 'vastai-async[testing]' (or pytest-asyncio>=1.0)"
)

#: Defaults of the ``vastai_sandbox`` fixture; the marker's keyword arguments override them.
SANDBOX_DEFAULTS: dict[str, Any] = {"seed": 0, "offers": 30, "time_scale": 0.02, "shell": "real"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "vastai_sandbox(**kwargs): options of the vastai_sandbox fixture "
        "(seed, offers, time_scale, rate_limits, ... as Sandbox takes them)",
    )


@pytest.fixture
def vastai_ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ed25519 private key (mode 0600) with its ``.pub`` beside it."""
    from vastai_async.config import generate_ssh_keypair

    path = tmp_path_factory.mktemp("vastai-key") / "id_ed25519"
    generate_ssh_keypair(path)
    return path


if pytest_asyncio is not None:

    @pytest_asyncio.fixture(loop_scope="function")
    async def vastai_sandbox(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
        """A started sandbox; options from ``@pytest.mark.vastai_sandbox(...)``."""
        from vastai_async.sandbox import Sandbox

        options = dict(SANDBOX_DEFAULTS)
        marker = request.node.get_closest_marker("vastai_sandbox")
        if marker is not None:
            options.update(marker.kwargs)
        async with Sandbox(**options) as sandbox:
            yield sandbox

    @pytest_asyncio.fixture(loop_scope="function")
    async def vastai_service(vastai_config: VastAIConfig) -> AsyncIterator[VastAIService]:
        """An entered service on ``vastai_config``; closed after the test."""
        from vastai_async.service import VastAIService

        async with VastAIService(config=vastai_config) as service:
            yield service

else:

    @pytest.fixture(name="vastai_sandbox")
    def _sandbox_needs_pytest_asyncio() -> Sandbox:
        """Stands in for the async fixture: fails the asking test with the install hint."""
        pytest.fail(MISSING_ASYNCIO_HINT, pytrace=False)

    @pytest.fixture(name="vastai_service")
    def _service_needs_pytest_asyncio() -> VastAIService:
        """Stands in for the async fixture: fails the asking test with the install hint."""
        pytest.fail(MISSING_ASYNCIO_HINT, pytrace=False)


@pytest.fixture
def vastai_config(
    vastai_sandbox: Sandbox,
    vastai_ssh_key: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> VastAIConfig:
    """A config for ``vastai_sandbox``, its timings and pacing on the sandbox clock."""
    from vastai_async.config import get_vastai_config

    config = get_vastai_config(
        api_key=vastai_sandbox.api_key,
        api_base_url=vastai_sandbox.url,
        ssh_key_path=vastai_ssh_key,
        state_dir=tmp_path_factory.mktemp("vastai-state"),
        max_bid_usd_per_hour=50.0,
        min_vram_gb=0,
        preferred_gpus=(),
    )
    return config.scaled(vastai_sandbox.time_scale)
