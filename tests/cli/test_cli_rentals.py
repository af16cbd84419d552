"""Every sandbox-backed command, run as a child process against the fixture sandbox."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shlex
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.cli._runner import lines, vast_cli
from vastai_async.models import CreateInstanceRequest
from vastai_async.query import OfferQuery
from vastai_async.sandbox import Sandbox
from vastai_async.sandbox_link import sandbox_config
from vastai_async.service import VastAIService


def _quick_boot(rng: random.Random) -> float:
    """Simulated boot seconds: short, so each race takes a fraction of a wall second."""
    return rng.uniform(3.0, 12.0)


pytestmark = pytest.mark.vastai_sandbox(
    offers=30, time_scale=0.02, seed=3, boot_distribution=_quick_boot
)


@pytest_asyncio.fixture(loop_scope="function")
async def same_state_service(vastai_sandbox: Sandbox) -> AsyncIterator[VastAIService]:
    """An in-test service with the CLI's own sandbox config: same throwaway key, same pins.

    Instances it creates can be logged into by the child ``vastai-async`` processes, which find
    the key and the pinned host keys in the same ``VASTAI_STATE_DIR``.
    """
    config = sandbox_config(
        vastai_sandbox.url, vastai_sandbox.api_key, time_scale=vastai_sandbox.time_scale
    )
    async with VastAIService(config=config) as service:
        yield service


async def test_config_shows_the_sandbox_settings_and_hides_the_key(
    vastai_sandbox: Sandbox,
) -> None:
    as_json, as_text = await asyncio.gather(
        vast_cli("config", "--json", sandbox=vastai_sandbox),
        vast_cli("config", sandbox=vastai_sandbox),
    )
    assert as_json.code == 0, as_json.err
    data = json.loads(as_json.out)
    assert data["api_base_url"] == vastai_sandbox.url
    assert data["api_key"] == "<set>"
    assert data["state_dir"] == os.environ["VASTAI_STATE_DIR"]
    assert as_text.code == 0, as_text.err
    assert ["api_base_url", vastai_sandbox.url] in [line.split() for line in lines(as_text.out)]
    for result in (as_json, as_text):
        assert vastai_sandbox.api_key not in result.out + result.err


async def test_search_prints_a_cheapest_first_table_and_json_for_the_official_query(
    vastai_sandbox: Sandbox, same_state_service: VastAIService
) -> None:
    text = "num_gpus=2 reliability>0.95"
    table, as_json = await asyncio.gather(
        vast_cli("search", "--limit", "4", sandbox=vastai_sandbox),
        vast_cli("search", "--json", "--query", text, "--limit", "50", sandbox=vastai_sandbox),
    )
    assert table.code == 0, table.err
    assert "the 4 cheapest offers (--limit 4 reached; there may be more)" in table.out
    assert "$/h" in table.out
    cheapest = await same_state_service.search_offers(limit=4)
    positions = [table.out.index(str(offer.id)) for offer in cheapest]
    assert positions == sorted(positions)

    assert as_json.code == 0, as_json.err
    offers = json.loads(as_json.out)
    assert offers, "the seeded market has 2-GPU offers above 0.95 reliability"
    assert all(o["num_gpus"] == 2 and o["reliability"] > 0.95 for o in offers)
    prices = [o["dph_total"] for o in offers]
    assert prices == sorted(prices)
    query = OfferQuery.from_config(same_state_service.config).with_cli_query(text)
    expected = await same_state_service.search_offers(query=query, limit=50)
    assert [o["id"] for o in offers] == [o.id for o in expected]


async def test_provision_prints_winner_losers_cost_plain_progress_and_json(
    vastai_sandbox: Sandbox,
) -> None:
    """Not a terminal: plain progress lines, no escape codes; losers destroyed; --no-keep too."""
    result, as_json, not_kept = await asyncio.gather(
        vast_cli("provision", "--job-id", "cli-1", "--fan-out", "3", sandbox=vastai_sandbox),
        vast_cli(
            "provision",
            "--job-id",
            "cli-2",
            "--fan-out",
            "2",
            "--no-keep",
            "--json",
            sandbox=vastai_sandbox,
        ),
        vast_cli(
            "provision", "--job-id", "cli-3", "--fan-out", "1", "--no-keep", sandbox=vastai_sandbox
        ),
    )
    # --no-keep: the winner is destroyed, so no ssh line is offered for it.
    assert not_kept.code == 0, not_kept.err
    assert "ssh " not in not_kept.out
    assert lines(not_kept.out)[-1].startswith("destroyed instance ")
    assert result.code == 0, result.err
    out = lines(result.out)
    assert out[0].startswith("winner: instance ")
    winner = int(out[0].split()[2])
    assert "the other candidates cost " in out[1]
    assert "$0.0000" not in out[1]
    assert out[2].startswith("kept running: ssh ")
    assert "\x1b[" not in result.err
    assert sum("created instance" in line for line in lines(result.err)) == 3
    assert f"instance {winner}: SSH login proven" in result.err

    assert as_json.code == 0, as_json.err
    data = json.loads(as_json.out)
    assert data["job_id"] == "cli-2"
    assert data["kept"] is False
    assert data["losers_estimated_usd"] >= 0
    assert data["ssh_command"].startswith("ssh ")
    assert data["instance_id"] in {e["instance_id"] for e in vastai_sandbox.ledger()}

    # Only the kept winner of cli-1 is left: every loser and the --no-keep winner are gone.
    assert vastai_sandbox.alive_instance_ids() == {winner}
    (inst,) = vastai_sandbox.instances()
    assert inst["label"] == "vastai-async:kept:cli-1"


async def test_rent_keeps_the_label_readable_and_ssh_run_logs_show_destroy_work(
    vastai_sandbox: Sandbox, same_state_service: VastAIService
) -> None:
    offer = (await same_state_service.search_offers(limit=1))[0]
    rent = await vast_cli(
        "rent",
        "--offer",
        str(offer.id),
        "--label",
        "my box",
        "--env",
        "A=1",
        sandbox=vastai_sandbox,
    )
    assert rent.code == 0, rent.err
    assert "kept running: ssh " in rent.out
    (inst,) = vastai_sandbox.instances()
    instance_id = inst["id"]
    assert inst["label"] == "vastai-async:kept:rent:my box"

    table, show, ssh, run, logs = await asyncio.gather(
        vast_cli("list", sandbox=vastai_sandbox),
        vast_cli("show", str(instance_id), sandbox=vastai_sandbox),
        vast_cli("ssh", str(instance_id), sandbox=vastai_sandbox),
        vast_cli("run", str(instance_id), "nvidia-smi -L", sandbox=vastai_sandbox),
        vast_cli("logs", str(instance_id), sandbox=vastai_sandbox),
    )
    # A command given as words, after -- or not, reaches the machine whole.
    run_words, run_dashes = await asyncio.gather(
        vast_cli("run", str(instance_id), "nvidia-smi", "-L", sandbox=vastai_sandbox),
        vast_cli("run", str(instance_id), "--", "nvidia-smi", "-L", sandbox=vastai_sandbox),
    )
    assert run_words.code == 0, run_words.err
    assert run_dashes.code == 0, run_dashes.err
    assert run_words.out == run_dashes.out == run.out
    # One price: what rent showed is what list shows the instance billing.
    (price_line,) = [line for line in lines(rent.out) if line.startswith("price: ")]
    price = price_line.split()[1]
    assert "1 instance" in table.out
    assert "1 instances" not in table.out
    assert table.code == 0, table.err
    (row,) = [line for line in lines(table.out) if str(instance_id) in line]
    assert "(kept)" in row
    assert "vastai-async:kept:rent:my box" in row
    assert f" {price} " in row

    assert show.code == 0, show.err
    assert f"id             {instance_id}" in show.out
    assert "actual_status  running" in show.out
    assert "(" not in show.out.split("ports", 1)[1].splitlines()[0]  # no Python tuple

    assert ssh.code == 0, ssh.err
    (line,) = lines(ssh.out)
    assert line.startswith("ssh -i ")
    assert "StrictHostKeyChecking=yes" in line
    assert line in rent.out

    assert run.code == 0, run.err
    assert run.out.startswith("GPU 0: ")

    assert logs.code == 0, logs.err
    assert f"created from offer {offer.id}" in logs.out

    missing = await vast_cli("show", "999999", sandbox=vastai_sandbox)
    assert missing.code == 1
    assert lines(missing.err) == [
        "error: instance 999999 not found: never existed or already destroyed"
    ]
    destroy = await vast_cli("destroy", str(instance_id), "999999", sandbox=vastai_sandbox)
    assert destroy.code == 0, destroy.err
    assert lines(destroy.out) == [
        f"{instance_id}: destroyed",
        "999999: not found: never existed or already destroyed",
    ]
    assert vastai_sandbox.alive_instance_ids() == set()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client on this machine")
async def test_the_printed_ssh_line_logs_in_with_real_openssh(
    vastai_sandbox: Sandbox, same_state_service: VastAIService
) -> None:
    rental = await same_state_service.provision_instance(job_id="ssh-line", fan_out=1)
    async with rental:
        result = await vast_cli("ssh", str(rental.instance_id), sandbox=vastai_sandbox)
        assert result.code == 0, result.err
        argv = shlex.split(result.out.strip())
        # Options go before the destination; BatchMode: fail instead of prompting.
        ssh = [argv[0], "-o", "BatchMode=yes", *argv[1:], "hostname"]
        proc = await asyncio.create_subprocess_exec(
            *ssh,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip() == f"C.{rental.instance_id}"


async def test_reap_refuses_without_yes_then_destroys_orphans_and_spares_kept(
    vastai_sandbox: Sandbox, same_state_service: VastAIService
) -> None:
    offers = await same_state_service.search_offers(limit=2)
    orphan, kept = await asyncio.gather(
        *(same_state_service.provision_instance(job_id="batch", offer_id=o.id) for o in offers)
    )
    await kept.detach("keep me")
    both = {orphan.instance_id, kept.instance_id}
    assert vastai_sandbox.alive_instance_ids() == both

    refused = await vast_cli("reap", "--job-id", "batch", sandbox=vastai_sandbox)
    assert refused.code == 1
    assert lines(refused.err) == [
        f"would destroy {orphan.instance_id}: job batch",
        "error: nothing destroyed: reap needs --yes when there is no terminal to ask",
    ]
    assert vastai_sandbox.alive_instance_ids() == both

    planned = await vast_cli("reap", "--job-id", "batch", "--dry-run", sandbox=vastai_sandbox)
    assert planned.code == 0, planned.err
    assert lines(planned.out) == [
        f"would destroy {orphan.instance_id}: job batch",
        f"spared {kept.instance_id}: kept on purpose",
    ]
    assert vastai_sandbox.alive_instance_ids() == both

    reaped = await vast_cli("reap", "--job-id", "batch", "--yes", sandbox=vastai_sandbox)
    assert reaped.code == 0, reaped.err
    assert lines(reaped.out) == [
        f"destroyed {orphan.instance_id}: job batch",
        f"spared {kept.instance_id}: kept on purpose",
    ]
    assert vastai_sandbox.alive_instance_ids() == {kept.instance_id}
    await kept.terminate()


async def test_sandbox_flag_reads_a_record_of_the_earlier_single_file_layout(
    vastai_sandbox: Sandbox,
) -> None:
    """``sandbox.json`` (before one record per sandbox) is still read."""
    record = Path(os.environ["VASTAI_STATE_DIR"]) / "sandbox.json"
    record.write_text(
        json.dumps(
            {
                "url": vastai_sandbox.url,
                "api_key": vastai_sandbox.api_key,
                "time_scale": vastai_sandbox.time_scale,
            }
        )
    )
    record.chmod(0o600)
    found = await vast_cli("--sandbox", "config", "--json")
    assert found.code == 0, found.err
    assert json.loads(found.out)["api_base_url"] == vastai_sandbox.url


async def test_provision_with_no_matching_offer_is_one_line_and_rents_nothing(
    vastai_sandbox: Sandbox,
) -> None:
    result = await vast_cli(
        "provision", "--job-id", "none", "--max-usd-per-hour", "0.001", sandbox=vastai_sandbox
    )
    assert result.code == 1
    (line,) = lines(result.err)
    assert line.startswith("error: no offer matches")
    assert vastai_sandbox.ledger() == []


async def test_provision_hedge_flag_reaches_the_race(vastai_sandbox: Sandbox) -> None:
    """``--hedge N`` starts N candidates (the first boots normally: no hedge needed); a start
    above ``--fan-out`` is refused, naming both, before anything is rented."""
    hedged, refused = await asyncio.gather(
        vast_cli(
            "provision",
            "--job-id",
            "h-1",
            "--fan-out",
            "3",
            "--hedge",
            "1",
            "--no-keep",
            sandbox=vastai_sandbox,
        ),
        vast_cli(
            "provision", "--job-id", "h-2", "--fan-out", "2", "--hedge", "3", sandbox=vastai_sandbox
        ),
    )
    assert hedged.code == 0, hedged.err
    assert sum("created instance" in line for line in lines(hedged.err)) == 1
    assert refused.code != 0
    assert "hedge.start=3 is above fan_out=2" in refused.err
    assert "created instance" not in refused.err


async def test_ssh_and_run_refuse_an_unlabelled_instance_unless_told_then_pin_its_key(
    vastai_sandbox: Sandbox, same_state_service: VastAIService
) -> None:
    """An instance rented by hand: refused by default, reachable with --any-label (TOFU pin)."""
    vast = same_state_service
    offer = (await vast.search_offers(limit=1))[0]
    made = await vast.client.create_instance(offer.id, CreateInstanceRequest(image="ubuntu"))
    instance_id = made.new_contract
    await vast.client.add_ssh_key(vast.config.ssh_identity()[1])  # the account's key
    await vastai_sandbox.wait_status(instance_id, "running")

    refused = await vast_cli("run", str(instance_id), "echo hi", sandbox=vastai_sandbox)
    assert refused.code != 0
    assert "--any-label" in refused.err
    ran, ssh = await asyncio.gather(
        vast_cli("run", "--any-label", str(instance_id), "echo hi", sandbox=vastai_sandbox),
        vast_cli("ssh", "--any-label", str(instance_id), sandbox=vastai_sandbox),
    )
    assert ran.code == 0, ran.err
    assert ran.out == "hi\n"
    assert ssh.code == 0, ssh.err
    assert "StrictHostKeyChecking=yes" in ssh.out
    # The first login pinned the host key: the same command works from the pin now.
    again = await vast_cli("run", "--any-label", str(instance_id), "true", sandbox=vastai_sandbox)
    assert again.code == 0, again.err
    assert vastai_sandbox.instance(instance_id).label is None  # we never relabel it
    await vast.terminate_instance(instance_id)
