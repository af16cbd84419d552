"""Configuration: the frozen :class:`VastAIConfig` and :func:`get_vastai_config`.

Precedence: keyword arguments > real environment > ``.env.local.vastai`` (or ``env_file=``) >
defaults. Every invalid setting is reported at once, by its ``VASTAI_*`` name, in one
:class:`~vastai_async.errors.ConfigError`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import attrs
import marshmallow as ma
from environs import Env, EnvValidationError
from yarl import URL

from vastai_async._owners import default_owner
from vastai_async.errors import ConfigError
from vastai_async.pacing import Pacing
from vastai_async.timings import Timings

__all__ = [
    "DEFAULT_API_BASE_URL",
    "ENV_FILE_NAME",
    "OWNER_PATTERN",
    "VastAIConfig",
    "default_owner",
    "default_state_dir",
    "generate_ssh_keypair",
    "get_vastai_config",
]

DEFAULT_API_BASE_URL = "https://console.vast.ai/api/v0"
#: Read from the current working folder when present (never from parent folders).
ENV_FILE_NAME = ".env.local.vastai"
#: Owner ids go into rental labels ``vastai-async:<owner>:...``: no colons, bounded length.
OWNER_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")

_PREFIX = "VASTAI_"
_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class VastAIConfig:
    """Validated settings. Build it with :func:`get_vastai_config`.

    Attributes:
        api_key: the Vast.ai API key (secret: never in repr).
        api_base_url: server root or root + ``/api/v0``.
        ssh_key_path: private key used to log into rentals; ``None`` in a config built with
            ``require_ssh_key=False`` (enough to search, list, show and destroy).
        ssh_key_passphrase: passphrase of an encrypted key (secret).
        ssh_public_key: the OpenSSH public half of the key, attached to each rental (``None``
            without a key).
        preferred_gpus: short or full GPU names matched as whole words of ``gpu_name``.
        template_ids: templates jobs may use; empty means any.
        max_bid_usd_per_hour: price ceiling in USD/hour (``dph_total`` and bids).
        min_vram_gb: minimum VRAM per GPU in GB (1 GB = 1000 MB).
        default_disk_gb: disk for new rentals, GB.
        default_image: image when no template is given.
        owner: owner id written into rental labels (``[A-Za-z0-9._-]``).
        state_dir: pinned host keys, sandbox records, throwaway key pairs.
        allow_insecure_key: accept a key file readable by group or others.
        timings: every interval and deadline.
        pacing: per-route minimum intervals between requests.
    """

    api_key: str = attrs.field(repr=False)
    api_base_url: str = DEFAULT_API_BASE_URL
    ssh_key_path: Path | None = None
    ssh_key_passphrase: str | None = attrs.field(default=None, repr=False)
    ssh_public_key: str | None = None
    preferred_gpus: tuple[str, ...] = ("4090", "A100")
    template_ids: tuple[str, ...] = ()
    max_bid_usd_per_hour: float = 4.5
    min_vram_gb: float = 24.0
    default_disk_gb: float = 64.0
    default_image: str = "vastai/base-image:@vastai-automatic-tag"
    owner: str
    state_dir: Path
    allow_insecure_key: bool = False
    timings: Timings = attrs.field(factory=Timings)
    pacing: Pacing = attrs.field(factory=Pacing)

    @property
    def api_root(self) -> str:
        """The server root: ``api_base_url`` without a trailing ``/api/v0``."""
        url = self.api_base_url.rstrip("/")
        if url.endswith("/api/v0"):
            url = url[: -len("/api/v0")]
        return url

    def ssh_identity(self) -> tuple[Path, str]:
        """The private key path and its public line, needed to rent and to log in.

        Raises:
            ConfigError: the config was built without a key (``require_ssh_key=False``).
        """
        if self.ssh_key_path is None or self.ssh_public_key is None:
            raise ConfigError(
                [(_PREFIX + "SSH_KEY_PATH", "missing (required to rent and log into machines)")]
            )
        return self.ssh_key_path, self.ssh_public_key

    def scaled(self, factor: float) -> VastAIConfig:
        """A copy whose timings and pacing run on a clock scaled by ``factor`` (the sandbox's)."""
        return attrs.evolve(
            self, timings=self.timings.scaled(factor), pacing=self.pacing.scaled(factor)
        )


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/vastai-async``, or ``~/.local/state/vastai-async`` (not created here)."""
    xdg = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "vastai-async"


def generate_ssh_keypair(path: Path) -> str:
    """Write a new ed25519 private key (mode 0600) at ``path`` and its public half at ``path.pub``.

    Args:
        path: where the private key goes; its parent folder is created (mode 0700) if needed.

    Returns:
        The OpenSSH public line, e.g. ``ssh-ed25519 AAAA...``.
    """
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Created with 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its old mode under O_CREAT
        out.write(key.export_private_key())
    public = key.export_public_key("openssh").decode().strip()
    path.with_name(path.name + ".pub").write_text(public + "\n")
    return public


def get_vastai_config(
    *,
    env_file: str | Path | None = None,
    api_key: str | None = None,
    api_base_url: str | None = None,
    ssh_key_path: str | Path | None = None,
    ssh_key_passphrase: str | None = None,
    preferred_gpus: str | Sequence[str] | None = None,
    template_ids: str | Sequence[str] | None = None,
    max_bid_usd_per_hour: float | None = None,
    min_vram_gb: float | None = None,
    default_disk_gb: float | None = None,
    default_image: str | None = None,
    owner: str | None = None,
    state_dir: str | Path | None = None,
    loading_timeout_s: float | None = None,
    ssh_timeout_s: float | None = None,
    allow_insecure_key: bool | None = None,
    timings: Timings | None = None,
    pacing: Pacing | None = None,
    require_ssh_key: bool = True,
) -> VastAIConfig:
    """Build a validated :class:`VastAIConfig`.

    Each setting comes from its keyword argument when not ``None``, else the real environment,
    else the env file, else its default. The env file is ``env_file`` when given (an error if
    missing), else ``.env.local.vastai`` in the current working folder when present; parent
    folders are never searched and ``os.environ`` is never modified. Unknown ``VASTAI_*``
    variables are ignored.

    The SSH key is loaded to check it and to derive ``ssh_public_key``.

    Args:
        env_file: a dotenv file to read instead of ``./.env.local.vastai``.
        api_key: ``VASTAI_API_KEY`` (required).
        api_base_url: ``VASTAI_API_BASE_URL``, an http(s) URL.
        ssh_key_path: ``VASTAI_SSH_KEY_PATH`` (required), a private key file.
        ssh_key_passphrase: ``VASTAI_SSH_KEY_PASSPHRASE``, for an encrypted key.
        preferred_gpus: ``VASTAI_PREFERRED_GPUS``, a list or a comma-separated string.
        template_ids: ``VASTAI_TEMPLATE_IDS``, a list or a comma-separated string.
        max_bid_usd_per_hour: ``VASTAI_MAX_BID_PER_HOUR``, > 0.
        min_vram_gb: ``VASTAI_MIN_VRAM_GB``, >= 0.
        default_disk_gb: ``VASTAI_DEFAULT_DISK_GB``, > 0.
        default_image: ``VASTAI_DEFAULT_IMAGE``.
        owner: ``VASTAI_OWNER``, ``[A-Za-z0-9._-]``, at most 64 characters.
        state_dir: ``VASTAI_STATE_DIR`` (not created here).
        loading_timeout_s: ``VASTAI_LOADING_TIMEOUT_S`` -> ``timings.loading_s``, > 0.
        ssh_timeout_s: ``VASTAI_SSH_TIMEOUT_S`` -> ``timings.ssh_s``, > 0.
        allow_insecure_key: ``VASTAI_ALLOW_INSECURE_KEY``: accept a key file readable by
            group or others.
        timings: used as given; the two timeout variables are then not read (the two timeout
            arguments still apply on top).
        pacing: per-route pacing; default :class:`Pacing`.
        require_ssh_key: ``False`` for read-only use (search, list, show, logs, destroy): a
            missing ``VASTAI_SSH_KEY_PATH`` is then not an error (a given one is still checked),
            and :meth:`VastAIConfig.ssh_identity` raises when something needs the key.

    Returns:
        The frozen configuration.

    Raises:
        ConfigError: listing every invalid or missing setting, by variable name.
    """
    r = _Reader()
    r.load_file(env_file)

    key = r.take("API_KEY", api_key, r.env.str, ..., (_text, _not_blank))
    url = r.take("API_BASE_URL", api_base_url, r.env.str, DEFAULT_API_BASE_URL, (_text, _http_url))
    key_path = r.take(
        "SSH_KEY_PATH",
        ssh_key_path,
        r.env.str,
        ... if require_ssh_key else None,
        (_pathlike, _not_blank),
    )
    passphrase = r.take("SSH_KEY_PASSPHRASE", ssh_key_passphrase, r.env.str, None, (_text,))
    gpus = r.take_list("PREFERRED_GPUS", preferred_gpus, ("4090", "A100"))
    templates = r.take_list("TEMPLATE_IDS", template_ids, ())
    max_bid = r.take("MAX_BID_PER_HOUR", max_bid_usd_per_hour, r.env.float, 4.5, _POSITIVE)
    min_vram = r.take("MIN_VRAM_GB", min_vram_gb, r.env.float, 24.0, _NON_NEGATIVE)
    disk = r.take("DEFAULT_DISK_GB", default_disk_gb, r.env.float, 64.0, _POSITIVE)
    image = r.take(
        "DEFAULT_IMAGE",
        default_image,
        r.env.str,
        "vastai/base-image:@vastai-automatic-tag",
        (_text, _not_blank),
    )
    owner_id = r.take("OWNER", owner, r.env.str, None, (_text, _owner))
    state = r.take("STATE_DIR", state_dir, r.env.str, None, (_pathlike, _not_blank, _state_dir))
    insecure = r.take("ALLOW_INSECURE_KEY", allow_insecure_key, r.env.bool, False, (_boolean,))
    # Explicit objects win: the timeout variables only refine the default Timings.
    read_env = r.env.float if timings is None else None
    loading = r.take("LOADING_TIMEOUT_S", loading_timeout_s, read_env, None, _POSITIVE)
    ssh_s = r.take("SSH_TIMEOUT_S", ssh_timeout_s, read_env, None, _POSITIVE)
    r.seal()

    public_key: str | None = None
    key_file: Path | None = None
    if key_path is not None and not r.has_problem("SSH_KEY_PATH"):
        key_file = Path(key_path).expanduser().absolute()
        public_key = r.load_key(key_file, passphrase or None, allow_insecure=bool(insecure))
    if r.problems:
        raise ConfigError(sorted(r.problems, key=_problem_order))

    changes = {
        name: float(value)
        for name, value in (("loading_s", loading), ("ssh_s", ssh_s))
        if value is not None
    }
    return VastAIConfig(
        api_key=_must(key).strip(),
        api_base_url=_must(url).strip().rstrip("/"),
        ssh_key_path=key_file,
        ssh_key_passphrase=passphrase or None,
        ssh_public_key=public_key,
        preferred_gpus=_must(gpus),
        template_ids=_must(templates),
        max_bid_usd_per_hour=float(_must(max_bid)),
        min_vram_gb=float(_must(min_vram)),
        default_disk_gb=float(_must(disk)),
        default_image=_must(image).strip(),
        owner=owner_id if owner_id is not None else default_owner(),
        state_dir=Path(state).expanduser() if state is not None else default_state_dir(),
        allow_insecure_key=bool(insecure),
        timings=(timings if timings is not None else Timings()).replace(**changes),
        pacing=pacing if pacing is not None else Pacing(),
    )


# --- validators: raise ma.ValidationError so environs and keyword arguments share them ---


def _text(value: object) -> None:
    if not isinstance(value, str):
        raise ma.ValidationError("must be a string")


def _pathlike(value: object) -> None:
    if not isinstance(value, str | os.PathLike):
        raise ma.ValidationError("must be a path")


def _boolean(value: object) -> None:
    if not isinstance(value, bool):
        raise ma.ValidationError("must be true or false")


def _not_blank(value: object) -> None:
    if not str(os.fspath(value) if isinstance(value, os.PathLike) else value).strip():
        raise ma.ValidationError("missing (empty value)")


def _number(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ma.ValidationError("not a number")
    if not math.isfinite(value):
        raise ma.ValidationError("must be a finite number")


def _above_zero(value: float) -> None:
    if not value > 0:
        raise ma.ValidationError(f"out of range: must be > 0, got {value!r}")


def _at_least_zero(value: float) -> None:
    if not value >= 0:
        raise ma.ValidationError(f"out of range: must be >= 0, got {value!r}")


_POSITIVE = (_number, _above_zero)
_NON_NEGATIVE = (_number, _at_least_zero)


def _http_url(value: str) -> None:
    # Never echo the URL: it could carry credentials in its user-info part.
    try:
        url = URL(value.strip())
        port = url.port  # yarl raises on an out-of-range port only when asked
    except ValueError:
        raise ma.ValidationError("not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host or port is None:
        raise ma.ValidationError("not an http(s) URL (expected e.g. https://console.vast.ai)")
    if any(c.isspace() for c in value.strip()):
        raise ma.ValidationError("not an http(s) URL: contains whitespace")


def _state_dir(value: str | os.PathLike[str]) -> None:
    # Checked now, not after renting: pinned host keys are written there once a login works.
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ma.ValidationError("must be an absolute path (the working folder changes)")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ma.ValidationError(f"not a directory: {existing}")


def _owner(value: str) -> None:
    if not OWNER_PATTERN.fullmatch(value):
        raise ma.ValidationError("must be 1 to 64 characters from [A-Za-z0-9._-]")


# --- collection: every problem gathered, named by variable ---

_ORDER = (
    "env_file",
    "API_KEY",
    "API_BASE_URL",
    "SSH_KEY_PATH",
    "SSH_KEY_PASSPHRASE",
    "PREFERRED_GPUS",
    "TEMPLATE_IDS",
    "MAX_BID_PER_HOUR",
    "MIN_VRAM_GB",
    "DEFAULT_DISK_GB",
    "DEFAULT_IMAGE",
    "OWNER",
    "STATE_DIR",
    "LOADING_TIMEOUT_S",
    "SSH_TIMEOUT_S",
    "ALLOW_INSECURE_KEY",
)


def _problem_order(problem: tuple[str, str]) -> int:
    name = problem[0].removeprefix(_PREFIX)
    return _ORDER.index(name) if name in _ORDER else len(_ORDER)


def _must(value: _T | None) -> _T:
    # Only reached once no problem was found, so every required value is present.
    if value is None:  # pragma: no cover - guarded by the problems check
        raise RuntimeError("internal error: configuration value missing after validation")
    return value


def _split(value: str | Sequence[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return tuple(item.strip() for item in items if item.strip())


class _Reader:
    """environs ``Env(eager=False)`` plus our own problems list, so all errors come out at once."""

    def __init__(self) -> None:
        self.env = Env(eager=False)
        self.problems: list[tuple[str, str]] = []

    def load_file(self, env_file: str | Path | None) -> None:
        if env_file is not None and not Path(env_file).is_file():
            self.problems.append(("env_file", f"env file not found: {env_file}"))
            return
        path = Path(env_file) if env_file is not None else Path.cwd() / ENV_FILE_NAME
        # environs 15 loads the file into the Env object (not os.environ) and the real
        # environment still wins; recurse=False keeps parent folders out of it.
        self.env.read_env(path, recurse=False, override=False)

    def take(
        self,
        suffix: str,
        given: Any,
        read: Callable[..., Any] | None,
        default: Any,
        checks: Sequence[Callable[[Any], None]],
    ) -> Any:
        """The keyword argument when given (checked), else the variable read by ``read``."""
        if given is not None:
            for check in checks:
                try:
                    check(given)
                except ma.ValidationError as err:
                    self.problems.append((_PREFIX + suffix, _reason(err.messages)))
                    return None
            return given
        if read is None:
            return None
        with self.env.prefixed(_PREFIX):
            if default is not ...:
                # An optional variable left empty (``VASTAI_OWNER=`` in a copied example file)
                # means its default; a required one falls through and is reported missing.
                raw = self.env.str(suffix, None)
                if raw is not None and not raw.strip():
                    return default
            # environs already parsed the type, so only the value checks apply.
            value_checks = [c for c in checks if c not in (_text, _pathlike, _boolean)]
            return read(suffix, default, validate=value_checks)

    def take_list(
        self, suffix: str, given: str | Sequence[str] | None, default: tuple[str, ...]
    ) -> tuple[str, ...] | None:
        if given is not None:
            return _split(given)
        with self.env.prefixed(_PREFIX):
            raw = self.env.str(suffix, None)
        return default if raw is None else _split(raw)

    def seal(self) -> None:
        try:
            self.env.seal()
        except EnvValidationError as err:
            messages: Any = err.error_messages
            for name, reasons in dict(messages).items():
                self.problems.append((str(name), _reason(reasons)))

    def has_problem(self, suffix: str) -> bool:
        """Whether a problem was already recorded for ``VASTAI_<suffix>``."""
        return any(name == _PREFIX + suffix for name, _ in self.problems)

    def load_key(self, path: Path, passphrase: str | None, *, allow_insecure: bool) -> str | None:
        """Check the key file and return its OpenSSH public line (None after a problem)."""
        where = _PREFIX + "SSH_KEY_PATH"
        if not path.exists():
            self.problems.append((where, f"key file missing: {path}"))
            return None
        if not path.is_file():
            self.problems.append((where, f"key file unreadable (not a regular file): {path}"))
            return None
        mode = path.stat().st_mode & 0o777
        if mode & 0o077 and not allow_insecure:
            self.problems.append(
                (
                    where,
                    f"key file {path} is readable by group or others (mode {mode:04o}): "
                    f"chmod 600 it, or set {_PREFIX}ALLOW_INSECURE_KEY=1",
                )
            )
        try:
            key = asyncssh.read_private_key(path, passphrase)
        except OSError as err:
            self.problems.append((where, f"key file unreadable: {path} ({err.strerror})"))
            return None
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as err:
            self.problems.append(_key_problem(path, str(err), passphrase is not None))
            return None
        return str(key.export_public_key("openssh").decode().strip())


def _key_problem(path: Path, message: str, has_passphrase: bool) -> tuple[str, str]:
    # asyncssh's messages never hold the passphrase, but we map them to our own words anyway.
    lowered = message.lower()
    if "bcrypt" in lowered:
        return (
            _PREFIX + "SSH_KEY_PATH",
            f"key file {path} is an encrypted OpenSSH key, which needs the bcrypt package "
            "(pip install 'asyncssh[bcrypt]')",
        )
    if "passphrase must be specified" in lowered:
        return (_PREFIX + "SSH_KEY_PASSPHRASE", f"key file {path} is encrypted: set a passphrase")
    if has_passphrase and ("decrypt" in lowered or "passphrase" in lowered):
        return (_PREFIX + "SSH_KEY_PASSPHRASE", f"wrong passphrase for key file {path}")
    return (_PREFIX + "SSH_KEY_PATH", f"key file {path} is not a private key")


def _reason(messages: Any) -> str:
    if isinstance(messages, dict):
        messages = [m for ms in messages.values() for m in ms]
    if isinstance(messages, str):
        messages = [messages]
    words = [str(m) for m in messages]
    return "; ".join(_ENVIRONS_WORDS.get(w, w) for w in words)


#: environs / marshmallow messages in our words (each names what is wrong, not the value).
_ENVIRONS_WORDS = {
    "Environment variable not set.": "missing (required)",
    "Not a valid number.": "not a number",
    "Special numeric values (nan or infinity) are not permitted.": "must be a finite number",
    "Not a valid boolean.": "not a boolean (use true/false, 1/0, yes/no)",
}
