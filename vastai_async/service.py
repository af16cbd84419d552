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
import time
from collections.abc import Mapping, Sequence

import aiohttp
import asyncssh
import attrs

from vastai_async._arguments import search_query, validate_provision_args, validate_search_args
from vastai_async._logging import get_logger
from vastai_async._poller import InstancePoller
from vastai_async._race_types import ProbeFn
from vastai_async._reaping import plan_reap
from vastai_async._requests import build_create_request
from vastai_async._teardown import run_uncancellable
from vastai_async.client import VastAIClient
from vastai_async.config import VastAIConfig, get_vastai_config
from vastai_async.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    OfferUnavailableError,
    PermissionDeniedError,
    SSHError,
    TeardownError,
    VastAIError,
)
from vastai_async.events import EventCallback, EventEmitter
from vastai_async.known_hosts import KnownHostsStore
from vastai_async.labels import parse_label, race_label, validate_id
from vastai_async.models import Instance, Offer, RentalInfo, SSHEndpoint
from vastai_async.provider import AsyncComputeProvider, ReapReport, RentalSummary
from vastai_async.provisioning import ProbeOutcome, Race, new_race_id
from vastai_async.query import OfferQuery
from vastai_async.rental import Rental
from vastai_async.session import RetryPolicy, VastAISession
from vastai_async.ssh import load_client_key, probe
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
        retry: how requests are retried; default :class:`~vastai_async.RetryPolicy`.
        client: a :class:`~vastai_async.VastAIClient` to use (and not close) instead of one
            built from ``config``; ``http_session`` and ``retry`` then do not apply.
    """

    def __init__(
        self,
        config: VastAIConfig | None = None,
        *,
        logger: logging.Logger | None = None,
        http_session: aiohttp.ClientSession | None = None,
        timings: Timings | None = None,
        on_event: EventCallback | None = None,
        retry: RetryPolicy | None = None,
        client: VastAIClient | None = None,
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
        self._client_key: asyncssh.SSHKey | None = None
        self._poller: InstancePoller | None = None
        self._claimed_offers: set[int] = set()
        self._races: set[Race] = set()
        self._late_sweeps: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"VastAIService(owner={self.owner!r}, root={self._session.root!r})"

    async def __aenter__(self) -> VastAIService:
        await self._session.__aenter__()
        return self

    async def close(self) -> None:
        """Finish late sweeps, stop the poller and close the HTTP session (idempotent).

        A race that lost a create's answer sweeps its label in the background for a while
        (twice the request timeout); closing waits for those sweeps up to the teardown budget.

        Live rentals are not destroyed by closing; races in flight are torn down by their own
        cancellation.
        """
        if self._closed:
            return
        self._closed = True
        if self._late_sweeps:
            # A late create must not outlive the service unseen, but closing is bounded by the
            # teardown budget; past it the label is logged for ``reap``.
            sweeps = set(self._late_sweeps)
            _, pending = await asyncio.wait(sweeps, timeout=self.timings.teardown_budget_s)
            for task in pending:
                self._log.warning("stopping a late sweep at close (%s): run reap", task.get_name())
                task.cancel()
            await asyncio.gather(*sweeps, return_exceptions=True)
        if self._poller is not None:
            await self._poller.close()
        if self._owns_session:
            await self._session.close()

    def live_instance_ids(self) -> list[int]:
        """Instances created by races still running in this service (for a last-resort message)."""
        return sorted({i for race in self._races for i in race.live_instance_ids})

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
        candidates = await self._candidates(
            offer_id=offer_id, offers=offers, query=query, disk_gb=request.disk_gb
        )
        race_timings = timings if timings is not None else self.timings
        client_key = self._key()
        race_id = new_race_id()
        emitter = EventEmitter([self._on_event, on_event], self._log)
        race = Race(
            client=self.client,
            poller=self._get_poller(),
            probe=self._make_probe(client_key, race_timings),
            emitter=emitter,
            job_id=job_id,
            label=race_label(self.owner, job_id, race_id),
            race_id=race_id,
            offers=candidates,
            request=request,
            public_key=self.config.ssh_identity()[1],
            fan_out=fan_out,
            timings=race_timings,
            max_spend_usd=max_spend_usd,
            claim=self._claim,
            release=self._release,
            logger=self._log,
        )
        self._races.add(race)
        keep: int | None = None
        try:
            result = await race.run()
            keep = result.instance_id
        finally:
            self._races.discard(race)
            if race.unknown_creates:
                self._sweep_late(race, keep)
        try:
            self.known_hosts.pin(
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
        )
        return self._rental(info, client_key)

    def _sweep_late(self, race: Race, keep: int | None) -> None:
        # A create whose answer was lost may land after the race's teardown: keep sweeping its
        # label in the background until twice our request timeout after that create failed
        # (a server holding it that long again). ``reap`` remains the backstop.
        failed_at = race.last_unknown_create_at or time.monotonic()
        window = failed_at + 2 * self.timings.request_timeout_s - time.monotonic()
        task = asyncio.create_task(
            race.sweep_late(keep=keep, window_s=max(0.0, window)),
            name=f"late sweep of label {race.label}",
        )
        self._late_sweeps.add(task)
        task.add_done_callback(self._late_sweeps.discard)

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
                base = query if query is not None else OfferQuery.from_config(self.config)
                if base.min_disk_gb is None or base.min_disk_gb < disk_gb:
                    query = attrs.evolve(base, min_disk_gb=disk_gb)
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
        return Rental(
            info=info, service=self, client_key=client_key, key_path=self.config.ssh_identity()[0]
        )

    # -- lifecycle of existing instances --------------------------------------------------

    async def terminate_instance(self, instance_id: int) -> bool:
        """Destroy an instance and confirm it is gone.

        Transient failures (5xx, dropped connections, malformed answers) are retried within
        the teardown budget.

        Returns:
            ``True`` when this call destroyed it, ``False`` when it was already gone.

        Raises:
            TeardownError: not confirmed gone within the teardown budget, or the key was refused.
        """
        deadline = time.monotonic() + self.timings.teardown_budget_s
        destroyed: bool | None = None
        while True:
            try:
                answer = await self.client.destroy_instance(instance_id)
                destroyed = answer if destroyed is None else destroyed
                listed = await self.client.list_instances(ids=[instance_id])
            except (AuthenticationError, PermissionDeniedError) as err:
                raise TeardownError(
                    f"cannot destroy instance {instance_id}: {err}", instance_ids=[instance_id]
                ) from err
            except VastAIError as err:
                # A 500 or a lost answer must not leave the machine billing: retry within the
                # teardown budget, as the race's own teardown does.
                if time.monotonic() >= deadline:
                    raise TeardownError(
                        f"instance {instance_id} not confirmed destroyed (last error: {err})",
                        instance_ids=[instance_id],
                    ) from err
                self._log.warning("destroying instance %s failed, retrying: %s", instance_id, err)
            else:
                if not any(i.id == instance_id for i in listed):
                    break
                if time.monotonic() >= deadline:
                    raise TeardownError(
                        f"instance {instance_id} still listed after destroy",
                        instance_ids=[instance_id],
                    )
            await asyncio.sleep(self.timings.poll_interval_s)
        self.known_hosts.remove(instance_id)
        return bool(destroyed)

    async def get_rental(self, instance_id: int) -> Rental:
        """Rebuild a :class:`Rental` for an instance of ours from its pinned host key.

        Raises:
            NotFoundError: no such instance, or it is not labelled as ours.
            SSHError: no host key was pinned for it in this state directory (use :meth:`adopt`).
        """
        inst = await self.client.show_instance(instance_id)
        parsed = parse_label(inst.label)
        if parsed is None:
            raise NotFoundError(f"instance {instance_id} does not carry a vastai-async label")
        pin = self.known_hosts.get(instance_id)
        if pin is None:
            raise SSHError(
                "no host key pinned for this instance in this state directory; use adopt()",
                instance_id=instance_id,
            )
        endpoint = next(
            (e for e in inst.ssh_endpoints() if (e.host, e.port) == (pin.host, pin.port)),
            SSHEndpoint(host=pin.host, port=pin.port, kind="proxy"),
        )
        info = RentalInfo(
            instance_id=instance_id,
            job_id=parsed.job_id,
            owner=parsed.owner or self.owner,
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
        host key if this state directory has none), and returns a :class:`Rental`.

        Raises:
            NotFoundError: no such instance, or not labelled as ours.
            SSHError: no login within the service's SSH deadline.
        """
        inst = await self.client.show_instance(instance_id)
        parsed = parse_label(inst.label)
        if parsed is None:
            raise NotFoundError(f"instance {instance_id} does not carry a vastai-async label")
        label = race_label(self.owner, parsed.job_id, new_race_id())
        await self.client.set_label(instance_id, label)
        client_key = self._key()
        pin = self.known_hosts.get(instance_id)
        probe_once = self._make_probe(client_key, self.timings)
        deadline = time.monotonic() + self.timings.ssh_s
        last = "no SSH endpoint"
        while time.monotonic() < deadline:
            for endpoint in inst.ssh_endpoints():
                outcome: ProbeOutcome = await probe_once(endpoint)
                if outcome.ok and outcome.host_key:
                    if pin is not None and pin.key.split()[:2] != outcome.host_key.split()[:2]:
                        raise SSHError(
                            "host key differs from the pinned one", instance_id=instance_id
                        )
                    self.known_hosts.pin(
                        instance_id, endpoint.host, endpoint.port, outcome.host_key
                    )
                    info = RentalInfo(
                        instance_id=instance_id,
                        job_id=parsed.job_id,
                        owner=self.owner,
                        label=label,
                        ssh=endpoint,
                        host_key=outcome.host_key,
                        created_at=inst.start_date or time.time(),
                        dph_total=inst.dph_total,
                        ready_at=time.time(),
                    )
                    return self._rental(info, client_key)
                last = outcome.reason or "failed"
            await asyncio.sleep(self.timings.probe_pause_s)
            inst = await self.client.show_instance(instance_id)
        raise SSHError(f"adopt: no SSH login ({last})", instance_id=instance_id)

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
            live=set(self.live_instance_ids()),
            now=time.time(),
        )
        if not dry_run:
            for instance_id, _ in report.destroyed:
                await self.terminate_instance(instance_id)
        return report


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
