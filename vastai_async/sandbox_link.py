"""Pointing the SDK at a sandbox: its URL and key, a throwaway SSH key pair, its clock.

Used by the CLI's ``--sandbox``, the ``demo`` command, the examples and the pytest plugin.
:func:`sandbox_config` is the public face: a validated config for a sandbox at a URL.

Each standalone ``vastai-async sandbox`` records itself in its own file,
``$VASTAI_STATE_DIR/sandboxes/<name>.json`` (mode 0600), so two sandboxes never overwrite or
delete each other's record. A record whose process is gone (same host, pid no longer running)
is stale: it is skipped and removed, and said so, instead of ending in a connection error. The
key pair is kept per sandbox URL in the state directory, so later commands such as ``ssh ID``
still log in. Timings and pacing are scaled by the sandbox's ``time_scale`` so the SDK behaves
as against Vast.ai, only faster (design.md, "Timings and the sandbox clock").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

import attrs

from vastai_async._converter import structure, unstructure
from vastai_async.config import (
    VastAIConfig,
    default_state_dir,
    generate_ssh_keypair,
    get_vastai_config,
)
from vastai_async.errors import ConfigError, VastAIError

__all__ = [
    "LEGACY_RECORD_NAME",
    "RECORDS_DIR",
    "SandboxRecord",
    "live_sandbox_records",
    "read_sandbox_record",
    "remove_sandbox_record",
    "sandbox_config",
    "sandbox_key_path",
    "sandbox_record_path",
    "write_sandbox_record",
]

#: Folder of the state directory holding one record per running sandbox.
RECORDS_DIR = "sandboxes"
#: The single record of earlier versions; still read (never written).
LEGACY_RECORD_NAME = "sandbox.json"


@attrs.frozen(kw_only=True)
class SandboxRecord:
    """What ``vastai-async sandbox`` recorded about itself.

    Attributes:
        url: its API root.
        api_key: its account key (secret: never in repr).
        time_scale: its clock factor.
        name: how ``--sandbox-name`` picks it.
        pid: its process id, on ``host``.
        host: the host name it runs on (a pid is checked only on the same host).
        logs_url: origin of its log files.
        seed: its market seed.
        offers: its market size.
    """

    url: str
    api_key: str = attrs.field(repr=False)
    time_scale: float = 1.0
    name: str = "default"
    pid: int | None = None
    host: str | None = None
    logs_url: str | None = None
    seed: int | None = None
    offers: int | None = None


def _state_dir(state_dir: Path | None) -> Path:
    if state_dir is not None:
        return state_dir
    env = os.environ.get("VASTAI_STATE_DIR")
    return Path(env).expanduser() if env else default_state_dir()


def sandbox_record_path(name: str = "default", state_dir: Path | None = None) -> Path:
    """Where the sandbox called ``name`` records its URL and key (in the state directory)."""
    return _state_dir(state_dir) / RECORDS_DIR / f"{name}.json"


def write_sandbox_record(record: SandboxRecord, state_dir: Path | None = None) -> Path:
    """Write ``record`` to its own file, mode 0600 from the start; returns the path."""
    path = sandbox_record_path(record.name, state_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(unstructure(record), out, indent=2)
    os.replace(tmp, path)  # readers never see half a record
    return path


def remove_sandbox_record(record: SandboxRecord, state_dir: Path | None = None) -> None:
    """Remove ``record``'s file if it is still this record (same pid): never another's."""
    path = sandbox_record_path(record.name, state_dir)
    current = _load(path)
    if current is not None and current.pid == record.pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _load(path: Path) -> SandboxRecord | None:
    try:
        return structure(json.loads(path.read_text()), SandboxRecord)
    except (OSError, ValueError, VastAIError):
        return None


def _alive(record: SandboxRecord) -> bool:
    # A pid means something only on the host that wrote it (containers may share a state dir).
    if record.pid is None or record.host not in (None, socket.gethostname()):
        return True
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


def live_sandbox_records(state_dir: Path | None = None) -> tuple[list[SandboxRecord], list[str]]:
    """Records of running sandboxes, and a note per stale record found (and removed).

    Returns:
        ``(records, notes)``: records oldest name first; notes such as ``sandbox 'default' at
        http://... is recorded but its process 123 is gone (crashed?); record removed``.
    """
    state = _state_dir(state_dir)
    paths = sorted((state / RECORDS_DIR).glob("*.json")) if (state / RECORDS_DIR).is_dir() else []
    legacy = state / LEGACY_RECORD_NAME
    records: list[SandboxRecord] = []
    notes: list[str] = []
    for path in [*paths, legacy] if legacy.exists() else paths:
        record = _load(path)
        if record is None:
            notes.append(f"unreadable sandbox record {path} skipped")
            continue
        if not _alive(record):
            notes.append(
                f"sandbox {record.name!r} at {record.url} is recorded but its process "
                f"{record.pid} is gone (crashed?); record removed"
            )
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        records.append(record)
    return records, notes


def read_sandbox_record(
    state_dir: Path | None = None, *, name: str | None = None, url: str | None = None
) -> SandboxRecord:
    """The running standalone sandbox recorded in the state directory.

    Args:
        state_dir: default ``VASTAI_STATE_DIR`` or the user's state folder.
        name: pick the sandbox started with ``--name NAME``.
        url: pick the sandbox serving at this URL.

    Raises:
        ConfigError: none is running (start one with ``vastai-async sandbox``), none matches, or
            several run and none was picked.
    """
    records, notes = live_sandbox_records(state_dir)
    stale = f" ({'; '.join(notes)})" if notes else ""
    if name is not None or url is not None:
        wanted = url.rstrip("/") if url is not None else None
        matches = [r for r in records if r.name == name or r.url.rstrip("/") == wanted]
        if matches:
            return matches[0]
        what = f"named {name!r}" if name is not None else f"at {url}"
        raise ConfigError([("--sandbox", f"no running sandbox {what} is recorded{stale}")])
    if len(records) == 1:
        return records[0]
    if not records:
        where = _state_dir(state_dir) / RECORDS_DIR
        raise ConfigError(
            [
                (
                    "--sandbox",
                    f"no running sandbox recorded in {where}{stale}; start `vastai-async sandbox`",
                )
            ]
        )
    listing = ", ".join(f"{r.name} ({r.url})" for r in records)
    raise ConfigError(
        [("--sandbox", f"several sandboxes run: {listing}; pick one with --sandbox-name NAME")]
    )


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
