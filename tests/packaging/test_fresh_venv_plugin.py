"""The pytest plugin in a virtualenv holding only pytest and the package (no extras).

``pip install vastai-async`` registers ``vastai_async.testing`` with every pytest in that
environment, so it must never break a project that does not use it. The virtualenv is cached per
``pyproject.toml`` (an editable install, so later code changes need no rebuild): the first run
costs a pip install, later runs a few pytest starts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _clean_env() -> dict[str, str]:
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("VASTAI_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _fresh_venv() -> Path:
    """A cached virtualenv with pytest and an editable, extra-less install of this checkout."""
    key = hashlib.sha256(
        b"\0".join(
            [(ROOT / "pyproject.toml").read_bytes(), str(ROOT).encode(), sys.version.encode()]
        )
    ).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / f"vastai-plugin-venv-{key}"
    python = target / "bin" / "python"
    if (target / ".complete").exists():
        return python
    building = Path(tempfile.mkdtemp(prefix="vastai-plugin-venv-build-"))
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(building)
    except Exception as err:  # no ensurepip / venv module on this Python
        shutil.rmtree(building, ignore_errors=True)
        pytest.skip(f"cannot create a virtualenv here: {err}")
    pip = [str(building / "bin" / "python"), "-m", "pip", "install", "-q"]
    try:
        subprocess.run([*pip, "pytest"], check=True, env=_clean_env(), timeout=600)  # noqa: S603
        subprocess.run([*pip, "-e", str(ROOT)], check=True, env=_clean_env(), timeout=600)  # noqa: S603
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    # Only ``python -m`` is used, so the scripts' shebangs naming the build path do not matter.
    os.replace(building, target)
    (target / ".complete").write_text("ok\n")
    return python


def _pytest(python: Path, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  (our venv's python, fixed arguments)
        [str(python), "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=folder,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def bare_python() -> Path:
    python = _fresh_venv()
    probe = subprocess.run(  # noqa: S603
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('pytest_asyncio'))"],
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    # The test means something only while pytest-asyncio is absent from that environment.
    assert probe.stdout.strip() == "None"
    return python


def test_unrelated_project_passes_with_the_plugin_installed(
    bare_python: Path, tmp_path: Path
) -> None:
    """A project that never heard of vastai_async runs its tests as if the plugin were absent."""
    (tmp_path / "test_other.py").write_text("def test_sum():\n    assert 1 + 1 == 2\n")
    result = _pytest(bare_python, tmp_path, "-q", "test_other.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "Error" not in result.stderr


def test_plugin_is_loaded_and_tells_how_to_enable_its_fixtures(
    bare_python: Path, tmp_path: Path
) -> None:
    """The plugin is active (not silently missing) and names the extra to install."""
    (tmp_path / "test_wants_sandbox.py").write_text(
        "def test_uses_sandbox(vastai_sandbox):\n    pass\n"
    )
    result = _pytest(bare_python, tmp_path, "-q", "test_wants_sandbox.py")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "vastai-async[testing]" in result.stdout
    assert "1 error" in result.stdout  # a fixture failing is reported as a setup error
