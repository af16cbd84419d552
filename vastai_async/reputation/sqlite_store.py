"""The local host history: SQLite in the state directory, shared safely by several processes.

``<state_dir>/hosts.sqlite3`` in WAL mode: readers never wait for the writer, and writers take
the database lock at the start of their transaction (``BEGIN IMMEDIATE``) and wait for one
another (``busy_timeout``), so workers of one host can record at the same time without losing a
row. Every call runs in a worker thread (:func:`asyncio.to_thread`) with its own connection, so
the event loop never blocks on the disk. Commits do not wait for the disk (``synchronous =
NORMAL``): a power cut may lose the last records, never the file. Reading a store that was never
written does not create it.

Bounded: each write drops records older than ``max_age_s``, keeps the newest
``max_per_machine`` records of each machine it touched, and at most ``max_records`` in all.
The schema version is SQLite's ``user_version``: an older file is rebuilt (the history is a
cache: losing it costs only what was learned); a newer one is refused with
:class:`~vastai_async.reputation.HostHistoryError`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs
import backoff

from vastai_async.reputation.records import HostHistoryError, HostOutcome

__all__ = ["FILE_NAME", "SCHEMA_VERSION", "SQLiteHostHistory"]

#: The store's file name in the state directory.
FILE_NAME = "hosts.sqlite3"

#: The schema this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = 2  # 2: offer_id may be NULL (adopted instances)

_FIELDS = [f.name for f in attrs.fields(HostOutcome)]
_COLUMNS = ", ".join(_FIELDS)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS outcomes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id INTEGER NOT NULL, host_id INTEGER, offer_id INTEGER, instance_id INTEGER,
    kind TEXT NOT NULL, reason TEXT NOT NULL, image TEXT, dph_total REAL, reliability REAL,
    gpu_name TEXT, running_s REAL, login_s REAL, elapsed_s REAL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outcomes_machine ON outcomes (machine_id, at);
CREATE INDEX IF NOT EXISTS outcomes_at ON outcomes (at);
PRAGMA user_version = {SCHEMA_VERSION};
"""


class SQLiteHostHistory:
    """Host history in one SQLite file (see the module's docstring).

    Args:
        path: the database file (:meth:`in_state_dir` names the default one).
        max_per_machine: newest records kept per machine.
        max_records: records kept in all.
        max_age_s: records older than this age out (default 30 days).
        busy_timeout_s: how long a writer waits for another process's write.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_per_machine: int = 20,
        max_records: int = 20_000,
        max_age_s: float = 30 * 86_400.0,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path).expanduser()
        self.max_per_machine = max_per_machine
        self.max_records = max_records
        self.max_age_s = max_age_s
        self._busy_ms = int(busy_timeout_s * 1000)
        self._ready = False

    @classmethod
    def in_state_dir(cls, state_dir: str | Path, **bounds: float) -> SQLiteHostHistory:
        """The default store: ``<state_dir>/hosts.sqlite3`` (``bounds`` as for the class)."""
        return cls(Path(state_dir).expanduser() / FILE_NAME, **bounds)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"SQLiteHostHistory({str(self.path)!r})"

    # -- async interface (each call in a thread) ------------------------------------------

    async def record(self, outcomes: Sequence[HostOutcome]) -> None:
        """Add outcomes, then age out what the bounds say."""
        if outcomes:
            await asyncio.to_thread(self.record_sync, list(outcomes))

    async def history(self, machine_ids: Iterable[int] | None = None) -> list[HostOutcome]:
        """Outcomes of these machines (``None``: all), newest first."""
        ids = None if machine_ids is None else sorted(set(machine_ids))
        return await asyncio.to_thread(self.history_sync, ids)

    async def forget(self, machine_ids: Iterable[int] | None = None) -> int:
        """Drop these machines' records (``None``: all); returns how many rows went."""
        ids = None if machine_ids is None else sorted(set(machine_ids))
        return await asyncio.to_thread(self.forget_sync, ids)

    async def close(self) -> None:
        """Nothing stays open between calls; present for the interface."""

    # -- blocking implementation -----------------------------------------------------------

    def record_sync(self, outcomes: Sequence[HostOutcome]) -> None:
        """:meth:`record` without the thread (for scripts and other threads)."""
        rows = [tuple(getattr(o, name) for name in _FIELDS) for o in outcomes]
        marks = ", ".join("?" for _ in _FIELDS)
        with self._write() as db:
            # Column names are this module's constants; every value is a bound parameter.
            insert = f"INSERT INTO outcomes ({_COLUMNS}) VALUES ({marks})"  # noqa: S608
            db.executemany(insert, rows)
            db.execute("DELETE FROM outcomes WHERE at < ?", (time.time() - self.max_age_s,))
            for machine_id in {o.machine_id for o in outcomes}:
                db.execute(
                    "DELETE FROM outcomes WHERE machine_id = ? AND id NOT IN (SELECT id FROM "
                    "outcomes WHERE machine_id = ? ORDER BY at DESC, id DESC LIMIT ?)",
                    (machine_id, machine_id, self.max_per_machine),
                )
            db.execute(
                "DELETE FROM outcomes WHERE id NOT IN "
                "(SELECT id FROM outcomes ORDER BY at DESC, id DESC LIMIT ?)",
                (self.max_records,),
            )

    def history_sync(self, machine_ids: Sequence[int] | None = None) -> list[HostOutcome]:
        """:meth:`history` without the thread."""
        if not self.path.exists():
            return []  # nothing recorded yet: no need to create the file on the race's path
        query = f"SELECT {_COLUMNS} FROM outcomes"  # noqa: S608 (constant column names)
        params: list[int] = []
        if machine_ids is not None:
            if not machine_ids:
                return []
            query += f" WHERE machine_id IN ({', '.join('?' for _ in machine_ids)})"
            params = list(machine_ids)
        with self._read() as db:
            rows = db.execute(query + " ORDER BY at DESC, id DESC", params).fetchall()
        return [HostOutcome(**dict(zip(_FIELDS, row, strict=True))) for row in rows]

    def forget_sync(self, machine_ids: Sequence[int] | None = None) -> int:
        """:meth:`forget` without the thread."""
        if not self.path.exists():
            return 0
        with self._write() as db:
            if machine_ids is None:
                return db.execute("DELETE FROM outcomes").rowcount
            marks = ", ".join("?" for _ in machine_ids)
            delete = f"DELETE FROM outcomes WHERE machine_id IN ({marks})"  # noqa: S608 (bound)
            cur = db.execute(delete, machine_ids)
            return cur.rowcount

    # -- connections -----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(self.path, timeout=self._busy_ms / 1000, isolation_level=None)
        except (OSError, sqlite3.Error) as err:
            raise HostHistoryError(f"cannot open the host history {self.path}: {err}") from err
        try:
            db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            # WAL + NORMAL: a commit does not wait for the disk; a power cut may lose the last
            # few records, never corrupt the file (the history is a cache).
            db.execute("PRAGMA synchronous = NORMAL")
            if not self._ready:
                self._prepare(db)
        except sqlite3.Error as err:
            db.close()
            raise HostHistoryError(f"cannot prepare the host history {self.path}: {err}") from err
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Switch the file to WAL and build or check the schema, once per store object.

        Switching a new file to WAL needs the file to itself, and SQLite answers "database is
        locked" at once, without its busy handler, when several processes open a new file
        together; so that one step is retried (``backoff``) for up to ``busy_timeout_s``.
        """
        switch = backoff.on_exception(
            backoff.expo,
            sqlite3.OperationalError,
            max_time=self._busy_ms / 1000,
            giveup=_not_busy,
            factor=0.005,
            max_value=0.2,
            logger=None,
        )(_use_wal)
        switch(db)
        db.execute("BEGIN IMMEDIATE")  # waits for another writer (busy_timeout)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise HostHistoryError(
                    f"the host history {self.path} has schema {version}, newer than this "
                    f"vastai_async understands ({SCHEMA_VERSION}); upgrade, or remove the file"
                )
            if version < SCHEMA_VERSION:
                # 0 is a new file; anything else is an older layout: rebuild (it is a cache).
                db.execute("DROP TABLE IF EXISTS outcomes")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._ready = True

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise HostHistoryError(f"host history {self.path}: {err}") from err
        finally:
            db.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            yield db
        except sqlite3.Error as err:
            raise HostHistoryError(f"host history {self.path}: {err}") from err
        finally:
            db.close()


def _use_wal(db: sqlite3.Connection) -> None:
    # Reading the mode takes no lock; only a file not yet in WAL is switched (the mode persists).
    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":  # SQLite answers with the old mode when it could not switch
            raise sqlite3.OperationalError(f"database is locked (journal mode still {mode})")


def _not_busy(err: Exception) -> bool:
    text = str(err)
    return "locked" not in text and "busy" not in text
