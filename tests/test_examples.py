"""Every example in ``examples/`` runs against a sandbox, prints what it promises, and leaves
nothing billing (except ``rent_instance.py``, which keeps its machine on purpose).

Scripts run as subprocesses (``asyncio`` ones, so the in-process sandbox keeps serving), pointed at
the fixture's sandbox the three ways a user can: ``VASTAI_SANDBOX_URL``/``KEY``/``TIME_SCALE``,
``--sandbox`` with a recorded sandbox (``sandboxes/default.json``), and plain ``VASTAI_*``
settings in ``.env.local.vastai`` as for a real account.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from vastai_async import VastAIService
from vastai_async.sandbox import Sandbox
from vastai_async.sandbox_link import SandboxRecord, write_sandbox_record

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CREATE_ROUTE = "PUT /api/v0/asks/{id}/"
#: Wall seconds an example may take before the test gives up on it.
EXAMPLE_DEADLINE_S = 60.0
#: Running examples must not leave ``__pycache__`` folders in the source tree.
NO_BYTECODE = {"PYTHONDONTWRITEBYTECODE": "1"}

pytestmark = pytest.mark.vastai_sandbox(offers=20, time_scale=0.02)


@attrs.frozen
class Finished:
    returncode: int
    stdout: str
    stderr: str


async def run_example(script: str, *args: str, env: dict[str, str]) -> Finished:
    """Run ``examples/<script>`` with warnings as errors; the sandbox keeps serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        str(EXAMPLES / script),
        *args,
        env={**env, **NO_BYTECODE},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(EXAMPLE_DEADLINE_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Finished(proc.returncode, out.decode(), err.decode())


def env_for(sandbox: Sandbox) -> dict[str, str]:
    """The environment naming the sandbox by variables (``_common.example_config``)."""
    return {
        **os.environ,
        "VASTAI_SANDBOX_URL": sandbox.url,
        "VASTAI_SANDBOX_KEY": sandbox.api_key,
        "VASTAI_SANDBOX_TIME_SCALE": str(sandbox.time_scale),
    }


def record(sandbox: Sandbox) -> dict[str, str]:
    """Record the sandbox as ``vastai-async sandbox`` does, for ``--sandbox``; the environment."""
    write_sandbox_record(
        SandboxRecord(url=sandbox.url, api_key=sandbox.api_key, time_scale=sandbox.time_scale)
    )
    return dict(os.environ)


def write_env_file(**settings: str) -> None:
    """A ``.env.local.vastai`` in the working folder, as a real user keeps their settings."""
    Path(".env.local.vastai").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))


def created_bodies(sandbox: Sandbox) -> list[dict[str, object]]:
    """The JSON bodies of every instance-create request the sandbox received."""
    return [json.loads(r.body) for r in sandbox.requests if r.route == CREATE_ROUTE]


def ok(result: Finished) -> Finished:
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


async def test_quickstart_rents_with_the_original_arguments_and_terminates(
    vastai_sandbox: Sandbox,
) -> None:
    result = ok(await run_example("quickstart.py", env=env_for(vastai_sandbox)))

    assert "renting" in result.stdout
    assert "is up: ssh -i " in result.stdout
    assert "terminated" in result.stdout
    [body] = created_bodies(vastai_sandbox)
    assert body["image"] == "vastai/base-image:@vastai-automatic-tag"
    assert body["onstart"] == "entrypoint.sh"
    env = body["env"]
    assert isinstance(env, dict)
    assert env["PROVISIONING_SCRIPT"] == "https://example.com/script.sh"
    assert "vastai-async:" in str(body["label"])
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_quickstart_runs_from_real_account_settings_in_env_file(
    vastai_sandbox: Sandbox, vastai_ssh_key: Path
) -> None:
    """The real-service path: only ``VASTAI_*`` settings in ``.env.local.vastai`` (cwd)."""
    write_env_file(
        VASTAI_API_KEY=vastai_sandbox.api_key,
        VASTAI_API_BASE_URL=vastai_sandbox.url,
        VASTAI_SSH_KEY_PATH=str(vastai_ssh_key),
    )
    result = ok(await run_example("quickstart.py", env=dict(os.environ)))

    assert "terminated" in result.stdout
    assert len(created_bodies(vastai_sandbox)) == 1
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_example_without_credentials_fails_in_one_line_naming_the_variable() -> None:
    result = await run_example("quickstart.py", env=dict(os.environ))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert "VASTAI_API_KEY" in result.stderr
    assert result.stdout == ""


async def test_race_offers_prints_progress_runs_the_command_and_tears_down(
    vastai_sandbox: Sandbox,
) -> None:
    """Also the ``--sandbox`` path: the sandbox recorded in the state directory."""
    result = ok(
        await run_example(
            "race_offers.py", "--sandbox", "--fan-out", "3", env=record(vastai_sandbox)
        )
    )

    out = result.stdout
    assert "race " in out
    assert out.count(" created") == 3
    assert "WINNER after" in out
    assert "$ nvidia-smi -L\nGPU 0: " in out
    assert "destroyed" in out
    assert "race spend" in out
    creates = [r.status for r in vastai_sandbox.requests if r.route == CREATE_ROUTE]
    # A create the sandbox's limiter answered 429 is retried by the session (it did nothing).
    assert len([s for s in creates if s != 429]) == 3, (creates, out)
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_run_job_round_trips_a_file_and_tears_down(vastai_sandbox: Sandbox) -> None:
    result = ok(await run_example("run_job.py", env=env_for(vastai_sandbox)))

    out = result.stdout
    assert "$ nvidia-smi -L\nGPU 0: " in out
    assert "remote input.txt: hello from run_job.py" in out
    assert "identical: True" in out
    assert out.rstrip().endswith("destroyed")
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_rent_instance_keeps_the_machine_with_a_readable_label(
    vastai_sandbox: Sandbox, vastai_service: VastAIService
) -> None:
    offer = (await vastai_service.search_offers(max_usd_per_hour=4.5, limit=1))[0]
    args = ["--sandbox", "--offer", str(offer.id), "--env", "FOO=bar=baz", "--env", "MODE=x"]
    args += ["--port", "8080", "--port", "53/udp", "--onstart", "echo hi", "--disk", "20"]
    args += ["--label", "my notebook"]

    result = ok(await run_example("rent_instance.py", *args, env=record(vastai_sandbox)))

    [instance] = vastai_sandbox.instances()
    instance_id = instance["id"]
    try:
        assert vastai_sandbox.alive_instance_ids() == {instance_id}
        assert instance["label"] == "vastai-async:kept:rent:my notebook"
        assert instance["onstart"] == "echo hi"
        env = dict(instance["extra_env"])
        assert env["FOO"] == "bar=baz"
        assert env["MODE"] == "x"
        assert "-p 8080:8080" in env
        assert "-p 53:53/udp" in env
        ssh_line = result.stdout.strip().splitlines()[-1]
        assert ssh_line.startswith("ssh -i ")
        assert "StrictHostKeyChecking=yes" in ssh_line
        assert f"instance {instance_id} kept running" in result.stdout
    finally:
        await vastai_service.terminate_instance(instance_id)
    assert vastai_sandbox.alive_instance_ids() == set()


def test_pytest_example_passes_with_its_own_config() -> None:
    """``examples/pytest_with_sandbox`` is found with its own ``pytest.ini`` (not ours)."""
    folder = EXAMPLES / "pytest_with_sandbox"
    result = subprocess.run(  # noqa: S603  (our own interpreter, fixed arguments)
        [sys.executable, "-m", "pytest", str(folder), "-p", "no:cacheprovider"],
        env={**os.environ, **NO_BYTECODE},
        capture_output=True,
        text=True,
        timeout=EXAMPLE_DEADLINE_S,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"rootdir: {folder}" in result.stdout
    assert "configfile: pytest.ini" in result.stdout
    assert "3 passed" in result.stdout
