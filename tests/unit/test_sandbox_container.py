"""The sandbox container's pure parts: port requests, host ports, the nvidia-smi shim's output."""

# ruff: noqa: S604  (``shell=`` names the sandbox's shell mode, not subprocess's shell=True)

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vastai_async.sandbox import container as container_mod
from vastai_async.sandbox.container import Container, allocate_port, port_specs
from vastai_async.sandbox.nvidia_smi import gpu_data, render

GPUS = gpu_data(instance_id=7, gpu_name="RTX 4090", num_gpus=2, memory_mib=24564)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"-p 8080:8080": "1"}, ["8080/tcp"]),
        ({"-p 53:53/udp": "1", "-p 8080:8080": "1"}, ["53/udp", "8080/tcp"]),
        ({"-p 1111:1111 -p 8082:8082/udp -e X=1": "1"}, ["1111/tcp", "8082/udp"]),
        ({"-p 9000:8000": "1"}, ["8000/tcp"]),  # the container side counts
        ({"-p8000:8000": "1"}, ["8000/tcp"]),
        ({"-p 70000:70000": "1"}, ["70000/tcp"]),  # Vast's identity-port form
        ({"FOO": "-p 1:1", "-e A=1": "1"}, []),  # variables are not port requests
        ({"-p 80:80/sctp": "1", "-p x:y": "1", "-p 'unbalanced": "1"}, []),
        ({"-p 8080:8080": "1", "-p 8080:8080/tcp": "1"}, ["8080/tcp"]),
    ],
)
def test_port_specs_reads_docker_p_options_from_env_keys(
    env: dict[str, str], expected: list[str]
) -> None:
    assert port_specs(env) == expected


def test_port_specs_stops_at_vast_limit_of_64() -> None:
    env = {f"-p {n}:{n}": "1" for n in range(9000, 9100)}
    assert len(port_specs(env)) == 64


def test_allocated_ports_are_never_handed_out_twice_while_reserved(tmp_path: Path) -> None:
    c = Container(
        instance_id=1,
        workdir=tmp_path / "1",
        shell="real",
        env={f"-p {n}:{n}": "1" for n in range(8000, 8030)},
        gpus=GPUS,
    )
    ports = list(c.ports.values())
    assert len(set(ports)) == 30
    assert all(("tcp", p) in container_mod._RESERVED for p in ports)
    assert c.vast_env()["VAST_TCP_PORT_8000"] == str(c.ports["8000/tcp"])
    others = {allocate_port() for _ in range(50)}
    assert not others & set(ports)
    c.remove()
    assert not any(("tcp", p) in container_mod._RESERVED for p in ports)
    for port in others:
        container_mod._RESERVED.discard(("tcp", port))


def test_environment_keeps_host_secrets_out_and_the_marker_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VASTAI_API_KEY", "secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    c = Container(
        instance_id=5,
        workdir=tmp_path / "5",
        shell="real",
        env={"JOB": "x", "VASTAI_SANDBOX_CONTAINER": "forged"},
        gpus=GPUS,
    )
    env = c.env()
    assert "secret" not in env.values()
    assert env["JOB"] == "x"
    assert env["VASTAI_SANDBOX_CONTAINER"] == c.token  # the caller cannot hide a process
    assert env["PATH"].startswith(str(c.bindir))
    assert env["HOME"] == str(c.workdir)


def test_an_unknown_shell_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shell"):
        Container(instance_id=1, workdir=tmp_path, shell="zsh", env={}, gpus=GPUS)  # type: ignore[arg-type]


def test_nvidia_smi_list_and_csv_formats() -> None:
    out, err, status = render(GPUS, ["-L"])
    assert status == 0
    assert err == ""
    lines = out.splitlines()
    assert [line.split(" (UUID: ")[0] for line in lines] == ["GPU 0: RTX 4090", "GPU 1: RTX 4090"]
    assert (
        lines
        == render(gpu_data(instance_id=7, gpu_name="RTX 4090", num_gpus=2), ["-L"])[0].splitlines()
    )  # UUIDs are fixed per instance
    out, _, _ = render(
        GPUS, ["--query-gpu=index,name,memory.total,utilization.gpu", "--format=csv"]
    )
    assert out.splitlines() == [
        "index, name, memory.total [MiB], utilization.gpu [%]",
        "0, RTX 4090, 24564 MiB, 0 %",
        "1, RTX 4090, 24564 MiB, 0 %",
    ]
    out, _, _ = render(
        GPUS, ["--query-gpu", "memory.free", "--format", "csv,noheader,nounits", "-i", "1"]
    )
    assert out == "24564\n"


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--query-gpu=bogus", "--format=csv"], 2, 'Field "bogus" is not a valid field'),
        (["--query-gpu=name"], 2, "--format=csv is required"),
        (["--format=csv"], 2, "--format requires --query-gpu"),
        (["-i", "9", "-L"], 6, "No devices were found"),
        (["--frobnicate"], 2, "Invalid combination"),
    ],
)
def test_nvidia_smi_refuses_what_nvidia_smi_refuses(
    argv: list[str], status: int, message: str
) -> None:
    out, err, code = render(GPUS, argv)
    assert (out, code) == ("", status)
    assert message in err


def test_nvidia_smi_shim_runs_as_a_script(tmp_path: Path) -> None:
    """The shim runs the module as a plain script, so it imports nothing but the stdlib."""
    c = Container(instance_id=3, workdir=tmp_path / "3", shell="real", env={}, gpus=GPUS)
    c.create()
    done = subprocess.run(  # noqa: S603  (our own shim, fixed arguments)
        [str(c.bindir / "nvidia-smi")], capture_output=True, text=True, check=True, timeout=30
    )
    assert "NVIDIA-SMI" in done.stdout
    assert done.stdout.count("RTX 4090") == 2
    assert "No running processes found" in done.stdout
    name = subprocess.run(  # noqa: S603
        [str(c.bindir / "hostname")], capture_output=True, text=True, check=True, timeout=30
    )
    assert name.stdout == "C.3\n"
    assert sys.executable in (c.bindir / "nvidia-smi").read_text()
    c.remove()
    assert not c.workdir.exists()
    assert not c.bindir.exists()
