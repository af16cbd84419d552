"""The one shielded-teardown helper: cleanup that the caller's cancellation cannot interrupt.

``finally: await asyncio.shield(cleanup())`` returns early when the caller is cancelled again
while the cleanup runs (style.md pitfalls). Here the cleanup runs as its own task; we loop on
``shield(task)`` absorbing every cancellation until the task is done, then re-raise the
cancellation so ``asyncio.timeout`` and ``task.cancel()`` still work for the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_uncancellable"]

T = TypeVar("T")


async def run_uncancellable(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion even if the awaiting task is cancelled meanwhile.

    Args:
        coro: the cleanup to run (it bounds its own duration, e.g. with a teardown budget).

    Returns:
        What ``coro`` returned.

    Raises:
        asyncio.CancelledError: after ``coro`` finished, when the caller was cancelled during it.
        Exception: whatever ``coro`` raised (takes precedence over nothing, never hides a cancel).
    """
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise  # the cleanup itself was cancelled (loop shutdown): nothing to wait for
            cancelled = True  # the caller was cancelled: keep waiting for the cleanup
        except Exception:  # noqa: S110  (its outcome is read from the task just below)
            pass
    # The cleanup's own failure (e.g. TeardownError naming live instances) wins over the
    # cancellation: it is the fact the caller must not miss.
    result = task.result()
    if cancelled:
        raise asyncio.CancelledError
    return result
