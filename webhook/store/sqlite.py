"""The single-machine store: one SQLite file in WAL mode under the state directory.

The contract it keeps is the Store interface's (base.py); one test suite runs it and Redis."""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Callable, Iterable

from .base import (EXISTS, FULL, QUEUED, Claim, JobInfo, Store, StoreUnavailable,
                   check_inv_entry, inv_chunks, job_image, new_token)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    kid TEXT PRIMARY KEY, body TEXT NOT NULL, scanned_at REAL NOT NULL,
    final INTEGER NOT NULL, stored_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    kid TEXT PRIMARY KEY, payload TEXT NOT NULL, state TEXT NOT NULL, due REAL NOT NULL,
    token TEXT, owner TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(due);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS inventory (
    key TEXT PRIMARY KEY, namespace TEXT NOT NULL, owner TEXT NOT NULL DEFAULT '',
    body TEXT NOT NULL, updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS inventory_namespace ON inventory(namespace, key);
CREATE INDEX IF NOT EXISTS inventory_owner ON inventory(owner, key);
"""
# The inventory indexes end in `key` so a filtered inv_list reads its rows already in key order.

_INV_UPSERT = ("INSERT INTO main.inventory (key, namespace, owner, body, updated) {source} "
               "ON CONFLICT(key) DO UPDATE SET namespace = excluded.namespace, "
               "owner = excluded.owner, body = excluded.body, updated = excluded.updated")
_INV_CHANGED = ("inventory.body IS NOT excluded.body OR inventory.namespace IS NOT "
                "excluded.namespace OR inventory.owner IS NOT excluded.owner")


class SQLiteStore(Store):
    """One SQLite file in WAL mode: readers never block the writer, and every queue change is
    one BEGIN IMMEDIATE transaction, so processes on one machine agree without a server."""

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.time):
        self.path = path
        self.url = f"sqlite://{os.path.abspath(path)}"
        self.busy_timeout_s = busy_timeout_s
        self.clock = clock
        self._local = threading.local()
        self._init_lock = threading.Lock()
        self._ready = False
        self._conns: list[tuple[int, sqlite3.Connection]] = []

    def _conn(self) -> sqlite3.Connection:
        """One connection per thread and process (never shared across a fork)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            _set_wal(conn, self.busy_timeout_s)
            conn.execute("PRAGMA synchronous=NORMAL")   # WAL + NORMAL: durable at checkpoints
            with self._init_lock:
                if not self._ready:
                    conn.executescript(_SCHEMA)
                    self._ready = True
        except (sqlite3.Error, OSError) as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._init_lock:
            self._conns.append((os.getpid(), conn))
        return conn

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e

    def _write(self, fn: Callable[[sqlite3.Connection, float], object]):
        """Run fn(conn, now) inside BEGIN IMMEDIATE (takes the write lock up front, so two
        processes never both read 'not queued' and both insert)."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn, self.clock())
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return out
        except sqlite3.Error as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e

    # results
    def get(self, kid: str) -> str | None:
        rows = self._read("SELECT body FROM results WHERE kid = ?", (kid,))
        return rows[0][0] if rows else None

    def get_many(self, kids: Iterable[str]) -> dict[str, str]:
        kids = list(kids)
        out: dict[str, str] = {}
        for i in range(0, len(kids), 500):   # stay under SQLite's bound-parameter limit
            chunk = kids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            out.update(self._read(f"SELECT kid, body FROM results WHERE kid IN ({marks})",
                                  tuple(chunk)))
        return out

    def put(self, kid: str, body: str, *, scanned_at: float, final: bool = True) -> None:
        self._write(lambda c, now: _put_result(c, now, kid, body, scanned_at, final))

    # queue
    def enqueue(self, kid: str, payload: str, *, limit: int, newer_than: float = -1.0) -> str:
        def txn(c: sqlite3.Connection, now: float) -> str:
            if c.execute("SELECT 1 FROM jobs WHERE kid = ?", (kid,)).fetchone():
                return EXISTS
            row = c.execute("SELECT final, scanned_at FROM results WHERE kid = ?",
                            (kid,)).fetchone()
            if row and row[0] and row[1] > newer_than:
                return EXISTS
            if c.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] >= limit:
                return FULL
            if row and not row[0]:
                c.execute("DELETE FROM results WHERE kid = ?", (kid,))
            c.execute("INSERT INTO jobs (kid, payload, state, due, enqueued_at) "
                      "VALUES (?, ?, 'ready', ?, ?)", (kid, payload, now, now))
            return QUEUED
        return self._write(txn)

    def claim(self, owner: str, lease_s: float) -> Claim | None:
        # A cheap read first: idle workers poll, and must not take the write lock for nothing.
        if not self._read("SELECT 1 FROM jobs WHERE due <= ? LIMIT 1", (self.clock(),)):
            return None

        def txn(c: sqlite3.Connection, now: float) -> Claim | None:
            row = c.execute("SELECT kid, payload, attempts FROM jobs WHERE due <= ? "
                            "ORDER BY due LIMIT 1", (now,)).fetchone()
            if not row:
                return None
            token = new_token()
            c.execute("UPDATE jobs SET state = 'running', due = ?, token = ?, owner = ?, "
                      "attempts = attempts + 1 WHERE kid = ?", (now + lease_s, token, owner, row[0]))
            return Claim(kid=row[0], payload=row[1], token=token, attempt=row[2] + 1, owner=owner)
        return self._write(txn)

    def renew(self, claim: Claim, lease_s: float) -> bool:
        return self._write(lambda c, now: c.execute(
            "UPDATE jobs SET due = ? WHERE kid = ? AND token = ?",
            (now + lease_s, claim.kid, claim.token)).rowcount == 1)

    def complete(self, claim: Claim, body: str, *, scanned_at: float, final: bool = True) -> bool:
        def txn(c: sqlite3.Connection, now: float) -> bool:
            _put_result(c, now, claim.kid, body, scanned_at, final)
            return c.execute("DELETE FROM jobs WHERE kid = ? AND token = ?",
                             (claim.kid, claim.token)).rowcount == 1
        return self._write(txn)

    def retry(self, claim: Claim, delay_s: float) -> bool:
        return self._write(lambda c, now: c.execute(
            "UPDATE jobs SET state = 'ready', due = ?, token = NULL, owner = '' "
            "WHERE kid = ? AND token = ?", (now + delay_s, claim.kid, claim.token)).rowcount == 1)

    def release(self, claim: Claim) -> bool:
        return self._write(lambda c, now: c.execute(
            "UPDATE jobs SET state = 'ready', due = ?, token = NULL, owner = '', "
            "attempts = attempts - 1 WHERE kid = ? AND token = ?",
            (now, claim.kid, claim.token)).rowcount == 1)

    def depth(self) -> int:
        return self._read("SELECT COUNT(*) FROM jobs")[0][0]

    def job(self, kid: str) -> JobInfo | None:
        rows = self._read("SELECT kid, state, due, attempts, owner FROM jobs WHERE kid = ?", (kid,))
        return JobInfo(*rows[0]) if rows else None

    def jobs(self, limit: int = 20) -> list[JobInfo]:
        rows = self._read("SELECT kid, state, due, attempts, owner, enqueued_at, payload "
                          "FROM jobs ORDER BY enqueued_at LIMIT ?", (max(0, int(limit)),))
        return [JobInfo(*r[:6], image=job_image(r[6])) for r in rows]

    # inventory
    def inv_put(self, key: str, namespace: str, owner: str, body: str) -> None:
        check_inv_entry(key, namespace, owner, body)
        self._write(lambda c, now: c.execute(_INV_UPSERT.format(source="VALUES (?, ?, ?, ?, ?)"),
                                             (key, namespace, owner, body, now)))

    def inv_delete(self, key: str) -> bool:
        return self._write(lambda c, now: c.execute(
            "DELETE FROM inventory WHERE key = ?", (key,)).rowcount == 1)

    def inv_get(self, key: str) -> str | None:
        rows = self._read("SELECT body FROM inventory WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def inv_list(self, namespace: str | None = None,
                 owner: str | None = None) -> list[tuple[str, str]]:
        where, args = [], []
        if namespace is not None:
            where.append("namespace = ?")
            args.append(namespace)
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        sql = "SELECT key, body FROM inventory"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [tuple(r) for r in self._read(sql + " ORDER BY key", tuple(args))]

    def inv_count(self) -> int:
        return self._read("SELECT COUNT(*) FROM inventory")[0][0]

    def inv_replace(self, entries) -> tuple[int, int, int]:
        """One BEGIN IMMEDIATE transaction: the new contents go into a connection-private
        temporary table chunk by chunk, the differences are counted and applied with three
        statements, and nothing is visible to anyone before COMMIT."""
        def txn(c: sqlite3.Connection, now: float) -> tuple[int, int, int]:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS inventory_new (key TEXT PRIMARY KEY, "
                      "namespace TEXT NOT NULL, owner TEXT NOT NULL, body TEXT NOT NULL)")
            c.execute("DELETE FROM temp.inventory_new")
            for chunk in inv_chunks(entries):
                c.executemany("INSERT INTO temp.inventory_new VALUES (?, ?, ?, ?)", chunk)
            added = c.execute(
                "SELECT COUNT(*) FROM temp.inventory_new n LEFT JOIN main.inventory i "
                "ON i.key = n.key WHERE i.key IS NULL").fetchone()[0]
            updated = c.execute(
                "SELECT COUNT(*) FROM temp.inventory_new n JOIN main.inventory i ON i.key = n.key "
                "WHERE i.body IS NOT n.body OR i.namespace IS NOT n.namespace "
                "OR i.owner IS NOT n.owner").fetchone()[0]
            removed = c.execute(
                "DELETE FROM main.inventory WHERE key NOT IN "
                "(SELECT key FROM temp.inventory_new)").rowcount
            # Unchanged rows keep their `updated` time: it says when the entry last changed.
            c.execute(_INV_UPSERT.format(
                source="SELECT key, namespace, owner, body, ? FROM temp.inventory_new WHERE true")
                + " WHERE " + _INV_CHANGED, (now,))
            c.execute("DROP TABLE temp.inventory_new")
            return added, updated, removed
        return self._write(txn)

    # counters and health
    def incr(self, name: str, n: int = 1) -> int:
        return self._write(lambda c, now: c.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) "
            "DO UPDATE SET value = value + excluded.value RETURNING value", (name, n)).fetchone()[0])

    def counter(self, name: str) -> int:
        rows = self._read("SELECT value FROM counters WHERE name = ?", (name,))
        return rows[0][0] if rows else 0

    def ping(self) -> None:
        self._read("SELECT 1 FROM jobs LIMIT 1")

    def close(self) -> None:
        with self._init_lock:
            conns, self._conns = self._conns, []
        for pid, conn in conns:
            if pid == os.getpid():
                conn.close()
        self._local = threading.local()


def _put_result(c: sqlite3.Connection, now: float, kid: str, body: str, scanned_at: float,
                final: bool) -> None:
    c.execute("INSERT OR REPLACE INTO results (kid, body, scanned_at, final, stored_at) "
              "VALUES (?, ?, ?, ?, ?)", (kid, body, scanned_at, int(final), now))


def _set_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Switch to WAL. The switch needs the database to itself and SQLite answers "database is
    locked" at once, without its busy handler, while another process creates the schema (a
    worker and an admission process opening a new store together): retry within the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
