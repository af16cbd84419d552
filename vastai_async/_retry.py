"""Retry policy and the wait generator the session hands to ``backoff``.

Only the transport retries (style.md). The session raises :class:`RetryableFailure` for a failure
worth another attempt; everything else passes through ``backoff`` untouched. Our wait generator
honours a server's wait exactly (no jitter, no cap) and otherwise sleeps a capped exponential
with full jitter. ``backoff`` itself gets ``jitter=None`` (its default would randomise a server's
``Retry-After``) and ``logger=None`` (its default logs every retry at ERROR).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Generator, Mapping
from typing import Any

import attrs
import backoff

from vastai_async.errors import APIError, InvalidRequestError

__all__ = ["RetryPolicy", "RetryableFailure", "build_retrying", "server_wait_s"]


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise InvalidRequestError(f"RetryPolicy.{attribute.name} must be >= 0, got {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise InvalidRequestError(f"RetryPolicy.{attribute.name} must be >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How the session retries a failed request.

    Attributes:
        attempts: total tries, the first included (1 disables retries).
        initial_s: the first backoff's ceiling; each later one doubles, up to ``max_delay_s``.
        max_delay_s: ceiling of one computed backoff (a server's own wait is not capped by it).
        max_time_s: budget for all attempts of one request, waits included. A server asking
            for a longer wait than what is left gets ``RateLimitedError`` at once.
        jitter: full jitter (uniform between 0 and the ceiling) on computed waits.
        seed: seeds the jitter's random generator (tests); ``None`` seeds from the system.
    """

    attempts: int = attrs.field(default=5, validator=_at_least_one)
    initial_s: float = attrs.field(default=0.15, validator=_non_negative)
    max_delay_s: float = attrs.field(default=10.0, validator=_non_negative)
    max_time_s: float = attrs.field(default=60.0, validator=_non_negative)
    jitter: bool = True
    seed: int | None = None

    def computed_wait_s(self, retry_number: int, rng: random.Random) -> float:
        """The wait before retry ``retry_number`` (0-based) when the server said nothing."""
        ceiling = min(self.max_delay_s, self.initial_s * (2**retry_number))
        return rng.uniform(0.0, ceiling) if self.jitter else ceiling


class RetryableFailure(Exception):
    """Internal: one attempt failed in a way worth retrying.

    Attributes:
        error: the error to raise if no attempt is left.
        server_wait_s: the wait the server asked for, if it said.
    """

    def __init__(self, error: APIError, *, server_wait_s: float | None = None) -> None:
        self.error = error
        self.server_wait_s = server_wait_s
        super().__init__(str(error))


def server_wait_s(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``Retry-After`` (seconds or HTTP date) or else
    ``X-RateLimit-Reset`` (epoch seconds). ``None`` when neither is present and readable.

    Args:
        headers: response headers (case-insensitive mapping).
        now: the epoch time to measure dates against (tests); defaults to ``time.time()``.
    """
    wall = time.time() if now is None else now
    retry_after = headers.get("Retry-After")
    if retry_after is not None:
        text = retry_after.strip()
        try:
            return max(0.0, float(text))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - wall)
    reset = headers.get("X-RateLimit-Reset")
    if reset is not None:
        try:
            return max(0.0, float(reset.strip()) - wall)
        except ValueError:
            return None
    return None


def _wait_gen(policy: RetryPolicy) -> Generator[float | None, Any, None]:
    """``backoff`` wait generator: it is sent the exception of each failed attempt."""
    rng = random.Random(policy.seed)
    retry_number = 0
    value: float | None = None
    while True:
        failure = yield value
        server = failure.server_wait_s if isinstance(failure, RetryableFailure) else None
        value = server if server is not None else policy.computed_wait_s(retry_number, rng)
        retry_number += 1


OnBackoff = Callable[[dict[str, Any]], None]


def build_retrying(
    policy: RetryPolicy, *, on_backoff: OnBackoff
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The ``backoff`` decorator for one session.

    Args:
        policy: attempts, waits and budget.
        on_backoff: called before each wait with backoff's details (``tries``, ``wait``,
            ``exception``); the session logs there.

    Returns:
        A decorator for the coroutine that makes one attempt.
    """
    # backoff's stubs want Generator[float, None, None]; ours also yields the priming None and
    # receives the failure through send(), which backoff does at runtime.
    wait_gen: Any = lambda: _wait_gen(policy)  # noqa: E731
    hook: Any = on_backoff
    decorator: Callable[[Callable[..., Any]], Callable[..., Any]] = backoff.on_exception(
        wait_gen,
        RetryableFailure,
        max_tries=policy.attempts,
        max_time=policy.max_time_s,
        jitter=None,
        logger=None,
        on_backoff=hook,
    )
    return decorator
