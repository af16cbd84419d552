"""The command's edges, as a user meets them in a shell (child processes, no shared state).

Usage errors exit 2 in click's format; read-only commands need only the API key; ``config``
lists what is missing; standalone sandboxes keep one record each and a dead one is named; a
busy port and a Ctrl-C during start-up are one line each.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from tests.cli._runner import CLIResult, finish, lines, run_all_at_once

USAGE: dict[str, list[str]] = {
    "timeout": ["provision", "--job-id", "x", "--timeout", "-1"],
    "disk": ["provision", "--job-id", "x", "--disk", "-5"],
    "hedge": ["provision", "--job-id", "x", "--hedge", "0"],
    "max_usd": ["search", "--max-usd-per-hour", "-1"],
    "port": ["rent", "--offer", "1", "--port", "abc"],
    "num_gpus": ["search", "--num-gpus", "0"],
}

BATCH: dict[str, list[str]] = {
    **{f"usage_{name}": args for name, args in USAGE.items()},
    "config_nothing": ["config"],
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CLIResult]:
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("VASTAI_")]:
            patch.delenv(name)
        patch.chdir(tmp_path_factory.mktemp("edges-cwd"))
        patch.setenv("VASTAI_STATE_DIR", str(tmp_path_factory.mktemp("edges-state")))
        results = run_all_at_once(BATCH)
        # Only an API key, pointing nowhere: search/list must not ask for an SSH key.
        patch.setenv("VASTAI_API_KEY", "k" * 20)
        patch.setenv("VASTAI_API_BASE_URL", "http://127.0.0.1:9")
        results.update(
            run_all_at_once({"search_key_only": ["search"], "config_key_only": ["config"]})
        )
        return results


@pytest.mark.parametrize("name", sorted(USAGE))
def test_out_of_range_values_are_usage_errors(ran: dict[str, CLIResult], name: str) -> None:
    result = ran[f"usage_{name}"]
    assert result.code == 2, result.err
    assert "Invalid value" in result.err
    assert "Traceback" not in result.err


def test_config_with_nothing_set_lists_the_missing_settings(ran: dict[str, CLIResult]) -> None:
    result = ran["config_nothing"]
    assert result.code == 1
    assert "missing: VASTAI_API_KEY" in result.err
    assert "--sandbox" in result.err
    assert "Traceback" not in result.err


def test_config_with_only_an_api_key_shows_settings_and_names_the_ssh_key(
    ran: dict[str, CLIResult],
) -> None:
    result = ran["config_key_only"]
    assert result.code == 0, result.err
    assert "api_base_url           http://127.0.0.1:9" in result.out
    assert "missing: VASTAI_SSH_KEY_PATH" in result.err
    assert "k" * 20 not in result.out + result.err


def test_search_needs_only_the_api_key_and_names_the_url_it_cannot_reach(
    ran: dict[str, CLIResult],
) -> None:
    result = ran["search_key_only"]
    assert result.code == 1
    (line,) = lines(result.err)
    assert "SSH_KEY" not in line
    assert line.startswith("error: could not connect to http://127.0.0.1:9")
    assert "status=" not in line


def test_ctrl_c_while_still_importing_is_one_line_and_exit_130() -> None:
    """A KeyboardInterrupt raised while the command's modules load: no traceback, exit 130."""
    import subprocess

    script = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'vastai_async.cli._app':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['vastai-async', '--help']\n"
        "from vastai_async.cli import main\n"
        "main()\n"
    )
    result = subprocess.run(  # noqa: S603  (our interpreter, fixed script)
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 130
    assert result.stderr == "interrupted\n"


# --- standalone sandboxes ----------------------------------------------------------------------


async def _start_sandbox(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vastai_async", "sandbox", "--no-ssh", "--offers", "3", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def _wait_for(path: Path, proc: asyncio.subprocess.Process) -> dict[str, object]:
    async with asyncio.timeout(30):
        while True:
            try:
                return json.loads(await asyncio.to_thread(path.read_text))  # type: ignore[no-any-return]
            except (FileNotFoundError, ValueError):
                assert proc.returncode is None, "sandbox exited early"
                await asyncio.sleep(0.05)


async def _cli(env: dict[str, str], *args: str) -> CLIResult:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vastai_async", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    return await finish(proc)


@pytest.fixture
def state_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "VASTAI_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"}


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_two_sandboxes_keep_one_record_each_and_a_dead_one_is_named(
    state_env: dict[str, str],
) -> None:
    records = Path(state_env["VASTAI_STATE_DIR"]) / "sandboxes"
    first = await _start_sandbox(state_env)
    try:
        one = await _wait_for(records / "default.json", first)
        second = await _start_sandbox(state_env, "--name", "two")
        try:
            two = await _wait_for(records / "two.json", second)
            assert one["url"] != two["url"]

            ambiguous, by_name, by_url = await asyncio.gather(
                _cli(state_env, "--sandbox", "config"),
                _cli(state_env, "--sandbox-name", "two", "config", "--json"),
                _cli(state_env, "--sandbox-url", str(one["url"]), "config", "--json"),
            )
            assert ambiguous.code == 1
            assert "several sandboxes run" in ambiguous.err
            assert "--sandbox-name" in ambiguous.err
            assert json.loads(by_name.out)["api_base_url"] == two["url"]
            assert json.loads(by_url.out)["api_base_url"] == one["url"]

            # Stopping the first leaves the second's record alone.
            await _stop(first)
            assert first.returncode == 0
            assert not (records / "default.json").exists()
            alone = await _cli(state_env, "--sandbox", "config", "--json")
            assert json.loads(alone.out)["api_base_url"] == two["url"]

            # A crashed sandbox: its record stays, its pid is dead; the command says so.
            second.kill()
            await second.wait()
            crashed = await _cli(state_env, "--sandbox", "list")
            assert crashed.code == 1
            (line,) = lines(crashed.err)
            assert f"its process {two['pid']} is gone" in line
            assert "ClientConnectorError" not in line
            assert not (records / "two.json").exists()
        finally:
            await _stop(second)
    finally:
        await _stop(first)


async def test_a_busy_port_is_one_line_and_exit_1(state_env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await _start_sandbox(state_env, "--port", str(port))
        result = await finish(proc)
    assert result.code == 1
    (line,) = lines(result.err)
    assert line.startswith(f"error: cannot serve the sandbox on 127.0.0.1:{port}: ")
