"""VastAISession: the one place that talks HTTP to Vast.ai.

It owns (or borrows) the ``aiohttp.ClientSession``, builds ``/api/v0`` and ``/api/v1`` URLs from
the server root, adds the Bearer header per request to the API origin only, paces each route,
retries through ``backoff`` (:mod:`vastai_async._retry`) and turns every failure into the
:mod:`vastai_async.errors` tree. Endpoints live in :mod:`vastai_async.client`.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
import logging
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal, NoReturn
from urllib.parse import quote

import aiohttp
import attrs
from multidict import CIMultiDictProxy
from yarl import URL

from vastai_async._logging import get_logger, install_redaction, register_secret
from vastai_async._pacer import RoutePacer
from vastai_async._retry import RetryableFailure, RetryPolicy, build_retrying, server_wait_s
from vastai_async._wire import decode_error_body, encode_query, error_fields
from vastai_async.config import VastAIConfig
from vastai_async.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    CreateOutcomeUnknownError,
    RateLimitedError,
    ResponseValidationError,
    make_status_error,
)
from vastai_async.pacing import Pacing
from vastai_async.timings import Timings

__all__ = ["Exchange", "ExternalResponse", "RequestKind", "RetryPolicy", "VastAISession"]

#: ``read``: no side effect; ``write``: changes state; ``create``: may rent a machine.
RequestKind = Literal["read", "write", "create"]

_RETRIED_STATUSES = frozenset({502, 503, 504})


@attrs.frozen(kw_only=True)
class ExternalResponse:
    """The answer of a third-party URL (a logs ``result_url``).

    Attributes:
        status: HTTP status.
        text: body decoded as UTF-8 (invalid bytes replaced).
    """

    status: int
    text: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class Exchange:
    """One answered attempt, as handed to :attr:`VastAISession.observers` (contract tests).

    Attributes:
        method: HTTP method.
        template: path template (``/api/v0/instances/{id}/``).
        params: query values as sent (strings), or ``None``.
        body: the JSON body as sent (may hold secrets: never log it).
        status: HTTP status answered.
        response: the raw response body.
    """

    method: str
    template: str
    params: Mapping[str, str] | None
    body: Any = attrs.field(repr=False)
    status: int
    response: bytes = attrs.field(repr=False)


def _disable_silent_replay(http: aiohttp.ClientSession) -> None:
    """Stop aiohttp from re-sending a PUT/DELETE after a dropped connection.

    aiohttp (3.14) silently repeats a request whose method RFC 9110 calls idempotent, PUT
    included, once after ``ServerDisconnectedError``/``ClientOSError``. Vast's create is a PUT:
    a replay could rent a second machine, and it would bypass our pacing and retry accounting.
    There is no public switch; ``aiohttp.test_utils`` flips the same private attribute. A test
    checks on a real socket that a dropped create reaches the server exactly once.
    """
    if getattr(http, "_retry_connection", False):
        http._retry_connection = False


@attrs.define
class _Call:
    """One logical request, across its attempts."""

    method: str
    template: str
    url: URL
    params: dict[str, str] | None
    body: Any
    timeout: aiohttp.ClientTimeout
    kind: RequestKind
    idempotent: bool
    instance_id: int | None
    offer_id: int | None
    started: float
    attempt: int = 0
    before_send: Callable[[], None] | None = None


class VastAISession:
    """Async HTTP session for the Vast.ai API.

    Use it as ``async with VastAISession(config) as session``. The ``aiohttp.ClientSession`` is
    created inside the running loop (on enter or first request) and closed by :meth:`close`,
    unless one was passed in: a borrowed session is never closed here. On either, aiohttp's
    silent one-time replay of PUT/DELETE after a dropped connection is switched off (a replayed
    create could rent twice); retries happen here, paced and counted.

    Args:
        config: the SDK configuration (key, base URL, timings, pacing).
        session: an ``aiohttp.ClientSession`` to borrow instead of creating one.
        timings: overrides ``config.timings`` (request and connect timeouts).
        pacing: overrides ``config.pacing`` (per-route minimum intervals).
        retry: the retry policy; defaults to ``RetryPolicy()``.
        logger: where DEBUG request lines go; defaults to ``vastai_async.session``.
    """

    def __init__(
        self,
        config: VastAIConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        timings: Timings | None = None,
        pacing: Pacing | None = None,
        retry: RetryPolicy | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        root = URL(config.api_root)
        if not root.is_absolute() or root.scheme not in ("http", "https"):
            raise ValueError("api_base_url must be an absolute http(s) URL")
        self._root = str(root).rstrip("/")
        self._origin = root.origin()
        self._api_key = config.api_key
        register_secret(config.api_key)
        self.timings = timings if timings is not None else config.timings
        self.retry = retry if retry is not None else RetryPolicy()
        self._log = install_redaction(logger) if logger is not None else get_logger(__name__)
        self._http = session
        self._owns_http = session is None
        self._closed = False
        self._pacer = RoutePacer(pacing if pacing is not None else config.pacing)
        #: Called with every answered attempt, in order; an exception in one propagates.
        self.observers: list[Callable[[Exchange], None]] = []
        self._with_retries = build_retrying(self.retry, on_backoff=self._on_backoff)(self._attempt)

    def __repr__(self) -> str:
        return f"VastAISession(root={self._root!r}, owns_http={self._owns_http})"

    @property
    def pacing(self) -> Pacing:
        """The per-route minimum intervals in force."""
        return self._pacer.pacing

    @property
    def root(self) -> str:
        """The server root, e.g. ``https://console.vast.ai``."""
        return self._root

    @property
    def default_timeout(self) -> aiohttp.ClientTimeout:
        """Per-request timeout from the timings (total and connect)."""
        return aiohttp.ClientTimeout(
            total=self.timings.request_timeout_s, connect=self.timings.connect_timeout_s
        )

    async def __aenter__(self) -> VastAISession:
        self._ensure_http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the owned ``aiohttp`` session (a borrowed one is left open). Idempotent."""
        self._closed = True
        http, self._http = self._http, None
        if http is not None and self._owns_http:
            await http.close()

    def _ensure_http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise APIConnectionError("the VastAISession is closed")
        if self._http is None:
            # Created here, inside the running loop; no default headers (auth is per request).
            self._http = aiohttp.ClientSession(timeout=self.default_timeout)
        if self._http.closed:
            raise APIConnectionError("the aiohttp session given to VastAISession is closed")
        _disable_silent_replay(self._http)
        return self._http

    def url(self, template: str, path_params: Mapping[str, object] | None = None) -> URL:
        """The absolute URL of a path template such as ``/api/v0/instances/{id}/``."""
        if not template.startswith(("/api/v0/", "/api/v1/")):
            raise ValueError(f"path template must start with /api/v0/ or /api/v1/: {template!r}")
        values = {k: quote(str(v), safe="") for k, v in (path_params or {}).items()}
        return URL(self._root + template.format(**values), encoded=True)

    async def request(
        self,
        method: str,
        template: str,
        *,
        path_params: Mapping[str, object] | None = None,
        params: Mapping[str, object] | None = None,
        json: Any = None,
        timeout: float | aiohttp.ClientTimeout | None = None,  # noqa: ASYNC109 (per attempt)
        idempotent: bool | None = None,
        kind: RequestKind | None = None,
        before_send: Callable[[], None] | None = None,
    ) -> Any:
        """Send one API request (paced, retried) and return its parsed JSON body.

        Args:
            method: HTTP method.
            template: path template under the root, e.g. ``/api/v0/instances/{id}/``.
            path_params: values for the template's fields (URL-quoted).
            params: query values; values that are not ``str`` are JSON-encoded first.
            json: the JSON body; POST/PUT/DELETE send ``{}`` when it is ``None``.
            timeout: seconds (total) or a ``ClientTimeout``; defaults to :attr:`default_timeout`.
            idempotent: whether a failure after the request may have arrived (timeout, dropped
                connection, 502/503/504) is retried; defaults to ``kind == "read"``.
            kind: ``read`` (default for GET), ``write`` (default otherwise) or ``create``:
                an ambiguous failure of a create raises ``CreateOutcomeUnknownError``.
            before_send: called after the route's pacing slot, right before each attempt is
                sent, with no suspension in between; what it raises is raised instead of
                sending (custody withdraws a create that has not left this way).

        Returns:
            The decoded JSON body (``None`` for an empty body).

        Raises:
            APIStatusError: an error status or ``success: false`` (subclass per the table).
            APIConnectionError: no usable answer (``APITimeoutError`` for timeouts).
            CreateOutcomeUnknownError: a create whose outcome cannot be known.
            ResponseValidationError: the body is not JSON.
        """
        method = method.upper()
        resolved_kind: RequestKind = kind or ("read" if method in ("GET", "HEAD") else "write")
        if json is None and method in ("POST", "PUT", "DELETE", "PATCH"):
            json = {}
        if isinstance(timeout, int | float):
            timeout = aiohttp.ClientTimeout(total=timeout, connect=self.timings.connect_timeout_s)
        ident = (path_params or {}).get("id")
        ident_int = int(ident) if isinstance(ident, int | str) and str(ident).isdigit() else None
        call = _Call(
            method=method,
            template=template,
            url=self.url(template, path_params),
            params=encode_query(params),
            body=json,
            timeout=timeout if timeout is not None else self.default_timeout,
            kind=resolved_kind,
            idempotent=(resolved_kind == "read") if idempotent is None else idempotent,
            instance_id=ident_int if "/instances/" in template else None,
            offer_id=ident_int if "/asks/" in template else None,
            started=asyncio.get_running_loop().time(),
            before_send=before_send,
        )
        try:
            return await self._with_retries(call)
        except RetryableFailure as failure:  # attempts or time budget exhausted
            raise failure.error from failure.error.__cause__

    async def fetch_external(
        self,
        url: str,
        *,
        timeout: float | aiohttp.ClientTimeout | None = None,  # noqa: ASYNC109 (one GET)
    ) -> ExternalResponse:
        """GET a third-party URL (such as a logs ``result_url``) without credentials.

        Args:
            url: absolute URL from an API answer.
            timeout: seconds (total) or a ``ClientTimeout``; defaults to :attr:`default_timeout`.

        Raises:
            APIConnectionError: the URL could not be fetched (``APITimeoutError`` on timeout).
        """
        target = URL(url)
        shown = str(target.with_query(None).with_fragment(None))  # signed URLs carry tokens
        if isinstance(timeout, int | float):
            timeout = aiohttp.ClientTimeout(total=timeout)
        http = self._ensure_http()
        try:
            async with http.get(target, timeout=timeout or self.default_timeout) as resp:
                body = await resp.read()
                status = resp.status
        except TimeoutError as err:
            raise APITimeoutError(f"timed out fetching {shown}", method="GET") from err
        except (aiohttp.ClientError, OSError) as err:
            raise APIConnectionError(
                f"fetching {shown} failed: {type(err).__name__}", method="GET"
            ) from err
        self._log.debug("GET %s -> %s (external, no auth)", shown, status)
        return ExternalResponse(status=status, text=body.decode("utf-8", "replace"))

    # -- one attempt -------------------------------------------------------------------------

    async def _attempt(self, call: _Call) -> Any:
        call.attempt += 1
        await self._pacer.wait(call.method, call.template)
        if call.before_send is not None:
            call.before_send()
        http = self._ensure_http()
        headers = {"Accept": "application/json"}
        if self._api_key and call.url.origin() == self._origin:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            async with http.request(
                call.method,
                call.url,
                params=call.params,
                json=call.body,
                headers=headers,
                timeout=call.timeout,
                allow_redirects=False,  # a redirect must not carry the key anywhere
            ) as resp:
                body = await resp.read()
                status, resp_headers = resp.status, resp.headers
        except aiohttp.ClientSSLError as err:
            raise self._connection_error(call, APIConnectionError, "TLS failure", err) from err
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as err:
            # The connection was never made: the request surely never arrived, even a create.
            cls = APITimeoutError if isinstance(err, TimeoutError) else APIConnectionError
            error = self._connection_error(call, cls, "could not connect", err)
            raise RetryableFailure(error) from err
        except TimeoutError as err:
            self._ambiguous(call, self._connection_error(call, APITimeoutError, "timed out", err))
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as err:
            error = self._connection_error(call, APIConnectionError, "connection lost", err)
            self._ambiguous(call, error)
        except aiohttp.ClientError as err:
            raise self._connection_error(call, APIConnectionError, "request failed", err) from err
        self._log.debug(
            "%s %s -> %s (attempt %d)",
            call.method,
            call.template,
            status,
            call.attempt,
            extra={"vastai_status": status, "vastai_attempt": call.attempt},
        )
        for observe in self.observers:
            observe(
                Exchange(
                    method=call.method,
                    template=call.template,
                    params=call.params,
                    body=call.body,
                    status=status,
                    response=body,
                )
            )
        return self._interpret(call, status, resp_headers, body)

    def _connection_error(
        self, call: _Call, cls: type[APIConnectionError], what: str, err: BaseException
    ) -> APIConnectionError:
        error = cls(
            f"{what}: {type(err).__name__}",
            method=call.method,
            path=call.template,
            instance_id=call.instance_id,
            offer_id=call.offer_id,
        )
        error.__cause__ = err
        return error

    def _ambiguous(self, call: _Call, error: APIError, wait: float | None = None) -> NoReturn:
        """A failure after which the request may have arrived and taken effect."""
        if call.idempotent:
            if wait is not None and wait > self._budget_left(call):
                raise error
            raise RetryableFailure(error, server_wait_s=wait) from error.__cause__
        if call.kind == "create":
            raise CreateOutcomeUnknownError(
                f"create outcome unknown ({error.message}); look the instance up by its label",
                method=call.method,
                path=call.template,
                status=error.status,
                code=error.code,
                msg=error.msg,
                offer_id=call.offer_id,
            ) from error
        raise error

    def _interpret(
        self, call: _Call, status: int, headers: CIMultiDictProxy[str], body: bytes
    ) -> Any:
        where: dict[str, Any] = {
            "method": call.method,
            "path": call.template,
            "instance_id": call.instance_id,
            "offer_id": call.offer_id,
        }
        if 200 <= status < 300:
            if not body.strip():
                return None
            try:
                data = jsonlib.loads(body)
            except ValueError as err:
                raise ResponseValidationError(
                    f"malformed JSON in a {status} answer", status=status, **where
                ) from err
            if not (isinstance(data, dict) and data.get("success") is False):
                return data
            code, msg = error_fields(data)
        else:
            code, msg = error_fields(decode_error_body(body))
        wait = server_wait_s(headers)
        error = make_status_error(status, code=code, msg=msg, retry_after=wait, **where)
        if isinstance(error, RateLimitedError):
            self._rate_limited(call, error, wait)
        if status in _RETRIED_STATUSES:
            self._ambiguous(call, error, wait)  # a 503 may say Retry-After too
        if status >= 500 and call.kind == "create":
            self._ambiguous(call, error)
        raise error

    def _rate_limited(self, call: _Call, error: RateLimitedError, wait: float | None) -> NoReturn:
        if error.code == "search_quota_exceeded" and wait is None:
            raise error  # the reset time is unknown: never retry blindly into a daily quota
        if wait is not None and wait > self._budget_left(call):
            raise error  # backoff's max_time would cut this wait short and retry too early
        raise RetryableFailure(error, server_wait_s=wait)

    def _budget_left(self, call: _Call) -> float:
        return self.retry.max_time_s - (asyncio.get_running_loop().time() - call.started)

    def _on_backoff(self, details: dict[str, Any]) -> None:
        call: _Call = details["args"][0]
        failure = details.get("exception")
        reason = str(failure.error) if isinstance(failure, RetryableFailure) else "?"
        self._log.debug(
            "%s %s: retrying in %.3fs after attempt %d (%s)",
            call.method,
            call.template,
            details["wait"],
            details["tries"],
            reason,
            extra={"vastai_wait": details["wait"], "vastai_attempt": details["tries"]},
        )
