"""One run through every endpoint of :class:`VastAIClient` against a sandbox.

The contract suite runs it with a recording hook on the client's session, then checks every
request and every answer against ``schemas.OPERATIONS``. :data:`CLIENT_ENDPOINTS` must name every
public endpoint coroutine of the client: a test fails when the client grows one this run does
not call (and so has no contract checked).
"""

from __future__ import annotations

import contextlib
from typing import Any, Final

from tests.integration._market import distinct_machines
from vastai_async.client import VastAIClient
from vastai_async.errors import NotFoundError
from vastai_async.models import CreateInstanceRequest
from vastai_async.query import OfferQuery
from vastai_async.sandbox import Sandbox

__all__ = ["CLIENT_ENDPOINTS", "PUBKEY", "exercise"]

PUBKEY: Final = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx0cGV4YW1wbGVrZXlmb3J0ZXN0c29ubHkxMjM0NTY3 c@t"
)

#: Public coroutines of VastAIClient that are no endpoint.
NOT_ENDPOINTS: Final = frozenset({"close"})

#: Every endpoint coroutine :func:`exercise` calls.
CLIENT_ENDPOINTS: Final = frozenset(
    {
        "search_offers",
        "create_instance",
        "show_instance",
        "list_instances",
        "list_instances_page",
        "destroy_instance",
        "destroy_instances",
        "start_instance",
        "stop_instance",
        "set_label",
        "change_bid",
        "reboot",
        "request_logs",
        "attach_ssh_key",
        "list_ssh_keys",
        "add_ssh_key",
        "delete_ssh_key",
        "current_user",
        "templates",
    }
)


async def exercise(client: VastAIClient, sb: Sandbox) -> set[str]:
    """Call every endpoint at least once, the way the SDK calls them; returns their names."""
    called: set[str] = set()

    async def call(name: str, result: Any) -> Any:
        called.add(name)
        return await result

    query = OfferQuery(min_reliability=0.5, gpus=("4090", "3090", "A6000"), limit=60)
    offers = await call("search_offers", client.search_offers(query.to_wire()))
    await call("search_offers", client.search_offers(OfferQuery(type="bid", limit=5).to_wire()))
    first, second, third = distinct_machines(offers, 3)
    on_demand = CreateInstanceRequest(
        image="ubuntu:22.04",
        env={"GREETING": "hi"},
        ports=("8080/tcp",),
        onstart="echo hi",
        disk_gb=8,
        label="contract-1",
    )
    one = await call("create_instance", client.create_instance(first.id, on_demand))
    assert second.min_bid is not None
    bid = CreateInstanceRequest(image="ubuntu:22.04", price=second.min_bid * 2, label="contract-2")
    two = await call("create_instance", client.create_instance(second.id, bid))
    asked = CreateInstanceRequest(image="ubuntu:22.04", cancel_unavail=True, label="contract-3")
    three = await call("create_instance", client.create_instance(third.id, asked))
    ids = [one.new_contract, two.new_contract, three.new_contract]
    await sb.wait_status(ids[0], "running", within_s=20)

    await call("show_instance", client.show_instance(ids[0]))
    with contextlib.suppress(NotFoundError):  # {"instances": null}
        await call("show_instance", client.show_instance(1))
    await call("list_instances", client.list_instances(label="contract-1"))
    await call("list_instances", client.list_instances(ids=ids))
    await call("list_instances_page", client.list_instances_page({"label": {"eq": "nope"}}))
    await call("set_label", client.set_label(ids[0], "contract-1b"))
    await call("stop_instance", client.stop_instance(ids[2]))
    await call("start_instance", client.start_instance(ids[2]))
    await call("change_bid", client.change_bid(ids[1], 1.0))
    await call("reboot", client.reboot(ids[0]))
    await call(
        "request_logs", client.request_logs(ids[0], tail=10, poll_interval_s=0.01, max_wait_s=10)
    )
    await call("attach_ssh_key", client.attach_ssh_key(ids[0], PUBKEY))

    assert await call("list_ssh_keys", client.list_ssh_keys()) == []
    added = await call("add_ssh_key", client.add_ssh_key(PUBKEY))
    assert added is not None
    await call("list_ssh_keys", client.list_ssh_keys())
    assert await call("delete_ssh_key", client.delete_ssh_key(added.id)) is True
    assert await call("delete_ssh_key", client.delete_ssh_key(added.id)) is False

    await call("current_user", client.current_user())
    await call("templates", client.templates())
    await call("templates", client.templates({"image": {"eq": "nvidia/cuda"}}))

    assert await call("destroy_instance", client.destroy_instance(ids[0])) is True
    assert await call("destroy_instance", client.destroy_instance(ids[0])) is False
    await call("destroy_instances", client.destroy_instances(ids[1:]))
    assert sb.alive_instance_ids() == set()
    return called
