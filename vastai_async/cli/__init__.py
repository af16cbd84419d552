"""The ``vastai-async`` command (skeleton; commands are added by later work)."""

from __future__ import annotations

from vastai_async.cli._app import main

__all__ = ["main"]
