"""Live progress of a race: one row per candidate on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

import attrs
import click

from vastai_async.events import (
    CandidateChosen,
    CandidateFailed,
    CreateFailed,
    Event,
    InstanceCreated,
    InstanceDestroyed,
    ProbeAttempt,
    SpendUpdate,
    StatusChanged,
    WinnerChosen,
)


@attrs.define
class _Row:
    offer_id: int
    gpu: str
    dph_total: float | None
    instance_id: int | None = None
    status: str = "creating"
    probes: int = 0
    started: float = attrs.field(factory=time.monotonic)
    ended: float | None = None
    note: str = ""


class ProgressPrinter:
    """An ``on_event`` callback that shows each candidate's status, probes, elapsed time, spend.

    Args:
        live: redraw a table in place (a terminal); otherwise print one plain line per event.
        err: write to stderr (the default, so stdout stays for results); ``False`` for stdout.
    """

    def __init__(self, *, live: bool, err: bool = True) -> None:
        self._live_mode = live
        self._err = err
        self._rows: dict[int, _Row] = {}
        self._by_instance: dict[int, _Row] = {}
        self._spend = 0.0
        self._live: Any = None

    def __enter__(self) -> ProgressPrinter:
        if self._live_mode:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self._table(),
                console=Console(file=sys.stderr if self._err else sys.stdout),
                transient=False,
            )
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    def losers_spend_usd(self, winner_id: int) -> float:
        """Estimated spend of every candidate but the winner (USD, our clock)."""
        total = 0.0
        for row in self._rows.values():
            if row.instance_id is None or row.instance_id == winner_id or row.dph_total is None:
                continue
            end = row.ended if row.ended is not None else time.monotonic()
            total += row.dph_total * (end - row.started) / 3600.0
        return total

    def on_event(self, event: Event) -> None:
        """Update rows from one race event."""
        line = self._apply(event)
        if self._live is not None:
            self._live.update(self._table())
        elif line:
            click.echo(line, err=self._err)

    def _apply(self, event: Event) -> str | None:
        if isinstance(event, CandidateChosen):
            self._rows[event.offer_id] = _Row(
                offer_id=event.offer_id, gpu=event.gpu_name or "?", dph_total=event.dph_total
            )
            return f"candidate offer {event.offer_id} ({event.gpu_name}, {event.dph_total} $/h)"
        if isinstance(event, InstanceCreated):
            row = self._rows.get(event.offer_id)
            if row is not None:
                row.instance_id = event.instance_id
                row.status = "created"
                self._by_instance[event.instance_id] = row
            return f"offer {event.offer_id}: created instance {event.instance_id}"
        if isinstance(event, CreateFailed):
            row = self._rows.get(event.offer_id)
            if row is not None:
                row.status, row.note, row.ended = "not created", event.reason, time.monotonic()
            return f"offer {event.offer_id}: not created: {event.reason}"
        if isinstance(event, StatusChanged):
            row = self._by_instance.get(event.instance_id)
            if row is not None:
                row.status = event.new or "created"
            return f"instance {event.instance_id}: {event.old or 'new'} -> {event.new or '?'}"
        if isinstance(event, ProbeAttempt):
            row = self._by_instance.get(event.instance_id)
            if row is not None:
                row.probes += 1
            return None  # too chatty for plain lines
        if isinstance(event, CandidateFailed):
            row = self._by_instance.get(event.instance_id or -1)
            if row is not None:
                row.status, row.note = "failed", event.reason
            return f"instance {event.instance_id}: failed: {event.reason}"
        if isinstance(event, WinnerChosen):
            row = self._by_instance.get(event.instance_id)
            if row is not None:
                row.status, row.note = "WON", f"{event.kind} {event.host}:{event.port}"
            return (
                f"instance {event.instance_id}: SSH login proven ({event.kind}) "
                f"after {event.elapsed_s:.1f} s"
            )
        if isinstance(event, InstanceDestroyed):
            row = self._by_instance.get(event.instance_id)
            if row is not None:
                row.ended = row.ended or time.monotonic()
                if row.status != "failed":
                    row.status = "destroyed"
            return f"instance {event.instance_id}: destroyed ({event.reason})"
        if isinstance(event, SpendUpdate):
            self._spend = event.total_usd
            return None
        return None

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"race (estimated spend ${self._spend:.4f})")
        for header in ("offer", "gpu", "$/h", "instance", "status", "probes", "elapsed", "note"):
            table.add_column(header)
        now = time.monotonic()
        for row in self._rows.values():
            elapsed = (row.ended or now) - row.started
            table.add_row(
                str(row.offer_id),
                row.gpu,
                "-" if row.dph_total is None else f"{row.dph_total:.3f}",
                "-" if row.instance_id is None else str(row.instance_id),
                row.status,
                str(row.probes),
                f"{elapsed:.1f}s",
                row.note[:40],
            )
        return table
