"""The shared store: scan results by ScanKey.id() and the scan job queue, for every process.

Two implementations behind one interface: a SQLite file in WAL mode under the state directory
(the single-machine default) and Redis (`redis://…`, when several replicas share results). Both
give the same guarantees, and one test suite runs against both:

- results survive restarts: a new process decides from here without rescanning;
- single-flight enqueue: a key already queued or running is not queued again;
- a bounded queue: past `limit` jobs, enqueue answers "full";
- a claim carries a lease that expires unless renewed, so a dead worker's job is claimed again;
- transient failures go back to the queue with exponential backoff, a bounded number of times.

The inventory (what admission let in and has not seen deleted) lives here too: one entry per
object key with its namespace, its owner's key ('' for a top-level workload) and an opaque body.
It is written one entry at a time by admission and replaced whole, all or nothing, by a
reconcile (`inv_replace`).

Values are opaque text (JSON); scans.py turns them into Jobs and ScanResults. One column (SQLite)
or sorted set (Redis) named `due` serves both queue states: for a ready job it is when it may be
claimed, for a running job when its lease expires — either way, `due <= now` means claimable.
"""
from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Iterator

QUEUED, EXISTS, FULL = "queued", "exists", "full"
RETRY, STORED = "retry", "stored"
INV_CHUNK = 1000                 # inventory entries per executemany / pipeline in inv_replace
MAX_BACKOFF_S = 300.0            # transient retries never wait longer than this
SCANS_STARTED = "scans_started"  # counter name every worker bumps when a scan starts


class StoreUnavailable(Exception):
    """The shared store cannot be reached or used; admissions take the policy's error action."""


@dataclass(frozen=True)
class Claim:
    """A job a worker holds: `token` proves the lease is still ours; attempt 1 is the first."""

    kid: str
    payload: str
    token: str
    attempt: int
    owner: str


@dataclass(frozen=True)
class JobInfo:
    """What the queue knows about a job (for status pages, tests and stats)."""

    kid: str
    state: str          # "ready" or "running"
    due: float          # ready: earliest claim time; running: lease expiry (epoch seconds)
    attempts: int
    owner: str
    enqueued_at: float = 0.0    # when it was queued (jobs(): its age)
    image: str = ""             # the digest-pinned image (jobs(), for status pages)


def backoff_s(attempt: int, base_s: float) -> float:
    """Exponential backoff after the given failed attempt (1 → base, 2 → 2·base, …), capped."""
    return min(MAX_BACKOFF_S, base_s * (2 ** max(0, attempt - 1)))


class Store(ABC):
    """Results and the scan queue. Every method raises StoreUnavailable when the store is down."""

    url: str = ""

    # -- results --------------------------------------------------------------------------
    @abstractmethod
    def get(self, kid: str) -> str | None:
        """The stored result text for a key id, or None."""

    @abstractmethod
    def get_many(self, kids: Iterable[str]) -> dict[str, str]:
        """Stored results of those key ids that have one (one round trip)."""

    @abstractmethod
    def put(self, kid: str, body: str, *, scanned_at: float, final: bool = True) -> None:
        """Store a result. final=False marks a transient error: the next enqueue replaces it."""

    # -- queue ----------------------------------------------------------------------------
    @abstractmethod
    def enqueue(self, kid: str, payload: str, *, limit: int, newer_than: float = -1.0) -> str:
        """Queue a job unless it is queued or running, or a final result scanned after
        `newer_than` exists ("exists"); "full" when `limit` jobs are pending; else "queued".
        Queuing drops a non-final (transient error) result, so waiters wait for the retry."""

    @abstractmethod
    def claim(self, owner: str, lease_s: float) -> Claim | None:
        """Take the job due first (ready, or its lease expired), leased for lease_s."""

    @abstractmethod
    def renew(self, claim: Claim, lease_s: float) -> bool:
        """Extend our lease; False when it was lost (expired and claimed by another worker)."""

    @abstractmethod
    def complete(self, claim: Claim, body: str, *, scanned_at: float, final: bool = True) -> bool:
        """Store the result and, if the lease is still ours, remove the job. The result is
        stored even when the lease was lost: it is a valid result for this key."""

    @abstractmethod
    def retry(self, claim: Claim, delay_s: float) -> bool:
        """Put the job back, claimable after delay_s (keeps its attempt count)."""

    @abstractmethod
    def release(self, claim: Claim) -> bool:
        """Give a job back at once without counting the attempt (graceful worker shutdown)."""

    @abstractmethod
    def depth(self) -> int:
        """Jobs queued or running."""

    @abstractmethod
    def job(self, kid: str) -> JobInfo | None:
        """The queue entry for a key id, if any."""

    @abstractmethod
    def jobs(self, limit: int = 20) -> list[JobInfo]:
        """The oldest `limit` jobs queued or running, oldest first, with their images."""

    # -- inventory -------------------------------------------------------------------------
    @abstractmethod
    def inv_put(self, key: str, namespace: str, owner: str, body: str) -> None:
        """Insert or replace one inventory entry (owner: the key of the workload that owns it,
        e.g. a Pod's ReplicaSet; '' for a top-level workload)."""

    @abstractmethod
    def inv_delete(self, key: str) -> bool:
        """Remove one entry; True when it existed."""

    @abstractmethod
    def inv_get(self, key: str) -> str | None:
        """One entry's body, or None."""

    @abstractmethod
    def inv_list(self, namespace: str | None = None,
                 owner: str | None = None) -> list[tuple[str, str]]:
        """(key, body) of the entries in that namespace and/or with that owner (owner='' → the
        top-level workloads), sorted by key. Reads only the entries it returns."""

    @abstractmethod
    def inv_count(self) -> int:
        """Entries in the inventory."""

    @abstractmethod
    def inv_replace(self, entries: Iterable[tuple[str, str, str, str]]) -> tuple[int, int, int]:
        """Make the inventory exactly `entries` (key, namespace, owner, body) in one transaction
        — all or nothing: a failure (a bad entry part-way through, a lost connection, a killed
        process) leaves the previous inventory whole. Entries are read once, in order, in
        chunks of INV_CHUNK. Returns (added, updated, removed) counted against what was there;
        updated = same key, different body (or namespace or owner).
        Raises TypeError for an entry that is not four str, ValueError for a repeated key."""

    # -- counters and health ----------------------------------------------------------------
    @abstractmethod
    def incr(self, name: str, n: int = 1) -> int:
        """Bump a shared counter (robust across processes and replicas); returns the new value."""

    @abstractmethod
    def counter(self, name: str) -> int:
        """A shared counter's value (0 when never bumped)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""

    def close(self) -> None:
        """Release connections (the store stays usable: they reopen on demand)."""

    def fail(self, claim: Claim, body: str, *, scanned_at: float, permanent: bool,
             max_attempts: int, base_backoff_s: float) -> str:
        """A failed attempt: permanent or out of attempts → store the error (RETRY/STORED)."""
        if permanent or claim.attempt >= max_attempts:
            self.complete(claim, body, scanned_at=scanned_at, final=permanent)
            return STORED
        self.retry(claim, backoff_s(claim.attempt, base_backoff_s))
        return RETRY


def job_image(payload: str) -> str:
    """The image a job's payload names (scans.Job JSON), for status pages."""
    import json
    try:
        return str(json.loads(payload).get("image", ""))[:512]
    except (ValueError, AttributeError):
        return ""


def new_token() -> str:
    return uuid.uuid4().hex


def check_inv_entry(key: object, namespace: object, owner: object, body: object,
                    where: str = "") -> None:
    """TypeError unless all four fields are str (both backends would otherwise coerce)."""
    for name, value in (("key", key), ("namespace", namespace), ("owner", owner), ("body", body)):
        if not isinstance(value, str):
            raise TypeError(f"inventory {where}{name} must be str, not {type(value).__name__}")


def inv_chunks(entries: Iterable[tuple[str, str, str, str]],
               size: int = INV_CHUNK) -> Iterator[list[tuple[str, str, str, str]]]:
    """Validate entries as they come and yield them in chunks: a bad entry raises part-way
    through, after earlier chunks were written, and the caller's transaction undoes them."""
    seen: set[str] = set()
    chunk: list[tuple[str, str, str, str]] = []
    for i, entry in enumerate(entries):
        try:
            key, namespace, owner, body = entry
        except (TypeError, ValueError):
            raise TypeError(f"inventory entry {i}: expected (key, namespace, owner, body), "
                            f"got {type(entry).__name__}") from None
        check_inv_entry(key, namespace, owner, body, where=f"entry {i}: ")
        if key in seen:
            raise ValueError(f"inventory entry {i}: key {key!r} appears twice")
        seen.add(key)
        chunk.append((key, namespace, owner, body))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
