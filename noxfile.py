"""Developer sessions: lint, typecheck, tests, mindeps, docs, bench, chaos.

``nox`` alone runs lint, typecheck and tests; name the others (``nox -s mindeps``).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite."""
    session.install("-e", ".[dev]")
    session.run("pytest", "-q", *session.posargs)


def floor_pins(pyproject: Path = Path("pyproject.toml")) -> list[str]:
    """``name==floor`` for every runtime dependency: the oldest versions we claim to support."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = []
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([^,;\s]+)", dep.strip())
        if match is None:
            raise ValueError(f"dependency without a plain >= floor: {dep!r}")
        pins.append(f"{match[1]}=={match[3]}")
    return pins


@nox.session
def mindeps(session: nox.Session) -> None:
    """Unit tests on the dependency floors: every runtime dependency pinned to its ``>=`` version.

    Direct dependencies are pinned (a constraints file); their own dependencies resolve freely,
    as uv's ``--resolution lowest-direct`` would. Test tools come at their current versions.
    """
    constraints = Path(session.create_tmp()) / "floors.txt"
    constraints.write_text("\n".join(floor_pins()) + "\n")
    session.install("-c", str(constraints), "-e", ".")
    # Test tools only (the docs build test skips itself without mkdocs).
    session.install(
        "-c",
        str(constraints),
        "pytest",
        "pytest-asyncio",
        "pytest-timeout",
        "aioresponses",
        "hypothesis",
        "jsonschema",  # the contract plugin (tests/contract) checks every request in the suite
    )
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    session.run("pytest", "-q", "tests/unit", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with ``mkdocs build --strict``: any warning fails the build."""
    # mkdocstrings formats the rendered signatures with ruff when it is installed.
    session.install("mkdocs", "mkdocs-material", "mkdocstrings[python]", "ruff")
    # mkdocs-material prints a notice about MkDocs 2.0 on every build; it is not about our docs.
    env = {"NO_MKDOCS_2_WARNING": "1"}
    # Build outside the work tree by default so a check leaves nothing behind.
    site_dir = session.posargs[0] if session.posargs else f"{session.create_tmp()}/site"
    session.run("mkdocs", "build", "--strict", "--site-dir", site_dir, env=env)


@nox.session
def bench(session: nox.Session) -> None:
    """Sandbox benchmarks (about 15 min on 2 cores): bench-results.json, docs tables, plot."""
    session.install("-e", ".[bench]")
    # The official client gets its own venv (/tmp/vastai-bench-venv), built by the benchmark.
    session.run(
        "python",
        "-m",
        "tests.benchmarks.run",
        "--out",
        "bench-results.json",
        "--markdown",
        "docs/benchmarks.md",
        "--plot",
        "docs/img/benchmarks.png",
        *session.posargs,
    )


@nox.session(name="bench_reputation")
def bench_reputation(session: nox.Session) -> None:
    """Host reputation figures (~7 min) into bench-results.json, and the expected-vs-measured plot.

    The raw per-seed trials go to ``.nox/bench-reputation.json`` (not committed).
    """
    session.install("-e", ".[bench]")
    session.run(
        "python",
        "-m",
        "tests.benchmarks.reputation",
        "--out",
        ".nox/bench-reputation.json",
        "--merge-into",
        "bench-results.json",
        "--plot",
        "docs/img/hosts-expected-vs-measured.png",
        *session.posargs,
    )


@nox.session
def chaos(session: nox.Session) -> None:
    """Hundreds of seeded fault combinations and cancellation cuts; prints the summary table."""
    session.install("-e", ".[dev]")
    args = session.posargs or ["--runs", "300", "--seed", "0"]
    session.run("python", "-m", "tests.reliability.chaos", *args)


@nox.session(name="fleet_chaos")
def fleet_chaos(session: nox.Session) -> None:
    """arq workers SIGKILLed and robbed of their Redis data (needs redis-server); summary table."""
    session.install("-e", ".[dev]")
    args = session.posargs or ["--runs", "8", "--seed", "0"]
    session.run("python", "-m", "tests.reliability.fleet_chaos", *args)
