"""Pointing the SDK at a sandbox: its URL and key, a throwaway SSH key pair, its clock.

Used by the CLI's ``--sandbox``, the ``demo`` command and the pytest plugin. The key pair is
kept per sandbox URL in the state directory (mode 0600), so later commands such as ``ssh ID``
still log in. Timings and pacing are scaled by the sandbox's ``time_scale`` so the SDK behaves as
against Vast.ai, only faster (design.md, "Timings and the sandbox clock").
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import attrs

from vastai_async.config import (
    VastAIConfig,
    default_state_dir,
    generate_ssh_keypair,
    get_vastai_config,
)
from vastai_async.errors import ConfigError

__all__ = [
    "RECORD_NAME",
    "SandboxRecord",
    "read_sandbox_record",
    "sandbox_config",
    "sandbox_key_path",
    "sandbox_record_path",
]

RECORD_NAME = "sandbox.json"


@attrs.frozen(kw_only=True)
class SandboxRecord:
    """What ``vastai-async sandbox`` recorded about itself."""

    url: str
    api_key: str = attrs.field(repr=False)
    time_scale: float = 1.0


def _state_dir(state_dir: Path | None) -> Path:
    if state_dir is not None:
        return state_dir
    env = os.environ.get("VASTAI_STATE_DIR")
    return Path(env).expanduser() if env else default_state_dir()


def sandbox_record_path(state_dir: Path | None = None) -> Path:
    """Where ``vastai-async sandbox`` records its URL and key (in the state directory)."""
    return _state_dir(state_dir) / RECORD_NAME


def read_sandbox_record(state_dir: Path | None = None) -> SandboxRecord:
    """The standalone sandbox recorded in the state directory.

    Raises:
        ConfigError: no sandbox is recorded (start one with ``vastai-async sandbox``).
    """
    path = sandbox_record_path(state_dir)
    try:
        data = json.loads(path.read_text())
        return SandboxRecord(
            url=str(data["url"]),
            api_key=str(data["api_key"]),
            time_scale=float(data.get("time_scale", 1.0)),
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            [("--sandbox", f"no running sandbox recorded in {path}; start `vastai-async sandbox`")]
        ) from err


def sandbox_key_path(url: str, state_dir: Path | None = None) -> Path:
    """The throwaway private key used with the sandbox at ``url`` (created on first use)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    path = _state_dir(state_dir) / "sandbox-keys" / digest / "id_ed25519"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        generate_ssh_keypair(path)
    return path


def sandbox_config(
    url: str,
    api_key: str,
    *,
    time_scale: float = 1.0,
    state_dir: Path | None = None,
    **overrides: Any,
) -> VastAIConfig:
    """A validated config for the sandbox at ``url``, on its clock.

    Args:
        url: the sandbox's server root.
        api_key: its account key.
        time_scale: its ``time_scale``: timings and pacing are multiplied by it.
        state_dir: where keys and pins live (default ``VASTAI_STATE_DIR`` or the user's).
        **overrides: any other :func:`~vastai_async.get_vastai_config` argument.
    """
    state = _state_dir(state_dir)
    config = get_vastai_config(
        api_key=api_key,
        api_base_url=url,
        ssh_key_path=sandbox_key_path(url, state),
        state_dir=state,
        **overrides,
    )
    return config.scaled(time_scale) if time_scale != 1.0 else config
