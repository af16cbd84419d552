"""``VastAIService``: the Vast.ai implementation of :class:`AsyncComputeProvider`.

```python
async with VastAIService(config=get_vastai_config(max_bid_usd_per_hour=3.5)) as vast:
    offers = await vast.search_offers(min_vram_gb=24)
    rental = await vast.provision_instance(job_id="demo-job", offer_id=offers[0].id)
    await vast.terminate_instance(rental.instance_id)
```
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Literal

import aiohttp
import asyncssh
import attrs

from vastai_async._arguments import (
    search_query,
    validate_instance_id,
    validate_provision_args,
    validate_search_args,
)
from vastai_async._logging import get_logger
from vastai_async._owners import OwnerLock, owner_is_dead
from vastai_async._poller import InstancePoller
from vastai_async._race_types import ProbeFn
from vastai_async._reaping import plan_reap
from vastai_async._requests import build_create_request
from vastai_async._teardown import run_uncancellable
from vastai_async.account_keys import AccountKeyRegistrar
from vastai_async.client import VastAIClient
from vastai_async.config import VastAIConfig, get_vastai_config
from vastai_async.custody import Custody
from vastai_async.errors import (
    InvalidRequestError,
    NotFoundError,
    OfferUnavailableError,
    ServiceClosedError,
    SSHError,
    TeardownError,
    VastAIError,
)
from vastai_async.events import EventCallback, EventEmitter, SSHKeyPath
from vastai_async.hedging import BootTimes, HedgePolicy, validate_hedge
from vastai_async.known_hosts import KnownHostsStore
from vastai_async.labels import parse_label, race_label, validate_id
from vastai_async.models import CreateInstanceRequest, Instance, Offer, RentalInfo, SSHEndpoint
from vastai_async.provider import AsyncComputeProvider, ReapReport, RentalSummary
from vastai_async.provisioning import ProbeOutcome, Race, new_race_id
from vastai_async.query import OfferQuery
from vastai_async.rental import Rental, RentalOwner
from vastai_async.reputation.records import HostHistory
from vastai_async.reputation.service_glue import HostReputation, RankArg, check_rank
from vastai_async.session import RetryPolicy, VastAISession
from vastai_async.ssh import SSHLoginTimeoutError, load_client_key, probe, wait_for_login
from vastai_async.timings import Timings

__all__ = ["VastAIService"]

_log = get_logger(__name__)


class VastAIService(AsyncComputeProvider):
    """Search, rent (by racing offers), adopt, list, reap and destroy Vast.ai machines.

    Args:
        config: settings; read from the environment with :func:`get_vastai_config` when omitted.
        logger: where progress goes; defaults to ``vastai_async.service``.
        http_session: an ``aiohttp.ClientSession`` to borrow (never closed by us). Its silent
            replay of PUT/DELETE after a dropped connection is switched off, because a replayed
            create could rent a second machine; lend a session used only for Vast.ai.
        timings: overrides ``config.timings`` for this service.
        on_event: called with every race event (sync or async).
        max_concurrent_provisions: admission control: at most this many races run at once;
            further ``provision_instance`` calls wait their turn in a FIFO queue. Default:
            what the create route's pacing can serve within the teardown budget at fan-out 3,
            ``floor(teardown_budget_s / (2 * create_interval * 3))``, at least 1.
        retry: how requests are retried; default :class:`~vastai_async.RetryPolicy`.
        client: a :class:`~vastai_async.VastAIClient` to use (and not close) instead of one
            built from ``config``; ``http_session`` and ``retry`` then do not apply.
        host_history: where races record how each machine booted, read by the ranker
            (docs/hosts.md). ``None``: a :class:`~vastai_async.SQLiteHostHistory` in the state
            directory; ``False``: remember nothing (and never rank).
    """

    def __init__(
        self,
        config: VastAIConfig | None = None,
        *,
        logger: logging.Logger | None = None,
        http_session: aiohttp.ClientSession | None = None,
        timings: Timings | None = None,
        on_event: EventCallback | None = None,
        max_concurrent_provisions: int | None = None,
        retry: RetryPolicy | None = None,
        client: VastAIClient | None = None,
        host_history: HostHistory | Literal[False] | None = None,
    ) -> None:
        self.config = config if config is not None else get_vastai_config()
        self.timings = timings if timings is not None else self.config.timings
        self.owner = validate_id("owner", self.config.owner)
        self._log = logger or _log
        self._on_event = on_event
        self._owns_session = client is None
        self._session = (
            client.session
            if client is not None
            else VastAISession(
                self.config, session=http_session, timings=self.timings, retry=retry, logger=logger
            )
        )
        self.client = client if client is not None else VastAIClient(self._session)
        self.known_hosts = KnownHostsStore(self.config.state_dir)
        self._reputation = _reputation(host_history, self.config, self._log)
        self._client_key: asyncssh.SSHKey | None = None
        self._poller: InstancePoller | None = None
        self._boot_times = BootTimes()  # observed by every race; hedging derives delays from it
        self._claimed_offers: set[int] = set()
        # The key goes on the account once, before the first create (the published spec's
        # rule); per-instance attach only where the account refuses it.
        self._account_key: AccountKeyRegistrar | None = None
        self._custody = Custody(
            self.client,
            interval_s=self.timings.poll_interval_s,
            # A server may carry out a create whose answer we lost for about as long as we
            # waited for it: watch its label for twice that.
            lost_create_window_s=2 * self.timings.request_timeout_s,
            logger=self._log,
        )
        if max_concurrent_provisions is None:
            max_concurrent_provisions = self._default_admission()
        elif (
            isinstance(max_concurrent_provisions, bool)
            or not isinstance(max_concurrent_provisions, int)
            or max_concurrent_provisions < 1
        ):
            raise InvalidRequestError(
                "max_concurrent_provisions must be an integer >= 1, "
                f"got {max_concurrent_provisions!r}"
            )
        #: How many races may run at once (admission control).
        self.max_concurrent_provisions = max_concurrent_provisions
        self._admission = asyncio.Semaphore(max_concurrent_provisions)
        self._race_tasks: set[asyncio.Task[Rental]] = set()
        self._owner_lock: OwnerLock | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"VastAIService(owner={self.owner!r}, root={self._session.root!r})"

    async def __aenter__(self) -> VastAIService:
        await self._session.__aenter__()
        return self

    async def close(self) -> None:
        """End races in flight, drain custody, then close the HTTP session (idempotent).

        In order: races still running are cancelled (their callers get
        :class:`~vastai_async.ServiceClosedError`) and hand everything they created or may
        yet create to custody; custody then destroys and confirms all of it within
        :attr:`close_budget_s`; only then do the poller and the HTTP session close.
        Live rentals already handed to callers are not destroyed.

        Raises:
            TeardownError: custody could not resolve everything within the bound; names every
                instance and label still unresolved (``vastai-async reap`` finds them).
        """
        if self._closed:
            return
        self._closed = True
        await run_uncancellable(self._shut_down())

    async def _shut_down(self) -> None:
        try:
            races = set(self._race_tasks)
            for task in races:
                task.cancel()
            if races:
                await asyncio.gather(*races, return_exceptions=True)
            await self._custody.drain(self.close_budget_s)
        finally:
            await self._reputation.close()
            await self._custody.close()
            if self._poller is not None:
                await self._poller.close()
            if self._owns_session:
                await self._session.close()
            if self._owner_lock is not None:
                self._owner_lock.release()

    @property
    def close_budget_s(self) -> float:
        """How long :meth:`close` waits for custody: the teardown budget plus three request
        timeouts (a create in flight may answer one request timeout late, then a lost answer's
        label is watched for two more)."""
        return self.timings.teardown_budget_s + 3 * self.timings.request_timeout_s

    def live_instance_ids(self) -> list[int]:
        """Instances in this service's custody that may still be alive: candidates of races
        still running and instances being destroyed (for a last-resort message)."""
        return sorted(self._custody.live_ids() | set(self._custody.unresolved()[0]))

    def _default_admission(self) -> int:
        interval = self.config.pacing.interval("PUT", "/api/v0/asks/{id}/")
        if interval <= 0:
            return 1024
        return max(1, math.floor(self.timings.teardown_budget_s / (2 * interval * 3)))

    # -- offers ---------------------------------------------------------------------------

    async def search_offers(
        self,
        *,
        min_vram_gb: float | None = None,
        gpus: str | Sequence[str] | None = None,
        max_usd_per_hour: float | None = None,
        query: OfferQuery | str | None = None,
        limit: int | None = None,
    ) -> list[Offer]:
        """Offers matching the config's defaults and these filters, best first.

        Args:
            min_vram_gb: minimum VRAM per GPU (GB = 1000 MB); default from the config.
            gpus: short or full GPU names (a list, or one comma-separated string); default the
                config's preferred GPUs.
            max_usd_per_hour: price ceiling; never above the config's ceiling.
            query: a full :class:`~vastai_async.query.OfferQuery`, or an official-CLI query
                string such as ``"num_gpus=2 reliability>0.95"`` (the other filters then apply
                on top of it).
            limit: at most this many offers.

        Returns:
            Offers cheapest ``dph_total`` first unless the query orders otherwise. Each
            ``dph_total`` is what an instance of that offer bills per hour with the disk a
            rental asks for (``query.allocated_storage_gb``, else its ``min_disk_gb``, else the
            config's ``default_disk_gb``), GPU and storage together.

        Raises:
            InvalidRequestError: an argument of the wrong type or out of range, named.
        """
        q = search_query(
            self.config,
            validate_search_args(
                min_vram_gb=min_vram_gb,
                gpus=gpus,
                max_usd_per_hour=max_usd_per_hour,
                query=query,
                limit=limit,
            ),
        )
        offers = await self.client.search_offers(q.to_wire())
        matching = [o for o in offers if q.matches(o)]
        return matching[:limit] if limit is not None else matching

    # -- provisioning ---------------------------------------------------------------------

    async def provision_instance(
        self,
        *,
        job_id: str,
        offer_id: int | None = None,
        offers: Sequence[Offer] | None = None,
        query: OfferQuery | None = None,
        image: str | None = None,
        template: str | None = None,
        extra_env: Mapping[str, str] | None = None,
        ports: Sequence[str] | None = None,
        onstart_cmd: str | None = None,
        disk_gb: float | None = None,
        bid_usd_per_hour: float | None = None,
        fan_out: int = 3,
        timings: Timings | None = None,
        max_spend_usd: float | None = None,
        on_event: EventCallback | None = None,
        hedge: HedgePolicy | None = None,
        rank: RankArg = True,
    ) -> Rental:
        """Rent a machine and return it once an SSH login into it was proven.

        Candidates are ``offer_id`` (one), ``offers`` (in your order) or a search with
        ``query`` (or the config's defaults). ``fan_out`` of them are created at once; the first
        whose SSH login works wins and every other one is destroyed. Whatever fails, and if you
        cancel, every instance this call created is destroyed before it returns or raises.

        Args:
            job_id: your job's id (``[A-Za-z0-9._-]``), written into the instance label.
            offer_id: rent exactly this offer.
            offers: candidate offers, best first.
            query: search for candidates with this query.
            image: docker image (default: the config's, unless ``template`` is given).
            template: template hash id (must be in ``VASTAI_TEMPLATE_IDS`` when that is set).
            extra_env: environment variables for the container.
            ports: ports to expose (``"8080"``, ``"8080/tcp"``, ``"53/udp"``).
            onstart_cmd: script run when the container starts.
            disk_gb: disk size (default from the config).
            bid_usd_per_hour: ``None`` rents on demand; a number rents interruptible at that bid.
            fan_out: candidates in flight at once (>= 1).
            timings: deadlines for this call (default: the service's).
            max_spend_usd: stop the race once its estimated spend reaches this.
            on_event: called with every event of this race (besides the service's callback).
            hedge: a :class:`~vastai_async.HedgePolicy`: start ``hedge.start`` candidates and
                add one, up to ``fan_out``, whenever one in flight is late against the boot
                times seen so far (a :class:`~vastai_async.Hedged` event says when and why).
            rank: reorder the candidates by what the host history knows (docs/hosts.md):
                ``True`` uses the service's :class:`~vastai_async.OfferRanker` when history
                exists; an ``OfferRanker`` of your own; ``False``/``None`` keeps your order.
                An :class:`~vastai_async.OffersRanked` event says where each one went and why.

        Returns:
            A :class:`~vastai_async.Rental` you can log into.

        Raises:
            InvalidRequestError: bad arguments (raised before anything is rented).
            ProvisioningError: no candidate produced a login; one record per offer tried.
            TeardownError: cleanup could not confirm every instance destroyed in its budget.
        """
        validate_provision_args(
            job_id=job_id,
            offer_id=offer_id,
            offers=offers,
            query=query,
            image=image,
            template=template,
            extra_env=extra_env,
            ports=ports,
            onstart_cmd=onstart_cmd,
            disk_gb=disk_gb,
            bid_usd_per_hour=bid_usd_per_hour,
            fan_out=fan_out,
            timings=timings,
            max_spend_usd=max_spend_usd,
            on_event=on_event,
        )
        validate_hedge(hedge, fan_out)
        rank = check_rank(rank)
        self.config.ssh_identity()  # a config built without a key can search but not rent
        request = build_create_request(
            self.config,
            image=image,
            template=template,
            extra_env=extra_env,
            ports=ports,
            onstart_cmd=onstart_cmd,
            disk_gb=disk_gb,
            bid_usd_per_hour=bid_usd_per_hour,
        )
        if self._closed:
            raise ServiceClosedError("the service is closed")
        race_timings = timings if timings is not None else self.timings
        client_key = self._key()
        # Admission control: at most max_concurrent_provisions races at once; the rest wait in
        # FIFO order here, before any request is made on their behalf.
        async with self._admission:
            if self._closed:
                raise ServiceClosedError("the service closed while this provision waited")
            self._hold_owner_lock()
            # The race runs as the service's own task, so close() can end it (and its caller
            # learns why) without cancelling the caller's task.
            task = asyncio.create_task(
                self._provision(
                    job_id=job_id,
                    request=request,
                    offer_id=offer_id,
                    offers=offers,
                    query=query,
                    timings=race_timings,
                    fan_out=fan_out,
                    max_spend_usd=max_spend_usd,
                    on_event=on_event,
                    client_key=client_key,
                    hedge=hedge,
                    rank=rank,
                ),
                name=f"vastai-async provision {job_id}",
            )
            self._race_tasks.add(task)
            try:
                return await self._await_race(task)
            finally:
                self._race_tasks.discard(task)

    async def _await_race(self, task: asyncio.Task[Rental]) -> Rental:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and current.cancelling() == 0:
                # Not our caller's cancellation: close() ended the race.
                raise ServiceClosedError(
                    "the service was closed while provisioning; everything this call created "
                    "was handed to custody and destroyed"
                ) from None
            task.cancel()
            # The caller is cancelled: wait (uncancellably) for the race to settle; a rental it
            # produced meanwhile is never received, so it is destroyed.
            await run_uncancellable(self._discard_race(task))
            raise

    async def _discard_race(self, task: asyncio.Task[Rental]) -> None:
        try:
            rental = await task
        except TeardownError:
            raise  # it names what may still be alive: the caller must see it
        except (asyncio.CancelledError, VastAIError):
            return  # nothing of this race outlived it; the caller's cancellation wins
        await rental.terminate()

    async def _provision(
        self,
        *,
        job_id: str,
        request: CreateInstanceRequest,
        offer_id: int | None,
        offers: Sequence[Offer] | None,
        query: OfferQuery | None,
        timings: Timings,
        fan_out: int,
        max_spend_usd: float | None,
        on_event: EventCallback | None,
        client_key: asyncssh.SSHKey,
        hedge: HedgePolicy | None = None,
        rank: RankArg = None,
    ) -> Rental:
        candidates = await self._candidates(
            offer_id=offer_id, offers=offers, query=query, disk_gb=request.disk_gb
        )
        candidates, ranking = await self._reputation.order(candidates, rank)
        recorder = self._reputation.recorder(candidates, request)
        race_id = new_race_id()
        emitter = EventEmitter([self._on_event, on_event, recorder], self._log)
        if self._account_key is None:
            self._account_key = AccountKeyRegistrar(self.client, self.config.ssh_identity()[1])
        key = await self._account_key.ensure()
        await emitter.emit(
            SSHKeyPath(
                race_id=race_id,
                job_id=job_id,
                path=key.path,
                key_id=key.key_id,
                added=key.added,
                reason=key.reason,
            )
        )
        if ranking is not None:
            await emitter.emit(self._reputation.event(ranking, race_id=race_id, job_id=job_id))
        race = Race(
            client=self.client,
            custody=self._custody,
            poller=self._get_poller(),
            probe=self._make_probe(client_key, timings),
            emitter=emitter,
            job_id=job_id,
            label=race_label(self.owner, job_id, race_id),
            race_id=race_id,
            offers=candidates,
            request=request,
            public_key=self.config.ssh_identity()[1] if key.path == "instance" else None,
            fan_out=fan_out,
            timings=timings,
            max_spend_usd=max_spend_usd,
            claim=self._claim,
            release=self._release,
            logger=self._log,
            hedge=hedge,
            boot_times=self._boot_times,
        )
        try:
            result = await race.run()
        finally:
            self._reputation.save(recorder)  # won, failed or cancelled: what it taught is kept
        try:
            await self.known_hosts.apin(
                result.instance_id, result.endpoint.host, result.endpoint.port, result.host_key
            )
        except BaseException:
            # Without a pinned key the caller gets no rental: do not leave the machine billing.
            await run_uncancellable(self.terminate_instance(result.instance_id))
            raise
        info = RentalInfo(
            instance_id=result.instance_id,
            job_id=job_id,
            owner=self.owner,
            label=result.label,
            ssh=result.endpoint,
            host_key=result.host_key,
            created_at=result.created_at,
            offer=result.offer,
            dph_total=result.offer.dph_total,
            ready_at=result.ready_at,
            bid_usd_per_hour=request.price,
        )
        return self._rental(info, client_key)

    def _hold_owner_lock(self) -> None:
        # Held for the service's life: a reaper in another process (or container sharing the
        # state directory) proves this owner dead only by taking it (see _owners.py).
        if self._owner_lock is None:
            self._owner_lock = OwnerLock.acquire(self.config.state_dir, self.owner)

    async def _candidates(
        self,
        *,
        offer_id: int | None,
        offers: Sequence[Offer] | None,
        query: OfferQuery | None,
        disk_gb: float | None = None,
    ) -> list[Offer]:
        ceiling = self.config.max_bid_usd_per_hour
        if offer_id is not None:
            if isinstance(offer_id, bool) or not isinstance(offer_id, int) or offer_id < 1:
                raise InvalidRequestError(f"offer_id must be a positive integer, got {offer_id!r}")
            # Priced with the disk the rental asks for: dph_total is then what it bills.
            wire = {"id": {"eq": offer_id}, "allocated_storage": disk_gb}
            found = await self.client.search_offers(wire)
            offer = next((o for o in found if o.id == offer_id), None)
            if offer is None:
                # Without the offer we cannot check its price against the ceiling: refuse.
                raise OfferUnavailableError(
                    f"offer {offer_id} is not on the market (rented, withdrawn or unknown)",
                    offer_id=offer_id,
                    code="no_such_ask",
                )
            candidates = [offer]
        elif offers is not None:
            candidates = list(offers)
            if not candidates:
                raise InvalidRequestError("offers is empty")
        else:
            if disk_gb is not None:
                # Search only machines with room for the disk we will ask for.
                # and price every offer for exactly that disk (allocated_storage).
                base = query if query is not None else OfferQuery.from_config(self.config)
                min_disk = disk_gb if base.min_disk_gb is None else max(base.min_disk_gb, disk_gb)
                query = attrs.evolve(base, min_disk_gb=min_disk, allocated_storage_gb=disk_gb)
            candidates = await self.search_offers(query=query)
        if disk_gb is not None:
            # A create asking for more disk than the machine has is refused (400): never try it.
            small = [
                o for o in candidates if o.disk_space_gb is not None and o.disk_space_gb < disk_gb
            ]
            if small and len(small) == len(candidates):
                raise InvalidRequestError(
                    f"every candidate has less disk than disk_gb={disk_gb:g} "
                    f"(offers {', '.join(str(o.id) for o in small[:5])})"
                )
            candidates = [o for o in candidates if o not in small]
        over = [o for o in candidates if o.dph_total is not None and o.dph_total > ceiling]
        if over and len(over) == len(candidates):
            raise InvalidRequestError(
                f"every candidate costs more than VASTAI_MAX_BID_PER_HOUR={ceiling:g} USD/h "
                f"(offers {', '.join(str(o.id) for o in over[:5])})"
            )
        candidates = [o for o in candidates if o not in over]
        if not candidates:
            raise InvalidRequestError("no offer matches the filters")
        return candidates

    def _claim(self, offer: Offer) -> bool:
        if offer.id in self._claimed_offers:
            return False
        self._claimed_offers.add(offer.id)
        return True

    def _release(self, offer: Offer) -> None:
        self._claimed_offers.discard(offer.id)

    def _key(self) -> asyncssh.SSHKey:
        if self._client_key is None:
            self._client_key = load_client_key(
                self.config.ssh_identity()[0], self.config.ssh_key_passphrase
            )
        return self._client_key

    def _get_poller(self) -> InstancePoller:
        if self._poller is None:
            self._poller = InstancePoller(
                lambda ids: self.client.list_instances(ids=ids),
                interval_s=self.timings.poll_interval_s,
                logger=self._log,
            )
        return self._poller

    @staticmethod
    def _make_probe(client_key: asyncssh.SSHKey, timings: Timings) -> ProbeFn:
        async def probe_once(endpoint: SSHEndpoint) -> ProbeOutcome:
            res = await probe(
                endpoint.host,
                endpoint.port,
                client_key=client_key,
                connect_timeout=timings.connect_timeout_s,
                login_timeout=timings.login_timeout_s,
                username=endpoint.user,
            )
            reason = None if res.ok else f"{res.reason}: {res.detail}" if res.detail else res.reason
            return ProbeOutcome(ok=res.ok, reason=reason, host_key=res.host_key)

        return probe_once

    def _rental(self, info: RentalInfo, client_key: asyncssh.SSHKey) -> Rental:
        owner = RentalOwner(
            terminate=self.terminate_instance,
            relabel=self.client.set_label,
            show=self.client.show_instance,
            emit=EventEmitter([self._on_event], self._log).emit,
            known_hosts_path=self.known_hosts.known_hosts_path,
            timings=self.timings,
        )
        return Rental(
            info=info,
            owner=owner,
            client_key=client_key,
            key_path=self.config.ssh_identity()[0],
        )

    # -- lifecycle of existing instances --------------------------------------------------

    async def terminate_instance(self, instance_id: int) -> bool:
        """Destroy an instance and confirm it is gone, through custody.

        Transient failures (5xx, dropped connections, malformed answers) are retried every
        tick; the wait is bounded by ``timings.teardown_budget_s`` of real time.

        Returns:
            ``True`` when this call destroyed it, ``False`` when Vast said it was already gone.

        Raises:
            TeardownError: not confirmed gone within the teardown budget, or the key was refused
                (custody keeps trying until the service closes).
        """
        instance_id = validate_instance_id(instance_id)
        results = await self._custody.destroy(
            [instance_id], budget_s=self.timings.teardown_budget_s, reason="terminate"
        )
        await self.known_hosts.aremove(instance_id)
        return results.get(instance_id, True)

    async def get_rental(self, instance_id: int, *, require_label: bool = True) -> Rental:
        """Rebuild a :class:`Rental` for an instance from its pinned host key.

        Args:
            instance_id: the instance.
            require_label: refuse an instance without our label (default). ``False`` accepts
                any instance of the account (one rented by hand or another tool): with no host
                key pinned for it yet, the first login captures and pins one (trust on first
                use, bound to the instance id). The rental does not own such a machine any more
                than you do: ``async with rental`` and ``terminate()`` still destroy it.

        Raises:
            NotFoundError: no such instance, or (``require_label``) it is not labelled as ours.
            SSHError: no host key was pinned for one of ours in this state directory (use
                :meth:`adopt`), or no login to an unlabelled one within the SSH deadline.
        """
        instance_id = validate_instance_id(instance_id)
        inst = await self.client.show_instance(instance_id)
        parsed = parse_label(inst.label)
        if parsed is None and require_label:
            raise NotFoundError(
                f"instance {instance_id} does not carry a vastai-async label "
                "(require_label=False, or --any-label on the command line, accepts it)"
            )
        pin = await self.known_hosts.aget(instance_id)
        if pin is None:
            if parsed is not None:
                raise SSHError(
                    "no host key pinned for this instance in this state directory; use adopt()",
                    instance_id=instance_id,
                )
            return await self._first_contact(inst, job_id="unlabeled", label=inst.label or "")
        endpoint = next(
            (e for e in inst.ssh_endpoints() if (e.host, e.port) == (pin.host, pin.port)),
            SSHEndpoint(host=pin.host, port=pin.port, kind="proxy"),
        )
        info = RentalInfo(
            instance_id=instance_id,
            job_id=parsed.job_id if parsed is not None else "unlabeled",
            owner=(parsed.owner if parsed is not None else None) or self.owner,
            label=inst.label or "",
            ssh=endpoint,
            host_key=pin.key,
            created_at=inst.start_date or pin.pinned_at,
            dph_total=inst.dph_total,
            ready_at=pin.pinned_at,
        )
        return self._rental(info, self._key())

    async def adopt(self, instance_id: int) -> Rental:
        """Take over an instance of ours (e.g. left by an earlier try of the same job).

        Relabels it with this service's owner, proves an SSH login (capturing and pinning the
        host key if this state directory has none), and returns a :class:`Rental`. The host
        history (when the service has one) records how its machine answered: ``adopted``, or
        the failure's kind (``ssh_refused`` when no login came).

        Raises:
            NotFoundError: no such instance, or not labelled as ours.
            SSHError: no login within the service's SSH deadline.
        """
        instance_id = validate_instance_id(instance_id)
        inst = await self.client.show_instance(instance_id)
        parsed = parse_label(inst.label)
        if parsed is None:
            raise NotFoundError(f"instance {instance_id} does not carry a vastai-async label")
        self._hold_owner_lock()  # it will carry our owner id: a reaper must see us alive
        label = race_label(self.owner, parsed.job_id, new_race_id())
        await self.client.set_label(instance_id, label)
        try:
            rental = await self._first_contact(inst, job_id=parsed.job_id, label=label)
        except SSHError as err:  # about the machine (not, say, our own key): remember it
            self._reputation.save_adopted(inst, err)
            raise
        self._reputation.save_adopted(inst, None)
        return rental

    async def _first_contact(self, inst: Instance, *, job_id: str, label: str) -> Rental:
        # Prove a login (the one probe-until-login the SDK uses to prove readiness), check or
        # pin the host key, and hand back a Rental.
        instance_id = inst.id
        client_key = self._key()
        pin = await self.known_hosts.aget(instance_id)
        endpoints = inst.ssh_endpoints()
        if not endpoints:
            raise SSHError("the instance lists no SSH endpoint", instance_id=instance_id)
        timings = self.timings
        try:
            res = await wait_for_login(
                [(e.host, e.port) for e in endpoints],
                client_key=client_key,
                deadline=time.monotonic() + timings.ssh_s,
                pause_s=timings.probe_pause_s,
                connect_timeout=timings.connect_timeout_s,
                login_timeout=timings.login_timeout_s,
                username=endpoints[0].user,
            )
        except SSHLoginTimeoutError as err:
            last = "; ".join(f"{r.port}: {r.reason}" for r in err.results) or "no attempt"
            raise SSHError(f"no SSH login ({last})", instance_id=instance_id) from err
        assert res.host_key is not None
        if pin is not None and pin.key.split()[:2] != res.host_key.split()[:2]:
            raise SSHError("host key differs from the pinned one", instance_id=instance_id)
        endpoint = next(e for e in endpoints if (e.host, e.port) == (res.host, res.port))
        await self.known_hosts.apin(instance_id, endpoint.host, endpoint.port, res.host_key)
        info = RentalInfo(
            instance_id=instance_id,
            job_id=job_id,
            owner=self.owner,
            label=label,
            ssh=endpoint,
            host_key=res.host_key,
            created_at=inst.start_date or time.time(),
            dph_total=inst.dph_total,
            ready_at=time.time(),
        )
        return self._rental(info, client_key)

    async def list_rentals(
        self, *, job_id: str | None = None, owner: str | None = None, all_owners: bool = False
    ) -> list[RentalSummary]:
        """Instances carrying our label prefix.

        Args:
            job_id: only this job's.
            owner: only this owner's (default: this service's, unless ``all_owners``).
            all_owners: every owner's, kept rentals included.
        """
        if job_id is not None:
            validate_id("job_id", job_id)
        wanted_owner = owner if owner is not None else (None if all_owners else self.owner)
        result = []
        for summary in await self._our_instances():
            if job_id is not None and summary.job_id != job_id:
                continue
            if wanted_owner is not None and summary.owner != wanted_owner:
                continue
            result.append(summary)
        return result

    async def _our_instances(self) -> list[RentalSummary]:
        summaries = []
        for inst in await self.client.list_instances():
            parsed = parse_label(inst.label)
            if parsed is None:
                continue
            summaries.append(_summary(inst, parsed.job_id, parsed.owner, parsed.kept))
        return summaries

    async def reap(
        self,
        *,
        job_id: str | None = None,
        owner: str | None = None,
        older_than_s: float | None = None,
        dry_run: bool = False,
    ) -> ReapReport:
        """Destroy our instances that are named, orphaned, or old; spare the rest.

        An instance is destroyed when it carries our label and its job is ``job_id``, or its
        owner is ``owner``, or its owner is proven dead (same host, process gone), or it is older
        than ``older_than_s``. Kept rentals (``detach``), instances of live races of this
        service, and instances without our label are never touched.

        Args:
            job_id: destroy this job's instances.
            owner: destroy this owner's instances.
            older_than_s: destroy instances created longer ago than this.
            dry_run: report only.

        Returns:
            What was destroyed and what was spared, each with a reason.
        """
        if job_id is not None:
            validate_id("job_id", job_id)
        if owner is not None:
            validate_id("owner", owner)
        if older_than_s is not None and not older_than_s >= 0:
            raise InvalidRequestError("older_than_s must be >= 0")
        report = plan_reap(
            await self.client.list_instances(),
            job_id=job_id,
            owner=owner,
            older_than_s=older_than_s,
            live=self._custody.live_ids(),
            now=time.time(),
            is_dead=lambda owner: owner_is_dead(owner, self.config.state_dir),
        )
        if not dry_run and report.destroyed:
            # One batch through custody: one bulk destroy and one confirming listing per tick.
            ids = [instance_id for instance_id, _ in report.destroyed]
            await self._custody.destroy(ids, budget_s=self.timings.teardown_budget_s, reason="reap")
            for instance_id in ids:
                await self.known_hosts.aremove(instance_id)
        return report


def _reputation(
    history: HostHistory | Literal[False] | None, config: VastAIConfig, log: logging.Logger
) -> HostReputation:
    if history is False:
        return HostReputation(None, logger=log, owns_history=False)
    if history is None:
        from vastai_async.reputation.sqlite_store import SQLiteHostHistory

        return HostReputation(
            SQLiteHostHistory.in_state_dir(config.state_dir), logger=log, owns_history=True
        )
    return HostReputation(history, logger=log, owns_history=False)


def _summary(inst: Instance, job_id: str, owner: str | None, kept: bool) -> RentalSummary:
    return RentalSummary(
        instance_id=inst.id,
        job_id=job_id,
        owner=owner,
        kept=kept,
        label=inst.label or "",
        status=inst.actual_status,
        dph_total=inst.dph_total,
        start_date=inst.start_date,
    )
