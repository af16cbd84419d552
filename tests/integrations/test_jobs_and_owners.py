"""Job specs survive a queue round trip; worker owner ids are label-safe, name their deployment."""

from __future__ import annotations

import json
import re

import pytest

from vastai_async.errors import InvalidRequestError
from vastai_async.integrations import JobSpec
from vastai_async.labels import validate_id

arq_module = pytest.importorskip("vastai_async.integrations.arq", reason="arq is not installed")


def test_job_spec_payload_round_trips_through_json() -> None:
    spec = JobSpec(
        job_id="render-0042",
        commands=["nvidia-smi -L", "render 42"],
        image="pytorch/pytorch:latest",
        gpus=["4090", "A100"],
        min_vram_gb=0,
        max_usd_per_hour=1.5,
        max_spend_usd=2.0,
        fan_out=3,
        timeout_s=600,
        command_timeout_s=300,
        check=False,
        extra_env={"FRAME": "42"},
        uploads=[("scene.blend", "/root/scene.blend")],
        downloads=[("/root/out.png", "out.png")],
    )
    assert JobSpec.from_payload(json.loads(json.dumps(spec.to_payload()))) == spec


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"job_id": "a", "commands": ["true"], "colour": "red"}, "unknown job fields: colour"),
        ({"job_id": "has:colon", "commands": ["true"]}, "job_id"),
        ({"job_id": "a", "commands": [""]}, "commands"),
        ({"job_id": "a", "commands": ["true"], "fan_out": 0}, "fan_out"),
        ({"job_id": "a", "commands": ["true"], "timeout_s": -1}, "timeout_s"),
        ({"job_id": "a", "commands": ["true"], "min_vram_gb": -1}, "min_vram_gb"),
        ({"commands": ["true"]}, "invalid job payload"),
    ],
)
def test_bad_job_payloads_are_refused_naming_the_field(
    payload: dict[str, object], fragment: str
) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(fragment)):
        JobSpec.from_payload(payload)


def test_worker_owner_ids_are_unique_label_safe_and_name_their_deployment() -> None:
    owners = {arq_module.worker_owner_id("render") for _ in range(50)}
    assert len(owners) == 50
    for owner in owners:
        assert validate_id("owner", owner) == owner
        assert len(owner) <= 64
        assert arq_module.deployment_of(owner) == "render"
    long = arq_module.worker_owner_id("d" * 24)
    assert len(long) <= 64
    assert arq_module.deployment_of(long) == "d" * 24


@pytest.mark.parametrize(
    ("owner", "deployment"),
    [
        ("render-host-12-wabcdef", "render"),
        ("render.eu-host-12-wabcdef", "render.eu"),
        ("render-my-host-12-wabcdef", "render"),  # the first dash ends the deployment
        ("render-host-12-abcdef", None),  # a plain SDK owner on a host named "render-host"
        ("myhost-12-abcdef", None),
        ("kept", None),
        ("", None),
    ],
)
def test_deployment_of_names_only_worker_shaped_owner_ids(
    owner: str, deployment: str | None
) -> None:
    assert arq_module.deployment_of(owner) == deployment


@pytest.mark.parametrize(
    "kwargs",
    [
        {"deployment": "prod-eu"},  # a dash would make "prod" claim "prod-eu"'s workers
        {"deployment": ""},
        {"deployment": "x" * 25},
        {"deployment": "ok", "heartbeat_ttl_s": 10, "heartbeat_interval_s": 6},
        {"deployment": "ok", "heartbeat_ttl_s": 0},
        {"deployment": "ok", "reap_interval_s": 0},
        {"deployment": "ok", "orphan_grace_s": -1.0},
        {"deployment": "ok", "reap_interval_s": True},
    ],
)
def test_worker_options_refuse_unsafe_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        arq_module.WorkerOptions(**kwargs)


def test_worker_settings_wire_the_job_and_the_hooks_and_pass_overrides() -> None:
    settings = arq_module.worker_settings(
        arq_module.WorkerOptions(deployment="render"), max_jobs=3, queue_name="q"
    )
    [function] = settings["functions"]
    assert function.name == arq_module.FUNCTION_NAME
    assert callable(settings["on_startup"])
    assert callable(settings["on_shutdown"])
    assert (settings["max_jobs"], settings["queue_name"]) == (3, "q")
