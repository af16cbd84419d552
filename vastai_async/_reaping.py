"""Deciding what ``reap`` destroys and what it spares (pure: no I/O, testable on its own)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from vastai_async._owners import owner_is_dead
from vastai_async.labels import parse_label
from vastai_async.models import Instance
from vastai_async.provider import ReapReport

__all__ = ["plan_reap"]


def plan_reap(
    instances: Iterable[Instance],
    *,
    job_id: str | None,
    owner: str | None,
    older_than_s: float | None,
    live: set[int],
    now: float,
    is_dead: Callable[[str], bool] = owner_is_dead,
) -> ReapReport:
    """Sort instances into destroy and spare, each with its reason.

    Destroyed: our label and the named job, or the named owner, or an owner proven dead, or
    created longer than ``older_than_s`` ago. Spared: foreign or unlabeled instances, kept
    rentals, instances of ``live`` races, and owners alive or unknown that nobody named.

    Args:
        instances: the account's instances.
        job_id: a job to reap.
        owner: an owner to reap.
        older_than_s: reap instances older than this.
        live: instance ids of races still running in this process.
        now: epoch seconds.
        is_dead: the proof that an owner is dead (default: ``owner_is_dead`` without a state
            directory, i.e. the same-PID-namespace proof only).
    """
    destroyed: list[tuple[int, str]] = []
    spared: list[tuple[int, str]] = []
    for item in instances:
        parsed = parse_label(item.label)
        if parsed is None:
            spared.append((item.id, "not a vastai-async label"))
            continue
        if parsed.kept:
            spared.append((item.id, "kept on purpose"))
            continue
        if item.id in live:
            spared.append((item.id, "in a live race of this service"))
            continue
        reason = None
        if job_id is not None and parsed.job_id == job_id:
            reason = f"job {job_id}"
        elif owner is not None and parsed.owner == owner:
            reason = f"owner {owner}"
        elif parsed.owner is not None and is_dead(parsed.owner):
            reason = f"owner {parsed.owner} is dead"
        elif (
            older_than_s is not None
            and item.start_date is not None
            and now - item.start_date > older_than_s
        ):
            reason = f"older than {older_than_s:g} s"
        if reason is None:
            spared.append(
                (
                    item.id,
                    f"owner {parsed.owner} alive or not provably dead, not named "
                    f"(reap it with --owner {parsed.owner})",
                )
            )
            continue
        destroyed.append((item.id, reason))
    return ReapReport(destroyed=tuple(destroyed), spared=tuple(spared))
