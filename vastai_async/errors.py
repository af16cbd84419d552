"""The one exception tree: everything the SDK raises derives from :class:`VastAIError`.

Status errors are built from one table (:func:`make_status_error`): the Vast ``error`` code
picks a class first (``no_such_ask`` is an :class:`OfferUnavailableError` whether it comes as 404
or 410), then the HTTP status. No ``__str__`` here ever includes a secret: errors carry the path
*template* (``/api/v0/instances/{id}/``), never a URL with a query string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "INSTANCE_GONE_CODES",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "CreateOutcomeUnknownError",
    "GoneError",
    "HostKeyMismatchError",
    "InsufficientCreditError",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "OfferUnavailableError",
    "OutbidError",
    "PermissionDeniedError",
    "ProvisioningError",
    "RateLimitedError",
    "ResponseValidationError",
    "SSHAuthError",
    "SSHCommandError",
    "SSHConnectError",
    "SSHError",
    "SSHTimeoutError",
    "ServiceClosedError",
    "TeardownError",
    "VastAIError",
    "make_status_error",
]


class VastAIError(Exception):
    """Base of every exception raised by vastai_async."""


class ConfigError(VastAIError):
    """The configuration is invalid.

    Attributes:
        problems: ``(variable name, reason)`` pairs, every problem found at once.
    """

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems: tuple[tuple[str, str], ...] = tuple(problems)
        lines = "; ".join(f"{name}: {reason}" for name, reason in self.problems)
        super().__init__(f"invalid vastai_async configuration: {lines}")


class InvalidRequestError(VastAIError, ValueError):
    """An argument was refused before anything was sent or rented (names what was wrong)."""


class APIError(VastAIError):
    """A request to the Vast.ai API failed.

    Attributes:
        method: HTTP method.
        path: the path template, e.g. ``/api/v0/instances/{id}/`` (never a full URL).
        status: HTTP status, or ``None`` when no response arrived.
        code: Vast's ``error`` code (``no_such_ask``, ``auth_error`` ...), if any.
        msg: Vast's ``msg`` / ``detail`` text, if any.
        instance_id: the instance concerned, if any.
        offer_id: the offer concerned, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        code: str | None = None,
        msg: str | None = None,
        instance_id: int | None = None,
        offer_id: int | None = None,
    ) -> None:
        self.message = message
        self.method = method
        self.path = path
        self.status = status
        self.code = code
        self.msg = msg
        self.instance_id = instance_id
        self.offer_id = offer_id
        super().__init__(message)

    def __str__(self) -> str:
        parts = [self.message]
        where = " ".join(p for p in (self.method, self.path) if p)
        if where:
            parts.append(f"[{where}]")
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.code:
            parts.append(f"error={self.code}")
        if self.msg and self.msg != self.message:
            parts.append(f"msg={self.msg!r}")
        if self.instance_id is not None:
            parts.append(f"instance={self.instance_id}")
        if self.offer_id is not None:
            parts.append(f"offer={self.offer_id}")
        return " ".join(parts)


class APIConnectionError(APIError):
    """No usable answer: connection refused, reset, DNS failure ..."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class ResponseValidationError(APIError):
    """The API answered with a body we cannot read (malformed JSON, wrong types)."""


class CreateOutcomeUnknownError(APIError):
    """A create request may have arrived but its answer was lost: it may have rented a machine.

    Look the instance up by its label, then adopt or destroy it.
    """

    def __init__(self, message: str, *, label: str | None = None, **kwargs: Any) -> None:
        self.label = label
        super().__init__(message, **kwargs)


class APIStatusError(APIError):
    """The API answered with an error status (or ``success: false``)."""


class BadRequestError(APIStatusError):
    """400: the request's arguments were refused."""


class AuthenticationError(APIStatusError):
    """401: the API key is wrong or revoked."""


class PermissionDeniedError(APIStatusError):
    """403: the key lacks a permission."""


class NotFoundError(APIStatusError):
    """404 (or ``{"instances": null}``): no such thing."""


class GoneError(APIStatusError):
    """410: the resource or endpoint is gone."""


class OfferUnavailableError(APIStatusError):
    """``no_such_ask``: the offer was rented by someone else or withdrawn."""


#: Vast ``error`` codes of a 404 meaning "this instance does not exist (any more)": the published
#: spec's ``not_found`` on destroy, and ``no_such_instance`` on change-bid and key removal.
INSTANCE_GONE_CODES: frozenset[str] = frozenset({"not_found", "no_such_instance"})


class InsufficientCreditError(BadRequestError):
    """``missing_billing``: the account lacks credit."""


class RateLimitedError(APIStatusError):
    """429: too many requests.

    Attributes:
        retry_after: seconds the server asked us to wait, if it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)

    def __str__(self) -> str:
        base = super().__str__()
        if self.retry_after is not None:
            return f"{base} retry_after={self.retry_after:.3g}s"
        return base


class InternalServerError(APIStatusError):
    """5xx: the server failed."""


_BY_CODE: Mapping[str, type[APIStatusError]] = {
    "no_such_ask": OfferUnavailableError,
    "missing_billing": InsufficientCreditError,
    "auth_error": AuthenticationError,
    "rate_limit_exceeded": RateLimitedError,
    "search_quota_exceeded": RateLimitedError,
    "no_such_instance": NotFoundError,
    "not_found": NotFoundError,
}

_BY_STATUS: Mapping[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    410: GoneError,
    429: RateLimitedError,
}


def make_status_error(
    status: int,
    *,
    method: str | None = None,
    path: str | None = None,
    code: str | None = None,
    msg: str | None = None,
    retry_after: float | None = None,
    instance_id: int | None = None,
    offer_id: int | None = None,
) -> APIStatusError:
    """Build the right :class:`APIStatusError` subclass for a failed answer.

    Args:
        status: HTTP status of the answer (200 for a ``success: false`` body).
        method: HTTP method.
        path: path template, never a URL with a query string.
        code: Vast's ``error`` code.
        msg: Vast's message.
        retry_after: for 429, seconds the server asked us to wait.
        instance_id: instance concerned, if any.
        offer_id: offer concerned, if any.

    Returns:
        The error, not raised.
    """
    cls: type[APIStatusError] | None = None
    if code:
        # Vast puts the code in ``error`` or inside ``msg`` ("error 404/3603: no_such_ask").
        cls = _BY_CODE.get(code)
    if cls is None and msg:
        for known, known_cls in _BY_CODE.items():
            if known in msg:
                cls = known_cls
                code = code or known
                break
    if cls is None:
        cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    message = f"Vast.ai API error {status}" + (f": {msg}" if msg else "")
    kwargs: dict[str, Any] = {
        "method": method,
        "path": path,
        "status": status,
        "code": code,
        "msg": msg,
        "instance_id": instance_id,
        "offer_id": offer_id,
    }
    if cls is RateLimitedError:
        return RateLimitedError(message, retry_after=retry_after, **kwargs)
    return cls(message, **kwargs)


class OutbidError(VastAIError):
    """An interruptible rental was stopped by the market: a higher bid took its machine.

    Attributes:
        instance_id: the instance.
        bid: the bid it held, USD/hour, if known.
        min_bid: the machine's minimum bid when it was seen outbid, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        instance_id: int,
        bid: float | None = None,
        min_bid: float | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.bid = bid
        self.min_bid = min_bid
        super().__init__(message)

    def __str__(self) -> str:
        parts = [f"{self.args[0]} instance={self.instance_id}"]
        if self.bid is not None:
            parts.append(f"bid={self.bid:g}")
        if self.min_bid is not None:
            parts.append(f"min_bid={self.min_bid:g}")
        return " ".join(parts)


class SSHError(VastAIError):
    """SSH to a rented machine failed.

    Attributes:
        host: host tried.
        port: port tried.
        instance_id: the instance, if known.
    """

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        port: int | None = None,
        instance_id: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.instance_id = instance_id
        super().__init__(message)

    def __str__(self) -> str:
        where = f" [{self.host}:{self.port}]" if self.host else ""
        inst = f" instance={self.instance_id}" if self.instance_id is not None else ""
        return f"{self.args[0]}{where}{inst}"


class SSHConnectError(SSHError):
    """TCP connection or SSH handshake failed."""


class SSHAuthError(SSHError):
    """The machine refused our key."""


class HostKeyMismatchError(SSHError):
    """The machine's host key differs from the one pinned at first login."""


class SSHTimeoutError(SSHError):
    """An SSH connect, login or command exceeded its deadline."""


class SSHCommandError(SSHError):
    """A command run with ``check=True`` exited non-zero.

    Attributes:
        exit_status: the command's exit status.
        stderr: what it wrote to stderr (truncated).
    """

    def __init__(self, message: str, *, exit_status: int | None, stderr: str = "", **kw: Any):
        self.exit_status = exit_status
        self.stderr = stderr[-2000:]
        super().__init__(message, **kw)


class ProvisioningError(VastAIError):
    """No candidate became a machine we could log into.

    Attributes:
        attempts: one record per offer tried (offer, instance, last status, reason, times, spend).
    """

    def __init__(self, message: str, *, attempts: Sequence[Any] = ()) -> None:
        self.attempts: tuple[Any, ...] = tuple(attempts)
        super().__init__(message)

    def __str__(self) -> str:
        lines = [str(self.args[0])]
        for attempt in self.attempts:
            lines.append(f"  - {attempt}")
        return "\n".join(lines)


class TeardownError(VastAIError):
    """Teardown did not confirm every instance destroyed within its budget.

    Attributes:
        instance_ids: instances that may still be alive (and billing); ``reap`` finds them by label.
    """

    def __init__(
        self, message: str, *, instance_ids: Sequence[int], labels: Sequence[str] = ()
    ) -> None:
        self.instance_ids: tuple[int, ...] = tuple(sorted(instance_ids))
        #: Labels of creates still in flight or whose answer was lost: an instance carrying one
        #: may appear later (``vastai-async reap --job-id <job>`` finds it).
        self.labels: tuple[str, ...] = tuple(sorted(set(labels)))
        super().__init__(message)

    def __str__(self) -> str:
        ids = ", ".join(str(i) for i in self.instance_ids) or "none known"
        text = f"{self.args[0]} (instances possibly still alive: {ids}"
        if self.labels:
            text += f"; creates unresolved under labels: {', '.join(self.labels)}"
        return text + ")"


class ServiceClosedError(VastAIError):
    """The service was closed: a provision still running was ended (its instances went to
    custody and were destroyed), or a new call came after :meth:`VastAIService.close`."""
