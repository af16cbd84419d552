"""The shielded-teardown helper: cleanup always completes, cancellation still reaches the caller."""

from __future__ import annotations

import asyncio

import pytest

from vastai_async._teardown import run_uncancellable


async def test_cleanup_completes_although_caller_is_cancelled_repeatedly() -> None:
    done = asyncio.Event()
    started = asyncio.Event()

    async def cleanup() -> str:
        started.set()
        for _ in range(5):
            await asyncio.sleep(0.01)
        done.set()
        return "ok"

    task = asyncio.create_task(run_uncancellable(cleanup()))
    await started.wait()
    for _ in range(3):  # cancel again and again while the cleanup runs
        task.cancel()
        await asyncio.sleep(0.005)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done.is_set()


async def test_caller_timeout_still_raises_timeout_error_after_cleanup() -> None:
    finished: list[bool] = []

    async def cleanup() -> None:
        await asyncio.sleep(0.05)
        finished.append(True)

    async def provision_like() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await run_uncancellable(cleanup())

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await provision_like()
    assert finished == [True]


async def test_cleanup_error_wins_over_cancellation() -> None:
    async def cleanup() -> None:
        await asyncio.sleep(0.02)
        raise RuntimeError("teardown failed")

    task = asyncio.create_task(run_uncancellable(cleanup()))
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(RuntimeError, match="teardown failed"):
        await task


async def test_result_returned_without_cancellation() -> None:
    async def cleanup() -> int:
        return 7

    assert await run_uncancellable(cleanup()) == 7
