"""Every interval and deadline the SDK uses, in one frozen object.

Defaults suit the real Vast.ai: image pulls of 10+ GB can take 20 minutes, so the loading
deadline is generous. :meth:`Timings.scaled` serves the sandbox's clock (design.md, "Timings and
the sandbox clock"): what models waiting on the cloud is multiplied, network timeouts are not.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from vastai_async.errors import InvalidRequestError

__all__ = ["Timings"]


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    # InvalidRequestError is a ValueError too: every error the SDK raises is a VastAIError.
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidRequestError(f"{attribute.name} must be a number > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Timings:
    """Deadlines and intervals, in seconds.

    Attributes:
        overall_s: deadline for a whole provision (race), from start to proven login.
        loading_s: how long one candidate may stay created/loading before it is dropped.
        ssh_s: how long after a candidate reports running its SSH login may take to succeed.
        poll_interval_s: the service-wide status poller's tick.
        probing_poll_interval_s: how often a candidate's status is listed once its SSH probes
            run (rounded to whole ticks of ``poll_interval_s``): the probes find the login, the
            status only has to catch a fatal state (exited, offline, gone).
        probe_interval_s: pause between two SSH probe attempts on one endpoint.
        probe_floor_s: the least pause between two probes, whatever else is configured.
        connect_timeout_s: TCP connect + SSH handshake timeout of one probe (network; not scaled).
        login_timeout_s: SSH authentication timeout of one probe (network; not scaled).
        request_timeout_s: total timeout of one HTTP request (network; not scaled).
        teardown_budget_s: how long teardown may take before ``TeardownError`` (real time: its
            HTTP calls run at network speed on the sandbox too, so it is not scaled).
    """

    overall_s: float = attrs.field(default=1800.0, validator=_positive)
    loading_s: float = attrs.field(default=1200.0, validator=_positive)
    ssh_s: float = attrs.field(default=300.0, validator=_positive)
    poll_interval_s: float = attrs.field(default=3.0, validator=_positive)
    probing_poll_interval_s: float = attrs.field(default=12.0, validator=_positive)
    probe_interval_s: float = attrs.field(default=1.0, validator=_positive)
    probe_floor_s: float = attrs.field(default=0.5, validator=_positive)
    connect_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    login_timeout_s: float = attrs.field(default=15.0, validator=_positive)
    request_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    teardown_budget_s: float = attrs.field(default=60.0, validator=_positive)

    #: Fields that model waiting on the cloud; :meth:`scaled` multiplies these and only these.
    CLOUD_FIELDS: ClassVar[tuple[str, ...]] = (
        "overall_s",
        "loading_s",
        "ssh_s",
        "poll_interval_s",
        "probing_poll_interval_s",
        "probe_interval_s",
        "probe_floor_s",
    )

    @property
    def probe_pause_s(self) -> float:
        """The pause actually used between two probes: the interval, never below the floor."""
        return max(self.probe_interval_s, self.probe_floor_s)

    def scaled(self, factor: float) -> Timings:
        """Return a copy whose cloud waits are multiplied by ``factor``.

        Network timeouts (connect, login, request) and the teardown budget are left alone: TCP,
        HTTP and SSH handshakes are real even on the sandbox, and teardown is HTTP work.

        Args:
            factor: the sandbox's ``time_scale`` (0.05 turns a 90 s boot into 4.5 s).

        Raises:
            InvalidRequestError: when ``factor`` is not positive.
        """
        if not factor > 0:
            raise InvalidRequestError(f"scale factor must be > 0, got {factor!r}")
        return attrs.evolve(
            self, **{name: getattr(self, name) * factor for name in self.CLOUD_FIELDS}
        )

    def replace(self, **changes: float) -> Timings:
        """Return a copy with some fields changed (validated).

        Raises:
            InvalidRequestError: a value is not a number > 0.
        """
        return attrs.evolve(self, **changes)
