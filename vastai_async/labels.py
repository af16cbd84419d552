"""Instance labels that name their owner, so nothing we rent is ever anonymous.

``vastai-async:<owner>:<job>:<race>`` while a race or a live rental owns an instance;
``vastai-async:kept:<job>[:<text>]`` after :meth:`Rental.detach` keeps it on purpose. Owner and
job ids are limited to ``[A-Za-z0-9._-]`` (no colons) and the label to 1,024 characters.
"""

from __future__ import annotations

import re

import attrs

from vastai_async.errors import InvalidRequestError
from vastai_async.models import MAX_LABEL_CHARS

__all__ = [
    "LABEL_PREFIX",
    "MAX_LABEL_LEN",
    "ParsedLabel",
    "kept_label",
    "parse_label",
    "race_label",
    "validate_id",
]

LABEL_PREFIX = "vastai-async"
KEPT = "kept"
MAX_LABEL_LEN = MAX_LABEL_CHARS  # Vast's limit, defined once in models
_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def validate_id(what: str, value: str) -> str:
    """Check an owner, job or race id.

    Args:
        what: name used in the error (``job_id``, ``owner``).
        value: the id.

    Returns:
        The id, unchanged.

    Raises:
        InvalidRequestError: when it is empty, too long, or has characters outside
            ``[A-Za-z0-9._-]``.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise InvalidRequestError(
            f"{what} must be 1-128 characters of [A-Za-z0-9._-], got {value!r}"
        )
    if value == KEPT and what == "owner":
        raise InvalidRequestError(f"owner {KEPT!r} is reserved for kept rentals")
    return value


def race_label(owner: str, job_id: str, race_id: str) -> str:
    """The label of an instance owned by a race or a live rental."""
    label = f"{LABEL_PREFIX}:{validate_id('owner', owner)}:{validate_id('job_id', job_id)}:"
    label += validate_id("race_id", race_id)
    return label


def kept_label(job_id: str, text: str | None = None) -> str:
    """The label of an instance kept on purpose (:meth:`Rental.detach`)."""
    label = f"{LABEL_PREFIX}:{KEPT}:{validate_id('job_id', job_id)}"
    if text:
        label += f":{text}"
    if len(label) > MAX_LABEL_LEN:
        raise InvalidRequestError(f"label longer than {MAX_LABEL_LEN} characters")
    return label


@attrs.frozen(kw_only=True)
class ParsedLabel:
    """What a label of ours says.

    Attributes:
        kept: kept on purpose (never reaped unless asked).
        owner: the owning service's id (``None`` for kept rentals).
        job_id: the job.
        race_id: the race that created it (``None`` for kept rentals).
        text: the user's text of a kept label.
    """

    kept: bool
    owner: str | None
    job_id: str
    race_id: str | None = None
    text: str | None = None


def parse_label(label: str | None) -> ParsedLabel | None:
    """Read one of our labels; ``None`` for anything else (foreign or unlabeled)."""
    if not label or not label.startswith(LABEL_PREFIX + ":"):
        return None
    parts = label.split(":", 3)
    if len(parts) >= 3 and parts[1] == KEPT:
        if not _ID_RE.match(parts[2]):
            return None
        text = ":".join(parts[3:]) if len(parts) > 3 else None
        return ParsedLabel(kept=True, owner=None, job_id=parts[2], text=text)
    if len(parts) == 4 and all(_ID_RE.match(p) for p in parts[1:]):
        return ParsedLabel(kept=False, owner=parts[1], job_id=parts[2], race_id=parts[3])
    return None
