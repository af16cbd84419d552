"""Job runners on :class:`~vastai_async.AsyncComputeProvider`: plain asyncio and arq.

``vastai_async.integrations.asyncio_runner`` needs nothing beyond the SDK;
``vastai_async.integrations.arq`` needs the ``arq`` extra (``pip install vastai-async[arq]``)
and is therefore not imported here.
"""

from __future__ import annotations

from vastai_async.integrations.asyncio_runner import adopt_previous_try, run_job, run_jobs
from vastai_async.integrations.jobs import (
    CommandOutput,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobResult,
    JobSpec,
    JobTimeoutError,
    JobTimes,
)

__all__ = [
    "CommandOutput",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobResult",
    "JobSpec",
    "JobTimeoutError",
    "JobTimes",
    "adopt_previous_try",
    "run_job",
    "run_jobs",
]
