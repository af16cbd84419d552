"""VastAIClient: one typed coroutine per Vast.ai REST endpoint (vast-api.md).

Dicts go in, frozen models come out (through :mod:`vastai_async._converter`). The client never
retries or paces: :class:`~vastai_async.session.VastAISession` does, and the client only tells it
which calls are idempotent and which one may rent a machine (``kind="create"``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

from vastai_async import _converter
from vastai_async.config import VastAIConfig
from vastai_async.errors import (
    INSTANCE_GONE_CODES,
    APITimeoutError,
    BadRequestError,
    CreateOutcomeUnknownError,
    NotFoundError,
    ResponseValidationError,
)
from vastai_async.models import (
    CHANGE_BID_RANGE,
    MAX_LABEL_CHARS,
    CreateInstanceRequest,
    CreateInstanceResponse,
    Instance,
    InstancePage,
    InvalidRequestError,
    Offer,
    SSHKey,
    Template,
    User,
)
from vastai_async.session import VastAISession

__all__ = ["LIST_PAGE_LIMIT", "MAX_FILTER_QUERY_CHARS", "VastAIClient"]

#: The v1 list endpoint's largest page.
LIST_PAGE_LIMIT: Final = 25
#: Budget for the ``id`` filter of one list call, in characters before URL encoding; servers
#: refuse request lines over ~8 KB and encoding can triple the length.
MAX_FILTER_QUERY_CHARS: Final = 1500

_SEARCH = "/api/v0/bundles/"
_CREATE = "/api/v0/asks/{id}/"
_LIST_V1 = "/api/v1/instances/"
_INSTANCE = "/api/v0/instances/{id}/"
_INSTANCES = "/api/v0/instances/"
_BID = "/api/v0/instances/bid_price/{id}/"
_REBOOT = "/api/v0/instances/reboot/{id}/"
_LOGS = "/api/v0/instances/request_logs/{id}/"
_INSTANCE_SSH = "/api/v0/instances/{id}/ssh/"
_SSH_KEYS = "/api/v0/ssh/"
_SSH_KEY = "/api/v0/ssh/{id}/"
_USER = "/api/v0/users/current"  # the official CLI sends no trailing slash
_TEMPLATES = "/api/v0/template/"


class VastAIClient:
    """Typed Vast.ai endpoints over a :class:`VastAISession`.

    Args:
        session: the transport; the client closes it only when built by :meth:`from_config`.
    """

    def __init__(self, session: VastAISession) -> None:
        self.session = session
        self._owns_session = False

    @classmethod
    def from_config(cls, config: VastAIConfig, **session_options: Any) -> VastAIClient:
        """A client owning a new session: ``async with VastAIClient.from_config(cfg) as c``.

        Args:
            config: the SDK configuration.
            **session_options: passed to :class:`VastAISession` (``retry``, ``pacing`` ...).
        """
        client = cls(VastAISession(config, **session_options))
        client._owns_session = True
        return client

    def __repr__(self) -> str:
        return f"VastAIClient({self.session!r})"

    async def __aenter__(self) -> VastAIClient:
        if self._owns_session:
            await self.session.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this client owns it (idempotent)."""
        if self._owns_session:
            await self.session.close()

    # -- offers and creation -----------------------------------------------------------------

    async def search_offers(self, query: Mapping[str, Any]) -> list[Offer]:
        """Search rentable offers (``POST /bundles/``).

        Args:
            query: the Vast query object, sent as given (see :mod:`vastai_async.query`).

        Returns:
            The offers, in the server's order.
        """
        data = await self.session.request("POST", _SEARCH, json=dict(query), idempotent=True)
        ctx: dict[str, Any] = {"method": "POST", "path": _SEARCH}
        return _converter.structure_list(_field(data, "offers", ctx), Offer, **ctx)

    async def create_instance(
        self,
        offer_id: int,
        request: CreateInstanceRequest,
        *,
        before_send: Callable[[], None] | None = None,
    ) -> CreateInstanceResponse:
        """Rent an offer (``PUT /asks/{id}/``). Never retried once it may have arrived.

        Args:
            offer_id: the offer's ``id``.
            request: image, env, disk, label ... (sent as :meth:`CreateInstanceRequest.to_wire`).
            before_send: see :meth:`VastAISession.request` (custody's withdrawal hook).

        Returns:
            The new instance id (``new_contract``) and its instance API key.

        Raises:
            OfferUnavailableError: ``no_such_ask``: rented by someone else or withdrawn.
            CreateOutcomeUnknownError: the answer was lost; find the instance by ``label``.
        """
        try:
            data = await self.session.request(
                "PUT",
                _CREATE,
                path_params={"id": offer_id},
                json=request.to_wire(),
                kind="create",
                idempotent=False,
                before_send=before_send,
            )
        except CreateOutcomeUnknownError as err:
            err.label = request.label
            raise
        ctx: dict[str, Any] = {"method": "PUT", "path": _CREATE, "offer_id": offer_id}
        return _converter.structure(data, CreateInstanceResponse, **ctx)

    # -- instances ---------------------------------------------------------------------------

    async def show_instance(self, instance_id: int) -> Instance:
        """One instance (``GET /instances/{id}/?owner=me``).

        Raises:
            NotFoundError: the answer is ``{"instances": null}`` (no such instance).
        """
        data = await self.session.request(
            "GET", _INSTANCE, path_params={"id": instance_id}, params={"owner": "me"}
        )
        ctx: dict[str, Any] = {"method": "GET", "path": _INSTANCE, "instance_id": instance_id}
        item = _field(data, "instances", ctx, allow_none=True)
        if isinstance(item, list) and len(item) == 1:  # liberal: a one-item list
            item = item[0]
        if item is None or item == []:
            raise NotFoundError("no such instance", status=200, code="no_such_instance", **ctx)
        return _converter.structure(item, Instance, **ctx)

    async def list_instances(
        self,
        *,
        select_filters: Mapping[str, Any] | None = None,
        label: str | None = None,
        ids: Iterable[int] | None = None,
    ) -> list[Instance]:
        """The account's instances (v1 list), every page, ordered by id.

        Args:
            select_filters: column filters such as ``{"actual_status": {"eq": "running"}}``.
            label: only instances with exactly this label.
            ids: only these instance ids; long lists are split over several calls so that each
                URL stays well under the servers' ~8 KB limit.

        Returns:
            The instances, each once.

        Raises:
            ResponseValidationError: a page is malformed (never read as "no instances").
        """
        base: dict[str, Any] = dict(select_filters or {})
        if label is not None:
            base["label"] = {"eq": label}
        if ids is None:
            filter_sets = [base]
        else:
            chunks = _chunk_ids(ids)
            if not chunks:
                return []
            filter_sets = [{**base, "id": {"in": chunk}} for chunk in chunks]
        found: dict[int, Instance] = {}
        for filters in filter_sets:
            async for page in self._instance_pages(filters):
                for instance in page.instances:
                    found.setdefault(instance.id, instance)
        return sorted(found.values(), key=lambda inst: inst.id)

    async def list_instances_page(
        self, select_filters: Mapping[str, Any], after_token: str | None = None
    ) -> InstancePage:
        """One page (at most 25 rows) of the v1 list.

        Raises:
            ResponseValidationError: the page lacks an ``instances`` list.
        """
        params: dict[str, Any] = {
            "select_filters": dict(select_filters),
            "order_by": [{"col": "id", "dir": "asc"}],
            "limit": LIST_PAGE_LIMIT,
        }
        if after_token is not None:
            params["after_token"] = after_token
        data = await self.session.request("GET", _LIST_V1, params=params)
        ctx: dict[str, Any] = {"method": "GET", "path": _LIST_V1}
        if not isinstance(_field(data, "instances", ctx), list):
            raise ResponseValidationError("instance page: 'instances' is not a list", **ctx)
        return _converter.structure(data, InstancePage, **ctx)

    async def _instance_pages(self, filters: Mapping[str, Any]) -> Any:
        seen: set[str] = set()
        token: str | None = None
        while True:
            page = await self.list_instances_page(filters, token)
            yield page
            token = page.next_token
            if token is None:
                return
            if token in seen:  # a server repeating itself must not loop us forever
                raise ResponseValidationError(
                    "instance list repeated a next_token", method="GET", path=_LIST_V1
                )
            seen.add(token)

    async def destroy_instance(self, instance_id: int) -> bool:
        """Destroy one instance (``DELETE /instances/{id}/``), retried until answered.

        Returns:
            ``True`` when destroyed now, ``False`` when it was already gone: any documented
            "gone" answer, i.e. a 404 ``not_found`` (the published spec) or
            ``no_such_instance`` (e.g. a retry after a lost answer, or a second destroy).
        """
        try:
            await self.session.request(
                "DELETE", _INSTANCE, path_params={"id": instance_id}, idempotent=True
            )
        except NotFoundError as err:
            if err.code in INSTANCE_GONE_CODES:
                return False
            raise
        return True

    async def destroy_instances(self, instance_ids: Sequence[int]) -> None:
        """Bulk destroy (``DELETE /instances/`` with ``instance_ids``). Confirm with a list call.

        The bulk route is what the official client sends; the published spec does not list it.
        When it answers 404 (an id already gone, or no such route), each instance is destroyed
        on its own instead, where a "gone" answer counts as destroyed.
        """
        if not instance_ids:
            return
        ids = [int(i) for i in instance_ids]
        try:
            await self.session.request(
                "DELETE", _INSTANCES, json={"instance_ids": ids}, idempotent=True
            )
        except NotFoundError:
            for instance_id in ids:
                await self.destroy_instance(instance_id)

    async def start_instance(self, instance_id: int) -> None:
        """Start a stopped instance (may fail as ``success: false``, ``resources_unavailable``)."""
        await self._put_instance(instance_id, {"state": "running"})

    async def stop_instance(self, instance_id: int) -> None:
        """Stop an instance (its disk stays billed)."""
        await self._put_instance(instance_id, {"state": "stopped"})

    async def set_label(self, instance_id: int, label: str) -> None:
        """Set an instance's label (at most 1024 characters).

        Raises:
            InvalidRequestError: the label is too long (nothing is sent).
        """
        if len(label) > MAX_LABEL_CHARS:
            raise InvalidRequestError(f"label is longer than {MAX_LABEL_CHARS} characters")
        await self._put_instance(instance_id, {"label": label})

    async def _put_instance(self, instance_id: int, body: dict[str, Any]) -> None:
        await self.session.request(
            "PUT", _INSTANCE, path_params={"id": instance_id}, json=body, idempotent=True
        )

    async def change_bid(self, instance_id: int, price: float) -> None:
        """Set an interruptible instance's bid, USD/hour.

        Raises:
            InvalidRequestError: the price is outside the spec's 0.001..32 (nothing is sent).
        """
        low, high = CHANGE_BID_RANGE
        if not (math.isfinite(price) and low <= price <= high):
            raise InvalidRequestError(f"bid price must be between {low:g} and {high:g} USD/hour")
        body = {"client_id": "me", "price": float(price)}
        await self.session.request(
            "PUT", _BID, path_params={"id": instance_id}, json=body, idempotent=True
        )

    async def reboot(self, instance_id: int) -> None:
        """Reboot an instance's container (not retried once it may have arrived)."""
        await self.session.request("PUT", _REBOOT, path_params={"id": instance_id})

    async def request_logs(
        self,
        instance_id: int,
        tail: int = 1000,
        *,
        poll_interval_s: float = 0.3,
        max_wait_s: float = 30.0,
    ) -> str:
        """The instance's container log: asks for it, then polls its ``result_url``.

        The ``result_url`` is a third-party URL: it is fetched without credentials.

        Args:
            instance_id: the instance.
            tail: how many lines from the end.
            poll_interval_s: pause between two fetches of the ``result_url``.
            max_wait_s: how long the log may take to appear.

        Raises:
            APITimeoutError: the log did not appear within ``max_wait_s``.
        """
        data = await self.session.request(
            "PUT",
            _LOGS,
            path_params={"id": instance_id},
            json={"tail": str(int(tail))},  # the official client sends the number as text
            idempotent=True,
        )
        ctx: dict[str, Any] = {"method": "PUT", "path": _LOGS, "instance_id": instance_id}
        url = _field(data, "result_url", ctx)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ResponseValidationError("request_logs: result_url is not a URL", **ctx)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        while True:
            answer = await self.session.fetch_external(url)
            if answer.status == 200:
                return answer.text
            if loop.time() + poll_interval_s > deadline:
                raise APITimeoutError(
                    f"log not ready after {max_wait_s:g}s (last status {answer.status})", **ctx
                )
            await asyncio.sleep(poll_interval_s)

    # -- SSH keys ----------------------------------------------------------------------------

    async def attach_ssh_key(self, instance_id: int, public_key: str) -> None:
        """Attach a public key to one instance (``POST /instances/{id}/ssh/``; idempotent)."""
        await self.session.request(
            "POST",
            _INSTANCE_SSH,
            path_params={"id": instance_id},
            json={"ssh_key": public_key.strip()},
            idempotent=True,
        )

    async def list_ssh_keys(self) -> list[SSHKey]:
        """The public keys registered on the account (``GET /ssh/``).

        The spec answers 404 "No SSH keys found" when there are none: that is ``[]``.
        """
        ctx: dict[str, Any] = {"method": "GET", "path": _SSH_KEYS}
        try:
            data = await self.session.request("GET", _SSH_KEYS)
        except NotFoundError:
            return []
        if isinstance(data, dict):  # liberal: a wrapped list
            data = next((data[k] for k in ("ssh_keys", "keys") if k in data), data)
        return _converter.structure_list(data, SSHKey, **ctx)

    async def add_ssh_key(self, public_key: str) -> SSHKey | None:
        """Register a public key on the account (``POST /ssh/``; not retried once sent).

        Vast adds the key to every current instance of the account, and later creates get it
        too. The answer's ``key`` object carries ``public_key`` (the spec).

        Returns:
            The new key when the answer describes it, else ``None``.
        """
        data = await self.session.request("POST", _SSH_KEYS, json={"ssh_key": public_key.strip()})
        ctx: dict[str, Any] = {"method": "POST", "path": _SSH_KEYS}
        if isinstance(data, dict):
            item = next(
                (data[k] for k in ("key", "ssh_key") if isinstance(data.get(k), dict)), data
            )
            if "id" in item and ("public_key" in item or "key" in item):
                return _converter.structure(item, SSHKey, **ctx)
        return None

    async def delete_ssh_key(self, key_id: int) -> bool:
        """Remove a key from the account (``DELETE /ssh/{id}/``).

        Returns:
            ``True`` when removed now, ``False`` when there was no such key (the spec's 400
            ``no_ssh_key``, e.g. a retry of a delete that had already landed).
        """
        try:
            await self.session.request(
                "DELETE", _SSH_KEY, path_params={"id": key_id}, idempotent=True
            )
        except NotFoundError:
            return False
        except BadRequestError as err:
            if err.code == "no_ssh_key":
                return False
            raise
        return True

    # -- account -----------------------------------------------------------------------------

    async def current_user(self) -> User:
        """The account behind the key (``GET /users/current``)."""
        data = await self.session.request("GET", _USER)
        return _converter.structure(data, User, method="GET", path=_USER)

    async def templates(self, select_filters: Mapping[str, Any] | None = None) -> list[Template]:
        """Templates (``GET /template/``), optionally filtered."""
        params = {"select_filters": dict(select_filters)} if select_filters else None
        data = await self.session.request("GET", _TEMPLATES, params=params)
        ctx: dict[str, Any] = {"method": "GET", "path": _TEMPLATES}
        return _converter.structure_list(_field(data, "templates", ctx), Template, **ctx)


def _field(data: Any, key: str, ctx: Mapping[str, Any], *, allow_none: bool = False) -> Any:
    """``data[key]``, or ResponseValidationError when the body is not an object holding it."""
    if not isinstance(data, dict) or key not in data:
        raise ResponseValidationError(f"response lacks {key!r}", **ctx)
    value = data[key]
    if value is None and not allow_none:
        raise ResponseValidationError(f"response has {key!r}: null", **ctx)
    return value


def _chunk_ids(ids: Iterable[int]) -> list[list[int]]:
    """Split ids (deduplicated, in order) so each chunk's JSON stays under the filter budget."""
    chunks: list[list[int]] = []
    current: list[int] = []
    size = 0
    for value in dict.fromkeys(int(i) for i in ids):
        cost = len(str(value)) + 1
        if current and size + cost > MAX_FILTER_QUERY_CHARS:
            chunks.append(current)
            current, size = [], 0
        current.append(value)
        size += cost
    if current:
        chunks.append(current)
    return chunks
