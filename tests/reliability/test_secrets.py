"""Secrets stay secret: the API key, registry logins and instance keys appear nowhere.

With DEBUG logging on, across provisions with retries, lost answers and failures, none of them
appears in a log record, an exception, a repr, an event, the CLI's output, or anything sent to
the machine. (A changed host key on a later ``run()`` is refused: see
``tests/integration/test_provisioning.py``.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.reliability._harness import pick_offers
from vastai_async import (
    ConfigError,
    CreateOutcomeUnknownError,
    InvalidRequestError,
    ProvisioningError,
    VastAIService,
)
from vastai_async.config import get_vastai_config
from vastai_async.events import Event, InstanceCreated
from vastai_async.models import CreateInstanceRequest
from vastai_async.sandbox import HTTPFault, LifecycleFault, Sandbox

pytestmark = pytest.mark.vastai_sandbox(offers=16, time_scale=0.02, seed=41)

REGISTRY_PASSWORD = "registry-pass-9f8e7d6c5b4a"  # a test value


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every record's message, arguments, extras and formatted traceback."""
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.__dict__))
    return "\n".join(parts)


async def test_api_key_and_instance_keys_appear_nowhere_across_a_faulty_provision(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vastai_async")
    sb = vastai_sandbox
    offers = pick_offers(await vastai_service.search_offers(), 3)
    sb.set_lifecycle_fault(offers[0].id, LifecycleFault(oci_error=True))
    sb.set_boot_latency(offers[0].id, 5.0)
    sb.add_fault(HTTPFault(kind="lost_answer", route="PUT /api/v0/asks/{id}/", times=1))
    sb.add_fault(HTTPFault(kind="rate_limit", times=3, probability=0.5))
    sb.add_fault(HTTPFault(kind="status", status=503, times=3, probability=0.5))
    sb.add_fault(HTTPFault(kind="status", status=500, route="DELETE /api/v0/instances/", times=1))
    events: list[Event] = []
    instance_keys: list[str] = []

    def on_event(event: Event) -> None:
        events.append(event)
        if isinstance(event, InstanceCreated):
            instance_keys.append(sb.instance(event.instance_id).api_key)

    rental = await vastai_service.provision_instance(
        job_id="secret", offers=offers, fan_out=3, on_event=on_event, extra_env={"A": "1"}
    )
    texts = [log_text(caplog), repr(rental), repr(rental.info), repr(vastai_service)]
    texts += [repr(vastai_service.config), rental.ssh_command()]
    texts += [repr(e) + str(e) for e in events]
    # A failing provision's error too.
    for offer in offers:
        sb.set_lifecycle_fault(offer.id, LifecycleFault(oci_error=True))
    with pytest.raises(ProvisioningError) as info:
        await vastai_service.provision_instance(job_id="secret2", offers=offers[1:], fan_out=2)
    texts += [str(info.value), repr(info.value), log_text(caplog)]
    await rental.terminate()

    assert any(r.levelno == logging.DEBUG for r in caplog.records), "DEBUG logs were captured"
    assert any(r.status == 429 for r in sb.requests), "the provision met retries"
    secrets = [sb.api_key, *instance_keys]
    assert len(instance_keys) >= 2
    for text in texts:
        for secret in secrets:
            assert secret not in text
    # Nothing sent to a machine carries the account key: create bodies (env, onstart, label).
    creates = [r for r in sb.requests if r.route == "PUT /api/v0/asks/{id}/"]
    assert creates
    for request in creates:
        assert sb.api_key not in request.body
    # And the log origin never saw credentials.
    assert all("Authorization" not in r.headers for r in sb.log_requests)


async def test_registry_login_never_appears_in_logs_errors_or_reprs(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="vastai_async")
    offer = pick_offers(await vastai_service.search_offers(), 1)[0]
    request = CreateInstanceRequest(
        image="private/img:1",
        image_login=f"-u bob -p {REGISTRY_PASSWORD} registry.example.com",
        disk_gb=10,
        label="vastai-async:t:login:r1",
    )
    vastai_sandbox.add_fault(HTTPFault(kind="lost_answer", route="PUT /api/v0/asks/{id}/"))
    with pytest.raises(CreateOutcomeUnknownError) as info:
        await vastai_service.client.create_instance(offer.id, request)
    texts = [str(info.value), repr(info.value), repr(request), log_text(caplog)]
    for text in texts:
        assert REGISTRY_PASSWORD not in text
        assert vastai_sandbox.api_key not in text
    await vastai_service.client.destroy_instances(sorted(vastai_sandbox.alive_instance_ids()))


async def test_cli_output_never_shows_the_api_key(
    vastai_sandbox: Sandbox, tmp_path: Path, vastai_service: VastAIService
) -> None:
    offers = pick_offers(await vastai_service.search_offers(), 1)
    rental = await vastai_service.provision_instance(job_id="cli", offers=offers, fan_out=1)
    base = [
        sys.executable,
        "-m",
        "vastai_async",
        "--debug",
        "--sandbox-url",
        vastai_sandbox.url,
        "--sandbox-key",
        vastai_sandbox.api_key,
        "--sandbox-time-scale",
        "0.02",
    ]
    env = {**os.environ, "VASTAI_STATE_DIR": str(tmp_path / "state")}
    outputs = []
    for args in (["list"], ["show", str(rental.instance_id)], ["show", "1"]):
        proc = await asyncio.create_subprocess_exec(
            *base,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        outputs.append((args, proc.returncode, out.decode() + err.decode()))
    await rental.terminate()
    assert outputs[0][1] == 0, outputs[0]
    assert outputs[2][1] != 0, "showing a missing instance fails"
    for args, _, text in outputs:
        assert vastai_sandbox.api_key not in text, args


def test_a_key_file_readable_by_others_is_refused_without_printing_it(
    vastai_ssh_key: Path,
) -> None:
    vastai_ssh_key.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        get_vastai_config(api_key="k" * 32, ssh_key_path=vastai_ssh_key)
    message = str(info.value)
    assert "VASTAI_SSH_KEY_PATH" in message
    assert "ALLOW_INSECURE_KEY" in message
    assert vastai_ssh_key.read_text().splitlines()[1] not in message


@pytest.mark.parametrize(
    ("where", "spell"),
    [
        ("env_value", lambda k: f"Bearer {k}"),
        ("env_value", lambda k: f"{k}\n"),
        ("env_value", lambda k: f"https://x.example/?api_key={k}"),
        ("env_value", lambda k: "https://x.example/?t=" + quote(k, safe="")),
        ("env_key", lambda k: f"KEY_{k}"),
        ("onstart", lambda k: f"curl -H 'Authorization: Bearer {k}' x"),
    ],
)
async def test_the_api_key_in_any_spelling_is_refused_before_anything_is_rented(
    vastai_service: VastAIService, vastai_sandbox: Sandbox, where: str, spell: object
) -> None:
    key = vastai_sandbox.api_key
    text = spell(key)  # type: ignore[operator]
    kwargs: dict[str, object] = {}
    if where == "env_value":
        kwargs["extra_env"] = {"AUTH": text}
    elif where == "env_key":
        kwargs["extra_env"] = {text: "1"}
    else:
        kwargs["onstart_cmd"] = text
    with pytest.raises(InvalidRequestError) as info:
        await vastai_service.provision_instance(job_id="leak", fan_out=1, **kwargs)
    assert key not in str(info.value)
    assert vastai_sandbox.request_counts()["PUT /api/v0/asks/{id}/"] == 0
