"""The documentation builds with ``mkdocs build --strict``, stays complete, and its code runs.

The build test runs whenever mkdocs is importable, not behind an opt-in variable: the ``dev``
extra installs mkdocs, so every developer and CI run checks the docs, and an opt-in test would
quietly never run (the autouse fixture also wipes ``VASTAI_*`` variables before each test).
Without mkdocs it is skipped with the reason and the install command.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vastai_async
from vastai_async.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]
API_PAGE = ROOT / "docs" / "api.md"

_HAS_MKDOCS = all(
    importlib.util.find_spec(name) is not None
    for name in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
)
needs_mkdocs = pytest.mark.skipif(
    not _HAS_MKDOCS,
    reason="mkdocs, mkdocs-material and mkdocstrings[python] are not installed "
    "(pip install mkdocs mkdocs-material 'mkdocstrings[python]', or the dev extra)",
)


def _python_block(page: str, heading: str) -> str:
    """The first ```python block after ``heading`` in ``docs/<page>``."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    after = text[text.index(heading) :]
    match = re.search(r"^```python\n(.*?)^```$", after, re.S | re.M)
    assert match is not None, f"no python block after {heading!r} in {page}"
    return match.group(1)


def _top_level_table() -> set[str]:
    text = API_PAGE.read_text(encoding="utf-8")
    begin = text.index("<!-- top-level-names: begin")
    end = text.index("<!-- top-level-names: end -->")
    return set(re.findall(r"^\| \[`([A-Za-z_][A-Za-z0-9_]*)`\]\[", text[begin:end], re.M))


def test_api_page_lists_exactly_the_top_level_names() -> None:
    """docs/api.md's table of top-level names matches ``vastai_async.__all__``."""
    exported = set(vastai_async.__all__) - {"__version__"}
    listed = _top_level_table()
    assert not exported - listed, f"exported but missing from docs/api.md: {exported - listed}"
    assert not listed - exported, f"in docs/api.md but not exported: {listed - exported}"


@pytest.mark.slow
@needs_mkdocs
def test_docs_build_strict_without_warnings(tmp_path: Path) -> None:
    """``mkdocs build --strict`` succeeds, renders the API from docstrings and the diagram."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(  # noqa: S603  (our own interpreter, fixed arguments)
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "WARNING" not in output, output

    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    # mkdocstrings rendered these objects (anchors are their full paths) with their docstrings.
    for anchor in (
        "vastai_async.service.VastAIService.provision_instance",
        "vastai_async.rental.Rental",
        "vastai_async.provider.AsyncComputeProvider",
        "vastai_async.errors.ProvisioningError",
        "vastai_async.events.WinnerChosen",
        "vastai_async.timings.Timings",
        "vastai_async.query.OfferQuery",
        "vastai_async.models.Offer",
        "vastai_async.config.get_vastai_config",
    ):
        assert f'id="{anchor}"' in api, f"{anchor} not rendered in the API reference"
    assert "Rent a machine and return it once an SSH login into it was proven." in api

    provisioning = (site / "provisioning" / "index.html").read_text(encoding="utf-8")
    assert '<pre class="mermaid">' in provisioning, "the race diagram is not a mermaid block"


@pytest.mark.slow
def test_getting_started_sandbox_script_runs_as_printed(tmp_path: Path) -> None:
    """The sandbox script of getting-started.md races, logs in and prints the GPU and ssh line."""
    script = tmp_path / "quickstart_sandbox.py"
    script.write_text(_python_block("getting-started.md", "## Try it on the sandbox"))
    proc = subprocess.run(  # noqa: S603  (our own interpreter, a file we just wrote)
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GPU 0: " in proc.stdout
    assert "ssh -i " in proc.stdout
    assert "StrictHostKeyChecking=yes" in proc.stdout


@pytest.mark.slow
@pytest.mark.vastai_sandbox(time_scale=0.01)
async def test_home_page_example_runs_against_the_sandbox(
    vastai_sandbox: Sandbox,
    vastai_ssh_key: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """index.md's usage example rents and terminates, leaving nothing alive in the sandbox."""
    code = _python_block("index.md", "## In Python")
    # Run main() on this test's loop (the sandbox lives here), configured as a user would be:
    # through VASTAI_* variables, pointing at the sandbox.
    assert code.rstrip().endswith("asyncio.run(main())")
    namespace: dict[str, object] = {}
    exec(compile(code.rstrip().removesuffix("asyncio.run(main())"), "index.md", "exec"), namespace)  # noqa: S102
    monkeypatch.setenv("VASTAI_API_KEY", vastai_sandbox.api_key)
    monkeypatch.setenv("VASTAI_API_BASE_URL", vastai_sandbox.url)
    monkeypatch.setenv("VASTAI_SSH_KEY_PATH", str(vastai_ssh_key))
    main = namespace["main"]
    assert callable(main)
    await main()
    ledger = vastai_sandbox.ledger()
    assert len(ledger) == 1, "offer_id=... is a race with one candidate: one instance"
    assert not ledger[0]["alive"]
    assert vastai_sandbox.leak_report() == []
