"""``AsyncComputeProvider``: the provider-neutral interface a job runner depends on.

The async, typed form of the original JavaScript service's ``ComputeProvider``
(``searchOffers`` / ``provisionInstance`` / ``terminateInstance``).
:class:`~vastai_async.VastAIService` is the Vast.ai implementation; a job runner written against
this interface does not need to know Vast specifics.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import attrs

if TYPE_CHECKING:
    from vastai_async.rental import Rental

__all__ = ["AsyncComputeProvider", "ReapReport", "RentalSummary"]


@attrs.frozen(kw_only=True)
class RentalSummary:
    """One instance of ours as seen in a listing.

    Attributes:
        instance_id: the instance.
        job_id: the job named in its label.
        owner: the owning service id (``None`` when kept on purpose).
        kept: kept on purpose by ``detach``.
        label: the full label.
        status: Vast's ``actual_status``.
        dph_total: price in USD/hour.
        start_date: epoch seconds when it was created, if known.
    """

    instance_id: int
    job_id: str
    owner: str | None
    kept: bool
    label: str
    status: str | None
    dph_total: float | None
    start_date: float | None


@attrs.frozen(kw_only=True)
class ReapReport:
    """What ``reap`` destroyed and what it spared, and why.

    Attributes:
        destroyed: ``(instance id, reason)`` pairs.
        spared: ``(instance id, reason)`` pairs.
    """

    destroyed: tuple[tuple[int, str], ...] = ()
    spared: tuple[tuple[int, str], ...] = ()


class AsyncComputeProvider(abc.ABC):
    """Rent machines you can SSH into, and never lose track of them.

    Use as an async context manager: ``async with provider: ...``.
    """

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections (idempotent). Live rentals are not destroyed by closing."""

    @abc.abstractmethod
    async def search_offers(
        self,
        *,
        min_vram_gb: float | None = None,
        gpus: Sequence[str] | None = None,
        max_usd_per_hour: float | None = None,
        query: Any = None,
        limit: int | None = None,
    ) -> list[Any]:
        """Offers matching the filters (config defaults apply), best first."""

    @abc.abstractmethod
    async def provision_instance(
        self,
        *,
        job_id: str,
        offer_id: int | None = None,
        offers: Sequence[Any] | None = None,
        query: Any = None,
        image: str | None = None,
        template: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        ports: Sequence[str] | None = None,
        onstart_cmd: str | None = None,
        disk_gb: float | None = None,
        bid_usd_per_hour: float | None = None,
        fan_out: int = 3,
        timings: Any = None,
        max_spend_usd: float | None = None,
        on_event: Any = None,
    ) -> Rental:
        """Rent a machine and return it once an SSH login into it was proven."""

    @abc.abstractmethod
    async def terminate_instance(self, instance_id: int) -> bool:
        """Destroy an instance and confirm; ``False`` when it was already gone."""

    @abc.abstractmethod
    async def get_rental(self, instance_id: int) -> Rental:
        """Rebuild a live handle for an instance of ours (host key from the pinned store)."""

    @abc.abstractmethod
    async def list_rentals(
        self, *, job_id: str | None = None, owner: str | None = None, all_owners: bool = False
    ) -> list[RentalSummary]:
        """Instances carrying our label (this owner's unless ``owner``/``all_owners``)."""

    @abc.abstractmethod
    async def adopt(self, instance_id: int) -> Rental:
        """Take over an instance of ours left by another owner (e.g. an earlier job try)."""

    @abc.abstractmethod
    async def reap(
        self,
        *,
        job_id: str | None = None,
        owner: str | None = None,
        older_than_s: float | None = None,
        dry_run: bool = False,
    ) -> ReapReport:
        """Destroy our instances that are named, whose owner is dead, or older than a given age."""
