"""The shared host history: the same store on Redis, so a fleet of workers learns together.

Needs the ``arq`` extra (it brings ``redis``). Layout under a key prefix (default
``vastai-async:hosts:``):

- ``<prefix>m:<machine_id>``: a list of JSON outcomes, newest first, trimmed to
  ``max_per_machine`` and expiring ``max_age_s`` after its last write;
- ``<prefix>machines``: a sorted set of machine ids scored by their last write (for listing,
  and to drop the oldest machines past ``max_machines``);
- ``<prefix>schema``: the schema version. A newer version is refused; an older one is cleared.

Each write is one ``MULTI`` pipeline, so concurrent workers never interleave half-writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any

from vastai_async._converter import structure, unstructure
from vastai_async.reputation.records import HostHistoryError, HostOutcome

__all__ = ["DEFAULT_PREFIX", "RedisHostHistory"]

#: Default key prefix.
DEFAULT_PREFIX = "vastai-async:hosts:"
_SCHEMA_VERSION = 2  # 2: offer_id may be null (adopted instances)


class RedisHostHistory:
    """Host history in Redis, shared by every process that uses the same URL and prefix.

    Args:
        url: a Redis URL (``redis://host:6379/0``); or pass ``client``.
        client: a ``redis.asyncio.Redis`` to use (not closed by us).
        prefix: key prefix (one history per prefix).
        max_per_machine: newest records kept per machine.
        max_machines: machines kept (the least recently seen go first).
        max_age_s: a machine's records expire this long after its last write.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        prefix: str = DEFAULT_PREFIX,
        max_per_machine: int = 20,
        max_machines: int = 5_000,
        max_age_s: float = 30 * 86_400.0,
    ) -> None:
        if (url is None) == (client is None):
            raise HostHistoryError("RedisHostHistory needs exactly one of url or client")
        self._url = url
        self._client = client
        self._owns_client = client is None
        self.prefix = prefix
        self.max_per_machine = max_per_machine
        self.max_machines = max_machines
        self.max_age_s = max_age_s
        self._ready = False

    def __repr__(self) -> str:
        # The URL may carry a password: never shown.
        return f"RedisHostHistory(prefix={self.prefix!r})"

    async def record(self, outcomes: Sequence[HostOutcome]) -> None:
        """Add outcomes; trim and expire per the bounds."""
        if not outcomes:
            return
        redis = await self._redis()
        now = time.time()
        by_machine: dict[int, list[HostOutcome]] = {}
        for outcome in outcomes:
            by_machine.setdefault(outcome.machine_id, []).append(outcome)
        ttl = max(1, int(self.max_age_s))
        try:
            async with redis.pipeline(transaction=True) as pipe:
                for machine_id, items in by_machine.items():
                    key = self._machine_key(machine_id)
                    ordered = sorted(items, key=lambda o: o.at)  # LPUSH: newest ends first
                    pipe.lpush(key, *(json.dumps(unstructure(o)) for o in ordered))
                    pipe.ltrim(key, 0, self.max_per_machine - 1)
                    pipe.expire(key, ttl)
                    pipe.zadd(self._index, {str(machine_id): now})
                pipe.zremrangebyscore(self._index, "-inf", now - self.max_age_s)
                await pipe.execute()
            await self._trim_machines(redis)
        except Exception as err:
            raise _wrap(err) from err

    async def history(self, machine_ids: Iterable[int] | None = None) -> list[HostOutcome]:
        """Outcomes of these machines (``None``: all), newest first."""
        redis = await self._redis()
        try:
            ids = await self._machines(redis, machine_ids)
            if not ids:
                return []
            async with redis.pipeline(transaction=False) as pipe:
                for machine_id in ids:
                    pipe.lrange(self._machine_key(machine_id), 0, -1)
                lists = await pipe.execute()
        except Exception as err:
            raise _wrap(err) from err
        result = [structure(json.loads(raw), HostOutcome) for rows in lists for raw in rows]
        result.sort(key=lambda o: o.at, reverse=True)
        return result

    async def forget(self, machine_ids: Iterable[int] | None = None) -> int:
        """Drop these machines' records (``None``: all under the prefix); returns rows dropped."""
        redis = await self._redis()
        try:
            ids = await self._machines(redis, machine_ids)
            if not ids:
                return 0
            async with redis.pipeline(transaction=True) as pipe:
                for machine_id in ids:
                    pipe.llen(self._machine_key(machine_id))
                for machine_id in ids:
                    pipe.delete(self._machine_key(machine_id))
                pipe.zrem(self._index, *(str(m) for m in ids))
                answers = await pipe.execute()
        except Exception as err:
            raise _wrap(err) from err
        return sum(int(n) for n in answers[: len(ids)])

    async def close(self) -> None:
        """Close the connection pool if this store made it (idempotent)."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # -- internals --------------------------------------------------------------------------

    @property
    def _index(self) -> str:
        return self.prefix + "machines"

    def _machine_key(self, machine_id: int) -> str:
        return f"{self.prefix}m:{machine_id}"

    async def _redis(self) -> Any:
        if self._client is None:
            if self._url is None:
                raise HostHistoryError("this RedisHostHistory is closed")
            try:
                from redis.asyncio import Redis
            except ImportError as err:  # pragma: no cover - the extra is missing
                raise HostHistoryError(
                    "RedisHostHistory needs redis: pip install 'vastai-async[arq]'"
                ) from err
            self._client = Redis.from_url(self._url, decode_responses=True)
        if not self._ready:
            self._ready = True  # set first: the check itself may forget() an old layout
            try:
                await self._check_schema(self._client)
            except BaseException:
                self._ready = False
                raise
        return self._client

    async def _machines(self, redis: Any, machine_ids: Iterable[int] | None) -> list[int]:
        # The given machines, or (None) every machine the index lists.
        if machine_ids is None:
            return [int(m) for m in await redis.zrange(self._index, 0, -1)]
        return sorted(set(machine_ids))

    async def _check_schema(self, redis: Any) -> None:
        key = self.prefix + "schema"
        try:
            raw = await redis.get(key)
            version = int(raw) if raw is not None else None
            if version is not None and version > _SCHEMA_VERSION:
                raise HostHistoryError(
                    f"the host history under {self.prefix!r} has schema {version}, newer than "
                    f"this vastai_async understands ({_SCHEMA_VERSION})"
                )
            if version is not None and version < _SCHEMA_VERSION:
                await self.forget()
            if version != _SCHEMA_VERSION:
                await redis.set(key, str(_SCHEMA_VERSION))
        except HostHistoryError:
            raise
        except Exception as err:
            raise _wrap(err) from err

    async def _trim_machines(self, redis: Any) -> None:
        extra = await redis.zcard(self._index) - self.max_machines
        if extra > 0:
            oldest = [int(m) for m in await redis.zrange(self._index, 0, extra - 1)]
            await self.forget(oldest)


def _wrap(err: BaseException) -> HostHistoryError:
    if isinstance(err, HostHistoryError):
        return err
    # Redis errors may quote the URL; name only the class and the message's first line.
    first = str(err).splitlines()[0] if str(err) else ""
    return HostHistoryError(f"Redis host history: {type(err).__name__}: {first}")
