"""Job records shared by the job runners: what to run (:class:`JobSpec`) and what happened.

Everything here is plain frozen data. :meth:`JobSpec.to_payload` / :meth:`JobSpec.from_payload`
and :meth:`JobResult.to_payload` give JSON-safe dicts, so a spec can travel through a queue (arq
pickles, msgpack or JSON all work) and a result can come back without pickling exceptions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from vastai_async._converter import structure, unstructure
from vastai_async.errors import InvalidRequestError, ResponseValidationError, VastAIError
from vastai_async.labels import validate_id

__all__ = [
    "CommandOutput",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobResult",
    "JobSpec",
    "JobTimeoutError",
    "JobTimes",
]


class JobError(VastAIError):
    """A job runner gave up on a job.

    Attributes:
        job_id: the job.
    """

    def __init__(self, message: str, *, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(message)


class JobTimeoutError(JobError, TimeoutError):
    """The job did not finish within its ``timeout_s`` (its machine was destroyed)."""


class JobCancelledError(JobError):
    """The job was cancelled (``fail_fast`` after another job failed) or never started."""


class JobFailedError(JobError):
    """The job failed with an exception outside the SDK's tree (kept as ``__cause__``)."""


def _optional_positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequestError(f"{attribute.name} must be a positive number, got {value!r}")
    if value < 0 or (value == 0 and attribute.name != "min_vram_gb"):
        raise InvalidRequestError(f"{attribute.name} must be > 0, got {value!r}")


def _job_id(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    validate_id("job_id", value)


def _commands(instance: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
    if not all(isinstance(c, str) and c.strip() for c in value):
        raise InvalidRequestError("commands must be non-empty strings")


def _fan_out(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"fan_out must be an integer >= 1, got {value!r}")


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(a), str(b)) for a, b in value)


def _opt_tuple(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(str(v) for v in value)


@attrs.frozen(kw_only=True)
class JobSpec:
    """One job: rent a machine, upload, run commands over SSH, download, destroy the machine.

    Attributes:
        job_id: ``[A-Za-z0-9._-]``, written into the machine's label; a retry of the same job
            must use the same id (that is how it finds what an earlier try left).
        commands: command lines run in order over SSH.
        image: container image (provider default when ``None``).
        gpus: GPU names to search for (provider default when ``None``).
        min_vram_gb: minimum VRAM per GPU.
        max_usd_per_hour: price ceiling for the search (never above the provider's own).
        max_spend_usd: budget for the provisioning race (passed to ``provision_instance``).
        fan_out: candidates raced at once.
        timeout_s: deadline for the whole job, provisioning included.
        command_timeout_s: deadline for each command.
        check: a command exiting non-zero fails the job (later commands are not run).
        extra_env: environment variables for the container.
        uploads: ``(local path, remote path)`` pairs copied before the commands.
        downloads: ``(remote path, local path)`` pairs copied after the commands.
    """

    job_id: str = attrs.field(validator=_job_id)
    commands: tuple[str, ...] = attrs.field(converter=tuple, validator=_commands)
    image: str | None = None
    gpus: tuple[str, ...] | None = attrs.field(default=None, converter=_opt_tuple)
    min_vram_gb: float | None = attrs.field(default=None, validator=_optional_positive)
    max_usd_per_hour: float | None = attrs.field(default=None, validator=_optional_positive)
    max_spend_usd: float | None = attrs.field(default=None, validator=_optional_positive)
    fan_out: int = attrs.field(default=2, validator=_fan_out)
    timeout_s: float | None = attrs.field(default=None, validator=_optional_positive)
    command_timeout_s: float | None = attrs.field(default=None, validator=_optional_positive)
    check: bool = True
    extra_env: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    uploads: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_pairs)
    downloads: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_pairs)

    def to_payload(self) -> dict[str, Any]:
        """A JSON-safe dict; :meth:`from_payload` turns it back into the same spec."""
        payload: dict[str, Any] = unstructure(self)
        return payload

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> JobSpec:
        """Rebuild a spec from :meth:`to_payload`'s dict.

        Raises:
            InvalidRequestError: unknown keys or invalid values.
        """
        known = {a.name for a in attrs.fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise InvalidRequestError(f"unknown job fields: {', '.join(unknown)}")
        try:
            # The one converter reads it; the class's own validators still check every value.
            return structure(dict(payload), cls)
        except VastAIError as err:
            refused = _validator_error(err.__cause__)
            if refused is not None:
                raise refused from None  # a validator's message already names the field
            reason = err.message if isinstance(err, ResponseValidationError) else str(err)
            reason = reason.removeprefix(f"response does not fit {cls.__name__}: ")
            raise InvalidRequestError(f"invalid job payload: {reason}") from err


def _validator_error(err: BaseException | None) -> InvalidRequestError | None:
    """The first of our validators' errors inside what cattrs gathered, if any."""
    if isinstance(err, InvalidRequestError):
        return err
    for inner in getattr(err, "exceptions", ()):
        found = _validator_error(inner)
        if found is not None:
            return found
    return None


@attrs.frozen(kw_only=True)
class CommandOutput:
    """What one command printed.

    Attributes:
        command: the command line.
        exit_status: its exit status (``None`` when it died without one).
        stdout: standard output.
        stderr: standard error.
    """

    command: str
    exit_status: int | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether it exited 0."""
        return self.exit_status == 0


@attrs.frozen(kw_only=True)
class JobTimes:
    """When the job's steps happened (epoch seconds, this process's clock).

    Attributes:
        started_at: the job started (after waiting for a concurrency slot).
        provisioned_at: a machine was ready (``None`` when none was obtained).
        finished_at: the machine was destroyed, or the job gave up.
    """

    started_at: float
    provisioned_at: float | None
    finished_at: float

    @property
    def provision_s(self) -> float | None:
        """Seconds spent getting a machine."""
        return None if self.provisioned_at is None else self.provisioned_at - self.started_at

    @property
    def run_s(self) -> float | None:
        """Seconds from a ready machine to the end (transfers, commands, teardown)."""
        return None if self.provisioned_at is None else self.finished_at - self.provisioned_at

    @property
    def total_s(self) -> float:
        """Seconds from start to finish."""
        return self.finished_at - self.started_at


@attrs.frozen(kw_only=True)
class JobResult:
    """The outcome of one job.

    Attributes:
        job_id: the job.
        ok: every step succeeded and the machine was destroyed.
        instance_id: the machine that ran it, if one was obtained.
        adopted: the machine was left by an earlier try and taken over.
        outputs: one record per command run, in order.
        error: why it failed (always a :class:`~vastai_async.VastAIError`).
        times: when its steps happened.
        dph_total: the machine's price in USD/hour, if known.
        estimated_spend_usd: price x time alive on this process's clock, summed over every
            instance this job created or adopted (losing race candidates included).
    """

    job_id: str
    ok: bool
    instance_id: int | None
    adopted: bool
    outputs: tuple[CommandOutput, ...]
    error: VastAIError | None = attrs.field(eq=False)
    times: JobTimes
    dph_total: float | None
    estimated_spend_usd: float

    def to_payload(self) -> dict[str, Any]:
        """A JSON-safe dict (the error as its class name and message)."""
        return {
            "job_id": self.job_id,
            "ok": self.ok,
            "instance_id": self.instance_id,
            "adopted": self.adopted,
            "outputs": [attrs.asdict(o) for o in self.outputs],
            "error": None
            if self.error is None
            else {"type": type(self.error).__name__, "message": str(self.error)},
            "times": attrs.asdict(self.times),
            "dph_total": self.dph_total,
            "estimated_spend_usd": self.estimated_spend_usd,
        }
