"""The sandbox as a test bed: rentals run real commands, the onstart script, and serve ports."""

# ruff: noqa: S604  (``shell=`` names the sandbox's shell mode, not subprocess's shell=True)

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncssh
import pytest

from tests.test_examples import env_for, ok, run_example
from vastai_async import Rental, SSHTimeoutError, VastAIError, VastAIService
from vastai_async.sandbox import Sandbox

pytestmark = pytest.mark.vastai_sandbox(offers=12, time_scale=0.02, seed=16)

#: Hang guards, not speed bounds: a saturated machine took over 10 s to close a channel.
HANG_S = 60.0


async def _rent(service: VastAIService, sb: Sandbox, job: str, **kwargs: object) -> Rental:
    offer = (await service.search_offers())[0]
    sb.set_boot_latency(offer.id, 10.0)  # 0.2 s of wall time
    return await service.provision_instance(job_id=job, offers=[offer], fan_out=1, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def rental(vastai_service: VastAIService, vastai_sandbox: Sandbox) -> AsyncIterator[Rental]:
    async with await _rent(vastai_service, vastai_sandbox, "shell", extra_env={"JOB": "j1"}) as r:
        yield r


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _gone(pid: int) -> bool:
    for _ in range(1000):  # the kill is asynchronous on the server's side of a closed channel
        if not _alive(pid):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_python_runs_and_prints_42(rental: Rental) -> None:
    result = await rental.run("python3 -c 'print(6*7)'", check=True)
    assert result.stdout == "42\n"


async def test_shell_lists_pipes_and_keeps_stdout_stderr_and_exit_status_apart(
    rental: Rental,
) -> None:
    assert (await rental.run("echo a && echo b | tr a-z A-Z")).stdout == "a\nB\n"
    result = await rental.run("echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_status) == ("out\n", "err\n", 3)
    assert (await rental.run("false || echo fallback")).stdout == "fallback\n"
    assert (await rental.run("no-such-command-xyz")).exit_status == 127


async def test_sftp_and_commands_share_the_instance_folder(
    rental: Rental, vastai_sandbox: Sandbox, tmp_path: Path
) -> None:
    """A file written over SFTP is read by a command, and a command's file is read over SFTP."""
    local = tmp_path / "in.txt"
    local.write_text("hello gpu\n")
    await rental.put(local, "in.txt")
    await rental.run("tr a-z A-Z < in.txt > out.txt && mkdir -p res && cp out.txt res/", check=True)
    await rental.get("res/out.txt", tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "HELLO GPU\n"
    home = vastai_sandbox.instance(rental.instance_id).workdir
    assert (await rental.run("pwd", check=True)).stdout == f"{home}\n"
    assert (await rental.run("echo $HOME", check=True)).stdout == f"{home}\n"


async def test_environment_is_what_vast_sets_and_nothing_of_the_host(
    rental: Rental, vastai_sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VASTAI_API_KEY", "host-secret-must-not-leak")
    env = dict(
        line.split("=", 1) for line in (await rental.run("env", check=True)).stdout.splitlines()
    )
    iid = rental.instance_id
    assert env["VAST_CONTAINERLABEL"] == f"C.{iid}"
    assert env["CONTAINER_ID"] == str(iid)
    assert env["PUBLIC_IPADDR"] == "127.0.0.1"
    assert env["JOB"] == "j1"
    server = vastai_sandbox.ssh_server(iid)
    assert env["VAST_TCP_PORT_22"] == str(getattr(server, "direct_port", None))
    assert env["GPU_COUNT"] == str(vastai_sandbox.instance(iid).offer["num_gpus"])
    assert "VASTAI_API_KEY" not in env
    assert (await rental.run("hostname", check=True)).stdout == f"C.{iid}\n"
    assert "host-secret-must-not-leak" not in "".join(env.values())


async def test_nvidia_smi_prints_the_instance_gpus_in_its_formats(
    rental: Rental, vastai_sandbox: Sandbox
) -> None:
    offer = vastai_sandbox.instance(rental.instance_id).offer
    n, name = int(offer["num_gpus"]), str(offer["gpu_name"])
    listed = (await rental.run("nvidia-smi -L", check=True)).stdout.splitlines()
    assert [line.split(" (UUID: GPU-")[0] for line in listed] == [
        f"GPU {i}: {name}" for i in range(n)
    ]
    csv = await rental.run(
        "nvidia-smi --query-gpu=index,name,memory.total --format=csv", check=True
    )
    assert csv.stdout.splitlines() == [
        "index, name, memory.total [MiB]",
        *(f"{i}, {name}, {offer['gpu_ram']} MiB" for i in range(n)),
    ]
    bare = await rental.run(
        "nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits", check=True
    )
    assert bare.stdout == f"{offer['gpu_ram']}\n" * n
    table = (await rental.run("nvidia-smi", check=True)).stdout
    assert "Driver Version:" in table
    assert table.count(name[:20]) == n
    bad = await rental.run("nvidia-smi --query-gpu=bogus --format=csv")
    assert bad.exit_status != 0
    assert "bogus" in bad.stderr


async def test_stdin_signals_and_an_interactive_terminal_reach_the_shell(
    rental: Rental, vastai_ssh_key: Path
) -> None:
    ssh = rental.info.ssh
    async with asyncssh.connect(
        ssh.host,
        ssh.port,
        username="root",
        client_keys=[str(vastai_ssh_key)],
        known_hosts=None,
        agent_path=None,
        config=None,
    ) as conn:
        piped = await conn.run("tr a-z A-Z", input="hello stdin\n")
        assert piped.stdout == "HELLO STDIN\n"
        # Not `read x`: a signal landing between `echo` and `read` (a busy machine) would leave
        # dash blocked in read(2) with the trap pending. A loop of short sleeps runs the trap
        # wherever the signal lands.
        trapped = await conn.create_process(
            "trap 'echo got INT; exit 7' INT; echo ready; while :; do sleep 0.05; done"
        )
        assert await asyncio.wait_for(trapped.stdout.readline(), HANG_S) == "ready\n"
        trapped.send_signal("INT")
        done = await asyncio.wait_for(trapped.wait(), HANG_S)
        assert (done.stdout, done.exit_status) == ("got INT\n", 7)
        on_tty = await conn.run("tty; echo $TERM", term_type="xterm")  # as `ssh -t host cmd`
        device, term = str(on_tty.stdout).split()
        assert (device.startswith("/dev/"), term) == (True, "xterm")
        process = await conn.create_process(term_type="xterm")
        process.stdin.write("echo $((6*7)); exit 5\n")
        output = await asyncio.wait_for(process.stdout.read(), HANG_S)
        await process.wait()
        assert "42" in output
        assert process.exit_status == 5


async def test_a_timed_out_command_is_killed_when_its_channel_closes(rental: Rental) -> None:
    with pytest.raises(SSHTimeoutError):
        await rental.run("echo $$ > cmd.pid; exec sleep 300", timeout=1.0)
    pid = int((await rental.run("cat cmd.pid", check=True)).stdout)
    assert await _gone(pid)


async def test_processes_are_killed_when_the_instance_is_destroyed(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    rental = await _rent(vastai_service, vastai_sandbox, "long")
    async with rental:
        started = await rental.run(
            "nohup sleep 300 >/dev/null 2>&1 & echo $!; "
            "setsid sleep 301 </dev/null >/dev/null 2>&1 & echo $!",
            check=True,
        )
        pids = [int(p) for p in started.stdout.split()]
        running = asyncio.create_task(rental.run("echo $$ > run.pid; exec sleep 302"))
        workdir = vastai_sandbox.instance(rental.instance_id).workdir
        assert workdir is not None
        for _ in range(3000):
            if (workdir / "run.pid").exists() and (workdir / "run.pid").read_text():
                break
            await asyncio.sleep(0.01)
        pids.append(int((workdir / "run.pid").read_text()))
        assert all(_alive(pid) for pid in pids)
    # Destroyed: background, escaped (setsid) and in-flight commands are all gone.
    for pid in pids:
        assert await _gone(pid), pid
    # The in-flight command ends with its instance (killed, or its connection dropped).
    with contextlib.suppress(VastAIError):
        assert (await asyncio.wait_for(running, HANG_S)).exit_status != 0
    assert not workdir.exists()
    assert vastai_sandbox.alive_instance_ids() == set()


async def test_stopping_an_instance_kills_its_processes_and_keeps_its_folder(
    rental: Rental, vastai_sandbox: Sandbox
) -> None:
    started = await rental.run("echo kept > data.txt; nohup sleep 300 >/dev/null 2>&1 & echo $!")
    pid = int(started.stdout)
    assert _alive(pid)
    inst = vastai_sandbox.instance(rental.instance_id)
    await vastai_sandbox.cloud.stop(inst)
    assert await _gone(pid)
    assert inst.workdir is not None
    assert (inst.workdir / "data.txt").read_text() == "kept\n"  # the disk survives a stop


async def test_onstart_output_and_failure_appear_in_the_logs(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    script = "echo hello from onstart; python3 -c 'print(6*7)'; echo to-stderr >&2; exit 3"
    async with await _rent(vastai_service, vastai_sandbox, "onstart", onstart_cmd=script) as r:
        log = ""
        for _ in range(500):
            log = await vastai_service.client.request_logs(r.instance_id, poll_interval_s=0.01)
            if "onstart failed" in log:
                break
            await asyncio.sleep(0.02)
    lines = log.splitlines()
    assert "hello from onstart" in lines
    assert "42" in lines
    assert "to-stderr" in lines
    assert any(line.endswith("onstart failed: exit status 3") for line in lines), log


async def test_a_server_started_by_onstart_answers_on_the_mapped_host_port(
    vastai_service: VastAIService, vastai_sandbox: Sandbox
) -> None:
    script = (
        "mkdir -p site && echo served-by-the-instance > site/index.html && "
        "exec python3 -m http.server $VAST_TCP_PORT_8080 --bind 127.0.0.1 --directory site"
    )
    async with await _rent(
        vastai_service, vastai_sandbox, "web", ports=["8080/tcp"], onstart_cmd=script
    ) as rental:
        instance = await vastai_service.client.show_instance(rental.instance_id)
        assert instance.ports is not None
        (host_port,) = instance.ports["8080/tcp"]
        raw = next(i for i in vastai_sandbox.instances() if i["id"] == rental.instance_id)
        assert raw["ports"]["8080/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": str(host_port)}]
        env = (await rental.run("echo $VAST_TCP_PORT_8080", check=True)).stdout
        assert env == f"{host_port}\n"
        body = ""
        async with aiohttp.ClientSession() as http:
            for _ in range(1500):  # until the server has started (fast; generous under load)
                try:
                    async with http.get(f"http://127.0.0.1:{host_port}/") as resp:
                        body = await resp.text()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.02)
        assert body == "served-by-the-instance\n"
    with pytest.raises(ConnectionRefusedError):  # the server died with its instance
        await asyncio.open_connection("127.0.0.1", host_port)


async def test_nothing_survives_the_sandbox(tmp_path: Path) -> None:
    """Closing the sandbox kills what its instances started, even never destroyed."""
    async with Sandbox(seed=3, offers=4, time_scale=0.01) as sb:
        headers = {"Authorization": f"Bearer {sb.api_key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(f"{sb.url}/api/v0/bundles/", json={}) as r:
                offer = (await r.json())["offers"][0]
            sb.set_boot_latency(offer["id"], 5.0)
            onstart = "sleep 303 & echo $! > bg.pid; setsid sleep 304 & echo $! >> bg.pid; wait"
            body = {"image": "ubuntu", "onstart": onstart}
            async with http.put(f"{sb.url}/api/v0/asks/{offer['id']}/", json=body) as r:
                iid = (await r.json())["new_contract"]
        await sb.wait_status(iid, "running")
        pid_file = sb.instance(iid).workdir / "bg.pid"  # type: ignore[operator]
        for _ in range(3000):
            if pid_file.exists() and len(pid_file.read_text().split()) == 2:
                break
            await asyncio.sleep(0.01)
        pids = [int(p) for p in pid_file.read_text().split()]
        assert all(_alive(pid) for pid in pids)
    for pid in pids:
        assert await _gone(pid), pid


@pytest.mark.vastai_sandbox(offers=12, time_scale=0.02, seed=16, shell="emulated")
async def test_emulated_shell_mode_runs_builtins_only(rental: Rental) -> None:
    assert (await rental.run("echo a && echo b")).stdout == "a && echo b\n"
    missing = await rental.run("python3 -c 'print(1)'")
    assert missing.exit_status == 127
    assert (await rental.run("nvidia-smi -L")).stdout.startswith("GPU 0: ")


def test_an_unknown_shell_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="shell"):
        Sandbox(shell="bash")  # type: ignore[arg-type]


async def test_run_script_example_runs_a_real_script_and_fetches_its_result(
    vastai_sandbox: Sandbox,
) -> None:
    result = ok(
        await run_example("run_script.py", "--numbers", "3", "4", env=env_for(vastai_sandbox))
    )
    out = result.stdout
    assert "sum of squares 25" in out  # printed by python3 on the instance
    assert "fetched result: sum_of_squares=25" in out  # read back over SFTP
    assert "  GPU: " in out
    assert out.rstrip().endswith("destroyed")
    assert vastai_sandbox.alive_instance_ids() == set()


def _docs_block(heading: str) -> str:
    """The first Python block after ``heading`` in docs/sandbox.md."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "sandbox.md").read_text()
    after = text.split(f"\n{heading}\n", 1)[1]
    return after.split("```python\n", 1)[1].split("\n```", 1)[0]


async def test_the_end_to_end_example_of_the_docs_passes(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, tmp_path: Path
) -> None:
    namespace: dict[str, object] = {}
    exec(compile(_docs_block("## Testing a real job end to end"), "sandbox.md", "exec"), namespace)  # noqa: S102
    test = namespace["test_my_job_and_my_server"]
    await test(vastai_service, vastai_sandbox, tmp_path)  # type: ignore[operator]


async def test_a_shell_trap_works_even_when_the_sandbox_was_started_ignoring_sigint(
    rental: Rental,
) -> None:
    """A container's processes start with default signals, whatever the sandbox inherited.

    A process started as a background job (``cmd &``) ignores SIGINT, and a shell cannot trap a
    signal ignored at its start: the interrupt test hung under ``saturate ... &`` until fixed.
    """
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job has it
    try:
        result = await rental.run("trap 'echo trapped' INT; kill -INT $$; echo after")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.stdout == "trapped\nafter\n"
