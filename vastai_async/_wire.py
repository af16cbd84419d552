"""Wire encoding shared by the session: query values and error bodies of any shape.

Vast answers errors as JSON (``error``/``msg``, or only ``detail``), as plain text
(``API requests too frequent ...``) or as an HTML page from a proxy; all become a short,
tag-free, redacted message for :func:`vastai_async.errors.make_status_error`.
"""

from __future__ import annotations

import json as jsonlib
import re
from collections.abc import Mapping
from typing import Any

from vastai_async._logging import redact

__all__ = ["ERROR_TEXT_LIMIT", "decode_error_body", "encode_query", "error_fields", "strip_tags"]

#: Error messages keep at most this many characters of the body.
ERROR_TEXT_LIMIT = 200


def encode_query(params: Mapping[str, object] | None) -> dict[str, str] | None:
    """Plain strings pass as they are; anything else is JSON-encoded (vast-api.md Transport)."""
    if params is None:
        return None
    return {
        key: value if isinstance(value, str) else jsonlib.dumps(value, separators=(",", ":"))
        for key, value in params.items()
    }


def decode_error_body(body: bytes) -> Any:
    """The JSON value of an error body, or its text when it is not JSON."""
    text = body.decode("utf-8", "replace")
    try:
        return jsonlib.loads(text)
    except ValueError:
        return text


def error_fields(data: Any) -> tuple[str | None, str | None]:
    """Vast's ``error`` code and ``msg`` (or ``detail``) from an error body of any shape."""
    if isinstance(data, dict):
        code = data.get("error")
        msg = next((data[k] for k in ("msg", "detail", "message") if data.get(k) is not None), None)
        if msg is not None and not isinstance(msg, str):
            msg = jsonlib.dumps(msg)
        return (code if isinstance(code, str) else None), _clip(msg)
    if isinstance(data, str):
        return None, _clip(strip_tags(data))
    return None, _clip(jsonlib.dumps(data))


def strip_tags(text: str) -> str:
    """HTML to one line of text: scripts and styles dropped, tags removed, spaces collapsed."""
    text = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", text)
    return " ".join(re.sub(r"<[^>]*>", " ", text).split())


def _clip(text: str | None) -> str | None:
    if not text:
        return None
    return redact(text[:ERROR_TEXT_LIMIT])
