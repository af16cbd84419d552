"""Developer sessions: lint, typecheck, tests (and later docs, bench)."""

from __future__ import annotations

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
    """Sandbox benchmarks (< 10 min on 2 cores): bench-results.json, docs table, plot."""
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
