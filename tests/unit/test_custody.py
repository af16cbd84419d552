"""Custody's rules on an in-memory client: withdraw, destroy late answers, never drop silently."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from vastai_async.custody import CreateWithdrawnError, Custody
from vastai_async.errors import (
    AuthenticationError,
    BadRequestError,
    CreateOutcomeUnknownError,
    ResponseValidationError,
    TeardownError,
)
from vastai_async.models import CreateInstanceRequest, CreateInstanceResponse, Instance

REQUEST = CreateInstanceRequest(image="ubuntu", label="vastai-async:o:j:r")


class FakeCloud:
    """Instances by id; creates can be held (gate) or lose their answer; destroys can fail."""

    def __init__(self) -> None:
        self.alive: dict[int, str | None] = {}
        self.sent: list[int] = []
        self.was_sent = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.lose_answer = False
        self.refuse_key = False
        self.next_id = 100

    async def create_instance(
        self,
        offer_id: int,
        request: CreateInstanceRequest,
        *,
        before_send: Callable[[], None] | None = None,
    ) -> CreateInstanceResponse:
        await asyncio.sleep(0)  # the pacing slot
        if before_send is not None:
            before_send()
        self.sent.append(offer_id)
        self.was_sent.set()
        if self.gate is not None:
            await self.gate.wait()
        self.next_id += 1
        self.alive[self.next_id] = request.label
        if self.lose_answer:
            raise CreateOutcomeUnknownError("answer lost", label=request.label)
        return CreateInstanceResponse(success=True, new_contract=self.next_id)

    async def list_instances(
        self, *, label: str | None = None, ids: Sequence[int] | None = None
    ) -> list[Instance]:
        return [
            Instance(id=i, label=lbl)
            for i, lbl in sorted(self.alive.items())
            if (label is None or lbl == label) and (ids is None or i in ids)
        ]

    async def destroy_instance(self, instance_id: int) -> bool:
        return await self._destroy([instance_id])

    async def destroy_instances(self, instance_ids: Sequence[int]) -> object:
        return await self._destroy(instance_ids)

    async def _destroy(self, ids: Sequence[int]) -> bool:
        if self.refuse_key:
            raise AuthenticationError("Invalid user key", status=401)
        existed = any(i in self.alive for i in ids)
        for i in ids:
            self.alive.pop(i, None)
        return existed


def custody(cloud: FakeCloud) -> Custody:
    return Custody(cloud, interval_s=0.01, lost_create_window_s=0.05)


async def test_a_create_not_yet_sent_when_its_race_settles_is_never_sent() -> None:
    cloud = FakeCloud()
    c = custody(cloud)
    lot = c.open_lot("vastai-async:o:j:r")
    create = asyncio.ensure_future(c.create(lot, 1, REQUEST))
    await c.settle(lot, keep=None, budget_s=1.0)  # before the create's pacing slot came
    with pytest.raises((CreateWithdrawnError, asyncio.CancelledError)):
        await create
    assert cloud.sent == []
    await c.close()


async def test_a_create_answered_after_settle_is_waited_for_and_destroyed() -> None:
    cloud = FakeCloud()
    cloud.gate = asyncio.Event()
    c = custody(cloud)
    lot = c.open_lot("vastai-async:o:j:r")
    create = asyncio.ensure_future(c.create(lot, 1, REQUEST))
    await cloud.was_sent.wait()
    settle = asyncio.ensure_future(c.settle(lot, keep=None, budget_s=5.0))
    await asyncio.sleep(0.02)
    assert not settle.done(), "settle waits for the create in flight"
    cloud.gate.set()
    await settle
    assert cloud.alive == {}
    assert lot.results == {101: True}
    await create  # its caller still learns the id it made
    await c.close()


async def test_past_the_budget_the_error_names_the_create_in_flight_by_label() -> None:
    cloud = FakeCloud()
    cloud.gate = asyncio.Event()
    c = custody(cloud)
    lot = c.open_lot("vastai-async:o:j:r")
    create = asyncio.ensure_future(c.create(lot, 1, REQUEST))
    await cloud.was_sent.wait()
    with pytest.raises(TeardownError) as info:
        await c.settle(lot, keep=None, budget_s=0.05)
    assert info.value.labels == ("vastai-async:o:j:r",)
    cloud.gate.set()
    await c.drain(5.0)  # custody kept it: the late answer is destroyed at drain
    assert cloud.alive == {}
    assert await create == 101
    await c.close()


async def test_a_lost_answer_is_found_by_label_after_the_race_and_destroyed() -> None:
    cloud = FakeCloud()
    cloud.lose_answer = True
    c = custody(cloud)
    lot = c.open_lot("vastai-async:o:j:r")
    with pytest.raises(CreateOutcomeUnknownError):
        await c.create(lot, 1, REQUEST)
    await asyncio.sleep(0.1)  # the window has passed: the settle still sweeps once
    await c.settle(lot, keep=None, budget_s=1.0)
    await c.drain(1.0)
    assert cloud.alive == {}
    await c.close()


async def test_a_refused_key_fails_at_once_naming_ids_and_custody_keeps_them() -> None:
    cloud = FakeCloud()
    c = custody(cloud)
    cloud.alive[7] = None
    cloud.refuse_key = True
    with pytest.raises(TeardownError, match="Invalid user key") as info:
        await c.destroy([7], budget_s=5.0, reason="terminate")
    assert info.value.instance_ids == (7,)
    cloud.refuse_key = False
    await c.drain(1.0)
    assert cloud.alive == {}
    await c.close()


async def test_the_kept_winner_is_not_destroyed_and_a_second_settle_destroys_it() -> None:
    cloud = FakeCloud()
    c = custody(cloud)
    lot = c.open_lot("vastai-async:o:j:r")
    a = await c.create(lot, 1, REQUEST)
    b = await c.create(lot, 2, REQUEST)
    await c.settle(lot, keep=a, budget_s=1.0)
    assert set(cloud.alive) == {a}
    assert b not in cloud.alive
    await c.settle(lot, keep=None, budget_s=1.0)  # cancelled after the win
    assert cloud.alive == {}
    await c.close()


async def test_after_close_a_destroy_fails_at_once_naming_the_instance() -> None:
    cloud = FakeCloud()
    c = custody(cloud)
    await c.drain(1.0)
    await c.close()
    cloud.alive[9] = None
    with pytest.raises(TeardownError, match="closed") as info:
        await c.destroy([9], budget_s=30.0, reason="terminate")
    assert info.value.instance_ids == (9,)


async def test_a_create_that_fails_oddly_after_it_was_sent_is_watched_by_label() -> None:
    """Not only a lost answer: any failure after sending that is not a refusal may have rented."""
    cloud = FakeCloud()
    c = custody(cloud)
    lot = c.open_lot("vastai-async:o:j:r")

    async def garbled(*args: object, before_send: Callable[[], None] | None = None) -> object:
        assert before_send is not None
        before_send()
        cloud.next_id += 1
        cloud.alive[cloud.next_id] = "vastai-async:o:j:r"  # carried out ...
        raise ResponseValidationError("answer is not JSON")  # ... but the answer is garbage

    cloud.create_instance = garbled  # type: ignore[method-assign]
    with pytest.raises(ResponseValidationError):
        await c.create(lot, 1, REQUEST)
    await c.settle(lot, keep=None, budget_s=1.0)
    await c.drain(1.0)
    assert cloud.alive == {}
    await c.close()


async def test_a_refused_create_is_not_watched() -> None:
    cloud = FakeCloud()
    c = custody(cloud)
    lot = c.open_lot("vastai-async:o:j:r")

    async def refused(*args: object, before_send: Callable[[], None] | None = None) -> object:
        assert before_send is not None
        before_send()
        raise BadRequestError("invalid_args", status=400)

    cloud.create_instance = refused  # type: ignore[method-assign]
    with pytest.raises(BadRequestError):
        await c.create(lot, 1, REQUEST)
    assert lot.lost_creates == 0
    await c.close()


async def test_an_instance_of_a_create_in_flight_does_not_stand_in_for_a_lost_one() -> None:
    """The storm leak: a sweep sees a create in flight's instance before its answer arrives.

    Create A loses its answer and its instance lands late; create B's instance exists but B's
    answer is still on its way when the race settles. The sweep lists the label, sees B's
    instance (unknown yet) and must not count it as A's: A's instance, landing afterwards
    within the window, is found and destroyed too.
    """
    label = "vastai-async:o:j:r"
    cloud = FakeCloud()
    # A window long enough for the whole interleaving even on a loaded machine; the test does
    # not wait it out (the lost instance is found inside it).
    c = Custody(cloud, interval_s=0.01, lost_create_window_s=5.0)
    lot = c.open_lot(label)
    b_sent, b_answer = asyncio.Event(), asyncio.Event()

    async def create(
        offer_id: int, request: CreateInstanceRequest, *, before_send: Callable[[], None] | None
    ) -> CreateInstanceResponse:
        assert before_send is not None
        before_send()
        if offer_id == 1:  # A: the answer is lost; the server carries it out later
            raise CreateOutcomeUnknownError("answer lost", label=label)
        cloud.alive[201] = label  # B: carried out at once, answered late
        b_sent.set()
        await b_answer.wait()
        return CreateInstanceResponse(success=True, new_contract=201)

    swept = asyncio.Event()
    destroy = cloud._destroy

    async def destroy_and_tell(ids: Sequence[int]) -> bool:
        swept.set()  # only B's instance can be destroyed here: the sweep found it
        return await destroy(ids)

    cloud.create_instance = create  # type: ignore[method-assign]
    cloud._destroy = destroy_and_tell  # type: ignore[method-assign]
    with pytest.raises(CreateOutcomeUnknownError):
        await c.create(lot, 1, REQUEST)
    b = asyncio.ensure_future(c.create(lot, 2, REQUEST))
    await b_sent.wait()
    settle = asyncio.ensure_future(c.settle(lot, keep=None, budget_s=5.0))
    await swept.wait()  # the sweep found B's instance while B's answer is not yet in
    b_answer.set()
    assert await b == 201
    cloud.alive[202] = label  # A's create lands now, inside its window
    await settle
    await c.drain(5.0)
    assert cloud.alive == {}
    assert lot.results == {201: True, 202: True}  # B's destroyed once, not again on its answer
    assert c.reclaimed == 1
    await c.close()
