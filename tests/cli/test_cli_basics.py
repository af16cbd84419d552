"""The command as a user meets it: version, help, usage errors, config errors, --debug."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from tests.cli._runner import CLIResult, lines, run_all_at_once
from vastai_async import __version__
from vastai_async.cli._app import register_commands

#: Independent commands with no sandbox: run together once, checked one per test below.
BATCH: dict[str, list[str]] = {
    "version": ["--version"],
    "help": ["--help"],
    "bad_flag": ["search", "--no-such-flag"],
    "missing_key": ["search"],
    "debug": ["--debug", "search"],
    "unreachable": ["--sandbox-url", "http://127.0.0.1:9", "--sandbox-key", "k" * 16, "list"],
    "url_without_key": ["--sandbox-url", "http://127.0.0.1:9", "list"],
    "no_recorded_sandbox": ["--sandbox", "list"],
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CLIResult]:
    """Every BATCH command's result (in an empty folder, with an empty state directory)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("VASTAI_")]:
            patch.delenv(name)
        patch.chdir(tmp_path_factory.mktemp("batch-cwd"))
        patch.setenv("VASTAI_STATE_DIR", str(tmp_path_factory.mktemp("batch-state")))
        return run_all_at_once(BATCH)


COMMANDS = [
    "config",
    "demo",
    "destroy",
    "list",
    "logs",
    "provision",
    "reap",
    "rent",
    "run",
    "sandbox",
    "search",
    "show",
    "ssh",
]


def test_version_prints_the_package_version(ran: dict[str, CLIResult]) -> None:
    result = ran["version"]
    assert result.code == 0
    assert result.out.strip() == f"vastai-async, version {__version__}"


def test_group_help_lists_every_command_and_shows_examples(ran: dict[str, CLIResult]) -> None:
    result = ran["help"]
    assert result.code == 0, result.err
    for name in COMMANDS:
        assert f"\n  {name} " in result.out, name
    assert "Examples:" in result.out
    assert "vastai-async demo" in result.out
    assert "vastai-async config" in result.out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_that_exits_0(name: str) -> None:
    """Per-command help in-process (each child process costs ~1.5 s of imports)."""
    group = register_commands()
    result = CliRunner().invoke(group, [name, "--help"], prog_name="vastai-async")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: vastai-async {name} ")
    summary = (group.commands[name].help or "").strip().splitlines()[0]
    assert summary
    assert summary in " ".join(result.output.split())


def test_a_bad_flag_is_a_usage_error_with_exit_2(ran: dict[str, CLIResult]) -> None:
    result = ran["bad_flag"]
    assert result.code == 2
    assert "No such option" in result.err
    assert "Traceback" not in result.err


def test_a_missing_key_is_one_line_naming_the_variable_the_sandbox_and_the_docs(
    ran: dict[str, CLIResult],
) -> None:
    result = ran["missing_key"]
    assert result.code == 1
    assert result.out == ""
    (line,) = lines(result.err)
    assert line.startswith("error: ")
    assert "VASTAI_API_KEY" in line
    assert "--sandbox" in line
    assert "README" in line
    # search never uses the SSH key: it must not be named as missing.
    assert "VASTAI_SSH_KEY_PATH: missing" not in line


def test_debug_shows_the_traceback(ran: dict[str, CLIResult]) -> None:
    result = ran["debug"]
    assert result.code == 1
    assert "Traceback (most recent call last)" in result.err
    assert "ConfigError" in result.err
    assert "VASTAI_API_KEY" in result.err


def test_an_unreachable_server_is_one_line_without_traceback(ran: dict[str, CLIResult]) -> None:
    result = ran["unreachable"]
    assert result.code == 1
    (line,) = lines(result.err)
    assert line.startswith("error: ")
    assert "connect" in line
    assert "k" * 16 not in result.err


def test_sandbox_flag_without_a_recorded_sandbox_is_one_line(ran: dict[str, CLIResult]) -> None:
    result = ran["no_recorded_sandbox"]
    assert result.code == 1
    (line,) = lines(result.err)
    assert "no running sandbox recorded" in line
    assert "vastai-async sandbox" in line


def test_sandbox_url_without_key_is_a_usage_error(ran: dict[str, CLIResult]) -> None:
    result = ran["url_without_key"]
    assert result.code == 2
    assert "--sandbox-key" in result.err
    assert "Traceback" not in result.err
