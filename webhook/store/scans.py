"""Scan service: look up a result, submit a scan once, wait a bounded time for it.

This is the seam between admission and scanning. Admission code calls `lookup`, `submit`,
`resubmit`, `wait`, `depth` and `healthy`; scans never run here. Results live in two tiers: a
TTLCache per process (L1, only finished results) in front of the shared store (L2: SQLite file
or Redis, see store.py), and jobs go to the store's queue, where `scapgate worker` processes
(worker.py) claim them. So one image is scanned once across threads, gunicorn workers, replicas
and restarts.

Metrics are prometheus_client objects defined here. gunicorn workers and scan workers are
separate processes: run them all with the same PROMETHEUS_MULTIPROC_DIR (an empty directory,
set before any of them starts) and publish with prometheus_client.multiprocess.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cachetools import TTLCache

from ..scan.results import ContentSet, ContentSpec, ScanKey, ScanResult
from .backends import open_store
from .base import EXISTS, FULL, QUEUED, SCANS_STARTED, Store, StoreUnavailable
from .metrics import CACHE_LOOKUPS, QUEUE_DEPTH, child

__all__ = ["Job", "ScanService", "build_service", "QUEUED", "EXISTS", "FULL",
           "StoreUnavailable"]


@dataclass(frozen=True)
class Job:
    """What a scan worker needs: the key, the digest-pinned image and the content to run.

    docker_config (the pod's pull secrets, when the registry needs them) travels with the job
    in the store's queue entry and is deleted with it; it never reaches results or logs.
    """

    key: ScanKey
    image: str
    content: ContentSet           # the worker identifies the image and runs its product's entry
    submitted_at: float = field(default_factory=time.time)
    docker_config: dict | None = field(default=None, repr=False)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "Job":
        d: dict[str, Any] = json.loads(text)
        content = ContentSet(tuple((name, _spec(c)) for name, c in
                                   (d.get("content") or {}).get("entries", ())))
        return cls(key=ScanKey(**_known(ScanKey, d["key"])), image=d["image"], content=content,
                   submitted_at=d.get("submitted_at", 0.0), docker_config=d.get("docker_config"))


def _spec(c: dict) -> ContentSpec:
    c = _known(ContentSpec, c)     # tolerate fields from a newer webhook
    return ContentSpec(**{**c, "oval": tuple(c.get("oval", ())),
                          "oval_sha256": tuple(c.get("oval_sha256", ()))})


def _known(cls, d: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def is_final(result: ScanResult) -> bool:
    """Done results and permanent errors are final; a transient error will be retried."""
    return result.state == "done" or result.permanent


class ScanService:
    """Store-backed service for admission processes: L1 TTLCache → L2 store; jobs to the queue.

    Thread-safe. Every method but `healthy` raises StoreUnavailable when the store is down.
    """

    def __init__(self, store: Store, *, queue_limit: int = 256, l1_size: int = 100_000,
                 l1_ttl_s: float = 300.0, poll_s: float = 0.05):
        self.store = store
        self.queue_limit = queue_limit
        self._l1: TTLCache = TTLCache(maxsize=l1_size, ttl=l1_ttl_s)
        self._rescans: TTLCache = TTLCache(maxsize=l1_size, ttl=l1_ttl_s)  # kid → stale scanned_at
        self._lock = threading.Lock()
        self._poller = _Poller(store, poll_s)

    # -- results ------------------------------------------------------------------------
    def lookup(self, key: ScanKey) -> ScanResult | None:
        """The result for a key: this process's L1, else the shared store (then kept in L1).
        While this process waits for a rescan of a key, lookups read the store, so the fresh
        result is seen as soon as it lands."""
        return self.lookup_many([key])[0]

    def lookup_many(self, keys: list[ScanKey]) -> list[ScanResult | None]:
        """lookup() for every image of a review: one lock and one metric update for the L1
        hits, the store asked only for the others."""
        kids = [k.id() for k in keys]
        with self._lock:
            hits = [self._l1.get(kid) for kid in kids]
            if self._rescans:
                hits = [None if self._rescans.get(kid) is not None else h
                        for kid, h in zip(kids, hits)]
        l1_hits = sum(h is not None for h in hits)
        if l1_hits:
            child(CACHE_LOOKUPS, "l1", "hit").inc(l1_hits)
        if l1_hits == len(kids):
            return hits
        out = []
        for kid, hit in zip(kids, hits):
            if hit is None:
                child(CACHE_LOOKUPS, "l1", "miss").inc()
                body = self.store.get(kid)
                child(CACHE_LOOKUPS, "l2", "miss" if body is None else "hit").inc()
                hit = None if body is None else self._remember(kid, ScanResult.from_json(body))
            out.append(hit)
        return out

    def _remember(self, kid: str, result: ScanResult) -> ScanResult:
        with self._lock:
            after = self._rescans.get(kid)
            if after is not None and result.scanned_at > after:
                del self._rescans[kid]                  # the rescan landed
                after = None
            result = result.slim()                     # verdict inputs only: bounded memory
            if after is None and is_final(result):     # transient errors must not stick
                self._l1[kid] = result
        return result

    def forget(self, key: ScanKey) -> None:
        """Drop this process's L1 copy, so the next lookup reads the store."""
        with self._lock:
            self._l1.pop(key.id(), None)

    # -- queue --------------------------------------------------------------------------
    def submit(self, job: Job) -> str:
        """Queue a scan unless it is queued or running, or a final result exists."""
        return self._enqueue(job, newer_than=-1.0)

    def resubmit(self, job: Job, *, after: float) -> str:
        """Rescan a stale result: queue unless it is queued or running, or a final result
        scanned after `after` (the stale result's scanned_at) exists. Until a result newer
        than `after` is seen, this process's lookups bypass L1."""
        state = self._enqueue(job, newer_than=after)
        if state != FULL:
            kid = job.key.id()
            with self._lock:
                self._l1.pop(kid, None)
                self._rescans[kid] = max(after, self._rescans.get(kid, after))
        return state

    def _enqueue(self, job: Job, *, newer_than: float) -> str:
        return self.store.enqueue(job.key.id(), job.to_json(), limit=self.queue_limit,
                                  newer_than=newer_than)

    def wait(self, key: ScanKey, timeout_s: float, *, after: float = -1.0) -> ScanResult | None:
        """The first result scanned after `after` (default: any result) as soon as it is
        stored, or None once timeout_s has passed (bounded)."""
        kid = key.id()
        with self._lock:
            hit = self._l1.get(kid)
        if hit is not None and hit.scanned_at > after:
            return hit
        body = self.store.get(kid)
        result = ScanResult.from_json(body) if body is not None else None
        if (result is None or result.scanned_at <= after) and timeout_s > 0:
            result = self._poller.wait(kid, timeout_s, after)
        if result is None or result.scanned_at <= after:
            return None
        return self._remember(kid, result)

    def depth(self) -> int:
        n = self.store.depth()
        QUEUE_DEPTH.set(n)
        return n

    def oldest_jobs(self, limit: int = 20) -> list:
        """The oldest scans queued or running (store.JobInfo, with image and enqueued_at)."""
        return self.store.jobs(limit)

    def healthy(self) -> bool:
        """True when the shared store answers (readiness: without it nothing can be decided)."""
        try:
            self.store.ping()
            return True
        except StoreUnavailable:
            return False

    def stats(self) -> dict:
        """For status pages and tests: store, depth, L1 size, scans started (shared counter)."""
        return {"store": getattr(self.store, "safe_url", self.store.url),
                "depth": self.store.depth(), "l1_entries": len(self._l1),
                "scans_started": self.store.counter(SCANS_STARTED)}

    def close(self) -> None:
        self._poller.stop()
        self.store.close()


class _Poller:
    """One thread per process polls the store for every key being waited on, so 50 waiting
    requests cost one query per interval, not 50."""

    def __init__(self, store: Store, interval_s: float):
        self.store = store
        self.interval_s = interval_s
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._waiting: dict[str, int] = {}
        self._found: dict[str, tuple[str, ScanResult]] = {}    # kid → (body, parsed once)
        self._error: StoreUnavailable | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._pid = os.getpid()

    def wait(self, kid: str, timeout_s: float, after: float) -> ScanResult | None:
        if self._pid != os.getpid():          # forked (gunicorn --preload): no thread here yet
            self._reset()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._waiting[kid] = self._waiting.get(kid, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="scan-wait-poller",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()
            try:
                while not self._stopped:
                    found = self._found.get(kid)
                    if found and found[1].scanned_at > after:
                        return found[1]
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                error = self._error
            finally:
                self._waiting[kid] -= 1
                if not self._waiting[kid]:
                    del self._waiting[kid]
                    self._found.pop(kid, None)
        if error is not None:
            raise StoreUnavailable(f"while waiting for a scan: {error}") from error
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                kids = list(self._waiting)
                known = {k: self._found[k][0] for k in kids if k in self._found}
            try:
                got, error = self.store.get_many(kids), None
                new = {k: (body, ScanResult.from_json(body)) for k, body in got.items()
                       if known.get(k) != body}
            except StoreUnavailable as e:
                new, error = {}, e
            except Exception as e:  # a bad stored value must not kill every future wait
                new, error = {}, StoreUnavailable(f"unreadable result in the store: {e}")
            with self._cond:
                self._error = error
                self._found.update({k: v for k, v in new.items() if k in self._waiting})
                if new or error:
                    self._cond.notify_all()
            time.sleep(self.interval_s)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


def build_service(settings, pipeline=None, *, store: Store | None = None) -> ScanService:
    """The service `scapgate serve` uses: the store Settings.store names ("" = SQLite under
    state_dir). Scans run in `scapgate worker` processes (worker.start_workers), not here; the
    pipeline argument is accepted for the interface and not used."""
    return ScanService(store or open_store(settings.store, settings.state_dir),
                       queue_limit=settings.queue_limit, l1_size=settings.l1_size,
                       l1_ttl_s=settings.l1_ttl_s)

