"""The SSH public key on the Vast.ai account, registered once before the first create.

The published spec: "SSH keys must be registered BEFORE creating an instance", and a key added to
the account "will be automatically added to all your current instances". So a service registers
its key on the account once and then stops attaching it to every new instance (one request per
candidate fewer, and no queue behind the attach route's 1 request/s). Registration is idempotent:
the account's keys are listed first and compared by key type and base64 body only (the comment
is the user's business), a key is never added twice, and no key is ever removed. When the account
refuses (a scoped API key lacking the permission, a rejected key), the caller falls back to
attaching the key to each instance after create, which Docker instances accept.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Literal

import attrs

from vastai_async._logging import get_logger
from vastai_async.errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    InvalidRequestError,
)

if TYPE_CHECKING:
    from vastai_async.client import VastAIClient

__all__ = [
    "AccountKeyOutcome",
    "AccountKeyRegistrar",
    "KeyPath",
    "ensure_account_key",
    "key_identity",
    "register_account_key",
]

#: ``"account"``: the key is on the account, skip per-instance attach; ``"instance"``: attach
#: the key to each instance after create.
KeyPath = Literal["account", "instance"]

_log = get_logger(__name__)


@attrs.frozen(kw_only=True)
class AccountKeyOutcome:
    """What :func:`register_account_key` found or did.

    Attributes:
        path: where the key goes (see :data:`KeyPath`).
        key_id: the account key's id, when it is on the account.
        added: whether this call added it (``False``: it was there already, or refused).
        reason: why the key is not on the account (``path == "instance"``), else ``None``.
    """

    path: KeyPath
    key_id: int | None = None
    added: bool = False
    reason: str | None = None


def key_identity(line: str) -> tuple[str, str] | None:
    """``(type, base64)`` of an OpenSSH public key line, or ``None`` if it is not one.

    ``"ssh-ed25519 AAAA... me@host"`` and ``"ssh-ed25519 AAAA... other comment"`` are one key.
    """
    parts = line.strip().split()
    if len(parts) < 2 or not parts[1].startswith("AAAA"):
        return None
    return parts[0], parts[1]


async def register_account_key(client: VastAIClient, public_key: str) -> AccountKeyOutcome:
    """Make sure ``public_key`` is registered on the account; add it only when missing.

    Args:
        client: the API client.
        public_key: an OpenSSH public key line (``"ssh-ed25519 AAAA... comment"``).

    Returns:
        ``path="account"`` when the key is on the account (found or added), ``path="instance"``
        with a reason when the account refused it or the outcome of the add is unknown.

    Raises:
        InvalidRequestError: ``public_key`` is not an OpenSSH public key line.
        AuthenticationError: the API key is wrong (nothing else would work either).
    """
    wanted = key_identity(public_key)
    if wanted is None:
        raise InvalidRequestError("public_key is not an OpenSSH public key line ('TYPE AAAA...')")
    try:
        found = await _find(client, wanted)
        if found is not None:
            return AccountKeyOutcome(path="account", key_id=found)
        try:
            added = await client.add_ssh_key(public_key)
        except (APIConnectionError, APIStatusError) as err:
            if isinstance(err, AuthenticationError):
                raise
            # The add may have landed before the answer was lost, or been refused: look again.
            found = await _find(client, wanted)
            if found is not None:
                return AccountKeyOutcome(path="account", key_id=found, added=True)
            raise
        key_id = added.id if added is not None else await _find(client, wanted)
        if key_id is None:
            return AccountKeyOutcome(
                path="instance", reason="the account did not list the key after adding it"
            )
        return AccountKeyOutcome(path="account", key_id=key_id, added=True)
    except AuthenticationError:
        raise
    except (APIConnectionError, APIStatusError) as err:
        reason = f"account key registration refused or failed: {err}"
        _log.warning("%s; attaching the key to each instance instead", reason)
        return AccountKeyOutcome(path="instance", reason=reason)


async def ensure_account_key(client: VastAIClient, public_key: str) -> KeyPath:
    """Register ``public_key`` on the account when missing; say where the key goes.

    Returns:
        ``"account"``: the key is on the account, so new instances get it and per-instance
        attach can be skipped. ``"instance"``: the account refused it; attach it to each
        instance after create.

    Raises:
        InvalidRequestError: ``public_key`` is not an OpenSSH public key line.
        AuthenticationError: the API key is wrong.
    """
    return (await register_account_key(client, public_key)).path


class AccountKeyRegistrar:
    """Registers one key at most once per service, however many races ask concurrently.

    Args:
        client: the API client.
        public_key: the OpenSSH public key line to register.
    """

    def __init__(self, client: VastAIClient, public_key: str) -> None:
        self._client = client
        self._public_key = public_key
        self._lock = asyncio.Lock()
        self._outcome: AccountKeyOutcome | None = None

    @property
    def outcome(self) -> AccountKeyOutcome | None:
        """The outcome once known, else ``None``."""
        return self._outcome

    async def ensure(self) -> AccountKeyOutcome:
        """The outcome of registering the key, computed on the first call only.

        An :class:`AuthenticationError` is not remembered: the next call tries again.
        """
        async with self._lock:
            if self._outcome is None:
                self._outcome = await register_account_key(self._client, self._public_key)
            return self._outcome


async def _find(client: VastAIClient, wanted: tuple[str, str]) -> int | None:
    for key in await client.list_ssh_keys():
        if key.deleted_at is None and key_identity(key.key) == wanted:
            return key.id
    return None
