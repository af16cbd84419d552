"""A local Vast.ai: HTTP API, market, instance lifecycle, billing ledger, SSH and faults.

See ``docs/sandbox.md``. The sandbox never imports the SDK's models, converter, session, client
or query modules: it speaks raw JSON from its own state, so a wire mistake on either side shows.
"""

from __future__ import annotations

from vastai_async.sandbox.faults import HTTPFault
from vastai_async.sandbox.lifecycle import LifecycleFault
from vastai_async.sandbox.ratelimit import DEFAULT_THRESHOLDS
from vastai_async.sandbox.server import Sandbox
from vastai_async.sandbox.sshd import SSHFaults

__all__ = ["DEFAULT_THRESHOLDS", "HTTPFault", "LifecycleFault", "SSHFaults", "Sandbox"]
