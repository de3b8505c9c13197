"""Scan service: look up a result, submit a scan once, wait a bounded time for it.

This is the seam between admission and scanning. Admission code calls only `lookup`, `submit`,
`wait`, `depth` and `healthy`; where scans actually run (threads here, worker processes and a
shared store in the replicated setup) is hidden behind it.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from cachetools import TTLCache

from .images import parse
from .pipeline import Pipeline
from .results import ContentSpec, ScanKey, ScanResult


@dataclass(frozen=True)
class Job:
    """What a scan worker needs: the key, the digest-pinned image and the content to run."""

    key: ScanKey
    image: str
    content: ContentSpec
    submitted_at: float = field(default_factory=time.time)


QUEUED, EXISTS, FULL = "queued", "exists", "full"


class ScanService:
    """In-process service: results in a bounded TTL cache, scans on a bounded thread pool.

    Single-flight per key within this process. Replaced by the store-backed service when
    several processes or replicas share results.
    """

    def __init__(self, pipeline: Pipeline, *, workers: int = 2, queue_limit: int = 256,
                 cache_size: int = 100_000, cache_ttl_s: float = 3600.0,
                 clock: Callable[[], float] = time.time):
        self.pipeline = pipeline
        self.clock = clock
        self.queue_limit = queue_limit
        self._results: TTLCache = TTLCache(maxsize=cache_size, ttl=cache_ttl_s)
        self._inflight: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan")

    def lookup(self, key: ScanKey) -> ScanResult | None:
        with self._lock:
            return self._results.get(key.id())

    def submit(self, job: Job) -> str:
        kid = job.key.id()
        with self._lock:
            if kid in self._inflight:
                return EXISTS
            if len(self._inflight) >= self.queue_limit:
                return FULL
            self._inflight[kid] = threading.Event()
        self._pool.submit(self._run, job)
        return QUEUED

    def _run(self, job: Job) -> None:
        kid = job.key.id()
        try:
            result = self.pipeline.scan(parse(job.image), job.content, key=job.key)
        except Exception as e:  # a bug in a stage must not leave waiters hanging
            from .results import error_result
            result = error_result(job.key, job.image, f"scan crashed: {e}", permanent=False,
                                  now=self.clock())
        with self._lock:
            self._results[kid] = result
            event = self._inflight.pop(kid)
        event.set()

    def wait(self, key: ScanKey, timeout_s: float) -> ScanResult | None:
        kid = key.id()
        with self._lock:
            hit = self._results.get(kid)
            event = self._inflight.get(kid)
        if hit is not None or event is None:
            return hit
        event.wait(max(0.0, timeout_s))
        return self.lookup(key)

    def depth(self) -> int:
        with self._lock:
            return len(self._inflight)

    def healthy(self) -> bool:
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def build_service(settings, pipeline: Pipeline) -> ScanService:
    """The service `scapgate serve` uses for these settings."""
    import os
    return ScanService(pipeline, workers=settings.workers or os.cpu_count() or 2,
                       queue_limit=settings.queue_limit, cache_size=settings.l1_size)
