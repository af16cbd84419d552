"""Configuration: the frozen :class:`VastAIConfig` and :func:`get_vastai_config`.

Precedence: keyword arguments > real environment > ``.env.local.vastai`` (or ``env_file=``) >
defaults.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from vastai_async.pacing import Pacing
from vastai_async.timings import Timings

__all__ = ["DEFAULT_API_BASE_URL", "VastAIConfig"]

DEFAULT_API_BASE_URL = "https://console.vast.ai/api/v0"


@attrs.frozen(kw_only=True)
class VastAIConfig:
    """Validated settings. Build it with :func:`get_vastai_config`.

    Attributes:
        api_key: the Vast.ai API key (secret: never in repr).
        api_base_url: server root or root + ``/api/v0``.
        ssh_key_path: private key used to log into rentals.
        ssh_key_passphrase: passphrase of an encrypted key (secret).
        ssh_public_key: the OpenSSH public half of the key, attached to each rental.
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
    ssh_key_path: Path
    ssh_key_passphrase: str | None = attrs.field(default=None, repr=False)
    ssh_public_key: str
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

    def scaled(self, factor: float) -> VastAIConfig:
        """A copy whose timings and pacing run on a clock scaled by ``factor`` (the sandbox's)."""
        return attrs.evolve(
            self, timings=self.timings.scaled(factor), pacing=self.pacing.scaled(factor)
        )
