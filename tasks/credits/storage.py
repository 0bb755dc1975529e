"""Where the ledger's rows are kept: one small interface, two databases.

``CreditLedger`` holds every rule (what a charge is, the exactly-once key, sums and
summaries) and speaks plain SQL with ``?`` placeholders; a storage only opens
connections, runs a unit of work in one transaction and says how its database spells
the schema. SQLite (``SqliteStorage``, a file: the default for one machine) and
PostgreSQL (``tasks.credits.postgres.PostgresStorage``, for workers on many machines)
are the two; ``open_storage`` picks one from the ledger's location.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tasks.credits.location import is_database_url

T = TypeVar("T")

# The table both databases keep; ``{id}`` and ``{real}`` are the only spellings
# that differ (an auto-numbered key, a double-precision number).
SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id {id},
    dataset TEXT NOT NULL,
    image_id TEXT NOT NULL,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    run_id TEXT NOT NULL,
    credits {real} NOT NULL,
    charged_at TEXT NOT NULL,
    UNIQUE (dataset, image_id, model, task)
);
CREATE INDEX IF NOT EXISTS charges_by_run ON charges (dataset, run_id);
"""


class Session(Protocol):
    """One connection inside a unit of work."""

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of one statement (``?`` placeholders)."""
        ...

    def insert_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run an INSERT for every row; how many rows were inserted."""
        ...


class LedgerStorage(Protocol):
    """A database that keeps the ledger's ``charges`` table."""

    @property
    def name(self) -> str:
        """The ledger as people see it (a file name, a URL without password)."""
        ...

    def read(self, work: Callable[[Session], T]) -> T:
        """``work`` on a connection that sees committed charges."""
        ...

    def write(self, work: Callable[[Session], T]) -> T:
        """``work`` in one transaction: all of it is committed or none of it.

        It may run more than once (a database that resolves a conflict between
        writers by failing one of them): ``work`` must only touch the database.
        """
        ...


def open_storage(location: str | Path, timeout_s: float) -> LedgerStorage:
    """The storage for a ledger location: a PostgreSQL URL or an SQLite file."""
    if is_database_url(location):
        from tasks.credits.postgres import PostgresStorage  # psycopg only when used

        return PostgresStorage(str(location), timeout_s=timeout_s)
    return SqliteStorage(location, timeout_s=timeout_s)


class SqliteStorage:
    """An SQLite file, safe for several threads and processes of one machine.

    Every unit of work opens its own short connection (sqlite3 connections must not
    be shared between threads); writes take the database lock up front (BEGIN
    IMMEDIATE) and WAL mode lets readers go on meanwhile. Keep the file on a local
    disk: SQLite locking over network filesystems is unreliable.
    """

    def __init__(self, path: str | Path, *, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA.format(id="INTEGER PRIMARY KEY", real="REAL"))

    @property
    def name(self) -> str:
        return self.path.name

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            yield conn
        finally:
            conn.close()

    def read(self, work: Callable[[Session], T]) -> T:
        with self._connect() as conn:
            return work(_SqliteSession(conn))

    def write(self, work: Callable[[Session], T]) -> T:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # the write lock now, not mid-way
            try:
                result = work(_SqliteSession(conn))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return result


class _SqliteSession:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    def insert_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        before = self.conn.total_changes
        self.conn.executemany(sql, rows)
        return self.conn.total_changes - before
