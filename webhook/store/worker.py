"""Scan workers: claim jobs from the shared store's queue, scan, store the result.

`scapgate worker` runs them (in a cluster: a Deployment of its own, or beside the webhook);
`scapgate serve` starts them on one machine through `start_workers(settings)`. Scans never run
in an admission process: a slow or crashing scan cannot take a request thread with it.

A claim is leased; a thread renews the lease while the scan runs, so a killed worker's job is
claimed again by another worker once the lease expires (Settings.lease_s). Transient failures
go back to the queue with exponential backoff, Settings.scan_attempts times; permanent ones
(image not found, content does not apply) are stored as errors at once.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields
from typing import Callable

from ..scan import images
from ..scan.results import ScanResult, error_result
from .base import SCANS_STARTED, STORED, Claim, Store, StoreUnavailable
from .metrics import (
    QUEUE_DEPTH,
    SCAN_DURATION,
    SCANS_FAILED_TOTAL,
    SCANS_FINISHED_TOTAL,
    SCANS_STARTED_TOTAL,
)
from .scans import Job

log = logging.getLogger("scapgate.worker")
DONE = "done"
ERROR_LIMIT = 600          # characters of an unexpected exception kept in the stored error


class Worker:
    """Claims and runs jobs on `concurrency` threads of this process."""

    def __init__(self, store: Store, pipeline, *, concurrency: int = 1, lease_s: float = 60.0,
                 max_attempts: int = 3, backoff_s: float = 5.0, poll_s: float = 0.2,
                 owner: str | None = None, clock: Callable[[], float] = time.time):
        self.store = store
        self.pipeline = pipeline
        self.concurrency = max(1, concurrency)
        self.lease_s = lease_s
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self.poll_s = poll_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.clock = clock
        self._active: dict[str, Claim] = {}
        self._lock = threading.Lock()

    def run_once(self) -> str | None:
        """Claim one due job and run it; None when there is none. Returns done/retry/stored."""
        claim = self.store.claim(self.owner, self.lease_s)
        if claim is None:
            return None
        with self._lock:
            self._active[claim.kid] = claim
        try:
            return self.process(claim)
        finally:
            with self._lock:
                self._active.pop(claim.kid, None)

    def process(self, claim: Claim) -> str:
        job = Job.from_json(claim.payload)
        if claim.attempt > self.max_attempts:
            # Every earlier attempt lost its worker mid-scan: this image kills workers.
            result = error_result(job.key, job.image,
                                  f"scan abandoned: {claim.attempt - 1} workers died scanning "
                                  "this image (killed or out of memory?)", permanent=True,
                                  now=self.clock())
            _persist(lambda: self.store.complete(claim, result.to_json(),
                                                 scanned_at=result.scanned_at), self.lease_s / 2)
            log.error("scan.abandoned kid=%s image=%s attempts=%d", claim.kid, job.image,
                      claim.attempt - 1)
            return STORED
        self.store.incr(SCANS_STARTED)
        SCANS_STARTED_TOTAL.inc()
        log.info("scan.started kid=%s image=%s attempt=%d owner=%s", claim.kid, job.image,
                 claim.attempt, self.owner)
        t0 = time.perf_counter()
        with _Renewer(self.store, claim, self.lease_s):
            result = self._scan(job)
        SCAN_DURATION.observe(time.perf_counter() - t0)
        return self._finish(claim, result)

    def _scan(self, job: Job) -> ScanResult:
        try:
            return self.pipeline.scan(images.parse(job.image), job.content, key=job.key,
                                      docker_config=job.docker_config)
        except Exception as e:  # a bug in a stage must not leave the job leased forever
            log.exception("scan.crashed image=%s", job.image)
            return error_result(job.key, job.image,
                                f"scan crashed: {type(e).__name__}: {e}"[:ERROR_LIMIT],
                                permanent=False, now=self.clock())

    def _finish(self, claim: Claim, result: ScanResult) -> str:
        body = result.to_json()
        if result.state == "done":
            _persist(lambda: self.store.complete(claim, body, scanned_at=result.scanned_at),
                     self.lease_s / 2)
            SCANS_FINISHED_TOTAL.inc()
            log.info("scan.finished kid=%s image=%s seconds=%s", claim.kid, result.image,
                     sum(result.timings.values()))
            return DONE
        SCANS_FAILED_TOTAL.labels(str(bool(result.permanent)).lower()).inc()
        outcome = _persist(lambda: self.store.fail(
            claim, body, scanned_at=result.scanned_at, permanent=result.permanent,
            max_attempts=self.max_attempts, base_backoff_s=self.backoff_s), self.lease_s / 2)
        log.warning("scan.failed kid=%s image=%s attempt=%d permanent=%s outcome=%s error=%s",
                    claim.kid, result.image, claim.attempt, result.permanent, outcome,
                    result.error[:ERROR_LIMIT])
        return outcome

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, grace_s: float = 30.0) -> None:
        """Run until stop is set; then let running scans finish for grace_s, and give back
        the jobs of those that did not (another worker takes them at once)."""
        threads = [threading.Thread(target=self._loop, args=(stop,), name=f"scan-{i}",
                                    daemon=True) for i in range(self.concurrency)]
        for t in threads:
            t.start()
        stop.wait()
        deadline = time.monotonic() + grace_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftover = list(self._active.values())
        for claim in leftover:
            try:
                self.store.release(claim)
                log.warning("scan.released kid=%s (worker stopping)", claim.kid)
            except StoreUnavailable as e:
                log.warning("scan.release_failed kid=%s: %s (its lease will expire)", claim.kid, e)

    def _loop(self, stop: threading.Event) -> None:
        pause = self.poll_s
        while not stop.is_set():
            try:
                outcome = self.run_once()
                pause = self.poll_s
            except StoreUnavailable as e:
                log.warning("store.unavailable %s", e)
                outcome, pause = None, min(5.0, pause * 2)
            except Exception:
                log.exception("worker.loop_error")
                outcome, pause = None, min(5.0, pause * 2)
            if outcome is None:
                stop.wait(pause)
            else:
                try:
                    QUEUE_DEPTH.set(self.store.depth())
                except StoreUnavailable:
                    pass


class _Renewer:
    """Renews a lease every third of its length while the scan runs."""

    def __init__(self, store: Store, claim: Claim, lease_s: float):
        self.store, self.claim, self.lease_s = store, claim, lease_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-renewer", daemon=True)

    def __enter__(self) -> "_Renewer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self.lease_s / 3):
            try:
                if not self.store.renew(self.claim, self.lease_s):
                    log.warning("lease.lost kid=%s: another worker took the job", self.claim.kid)
                    return
            except StoreUnavailable as e:
                log.warning("lease.renew_failed kid=%s: %s", self.claim.kid, e)


def _persist(fn: Callable[[], object], within_s: float):
    """Store a finished scan, retrying a store outage for a while: a result is worth keeping."""
    deadline, pause = time.monotonic() + within_s, 0.1
    while True:
        try:
            return fn()
        except StoreUnavailable:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(2.0, pause * 2)


# -- processes --------------------------------------------------------------------------------

def settings_env(settings) -> dict[str, str]:
    """Settings as the SCAPGATE_* variables Settings.from_env reads back, for child processes."""
    env = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            value = "1" if value else "0"
        elif isinstance(value, tuple):
            value = ",".join(value)
        env[f"SCAPGATE_{f.name.upper()}"] = str(value)
    return env


class WorkerPool:
    """`scapgate worker` child processes (one scan each), restarted when one dies.

    Children inherit the environment, so PROMETHEUS_MULTIPROC_DIR set before start reaches
    them; they also exit by themselves when this process disappears."""

    RESTART_MIN_S, RESTART_MAX_S = 1.0, 30.0

    def __init__(self, settings, processes: int, *, env: dict | None = None,
                 grace_s: float = 30.0):
        self.cmd = [sys.executable, "-m", "webhook", "worker", "--concurrency", "1",
                    "--exit-with-parent", str(os.getpid()), "--grace-s", str(grace_s)]
        self.env = {**os.environ, **settings_env(settings), **(env or {})}
        self.grace_s = grace_s
        self.procs: list[subprocess.Popen] = []
        self.restarts = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._n = max(1, processes)
        self._supervisor = threading.Thread(target=self._supervise, name="worker-supervisor",
                                            daemon=True)

    def start(self) -> "WorkerPool":
        with self._lock:
            self.procs = [self._spawn() for _ in range(self._n)]
        self._supervisor.start()
        return self

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(self.cmd, env=self.env, stdin=subprocess.DEVNULL)

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self.procs if p.poll() is None]

    def _supervise(self) -> None:
        pause = [self.RESTART_MIN_S] * self._n
        next_at = [0.0] * self._n
        while not self._stop.wait(0.2):
            with self._lock:
                for i, p in enumerate(self.procs):
                    if p.poll() is None or time.monotonic() < next_at[i]:
                        continue
                    _mark_dead(p.pid)
                    log.warning("worker.exited pid=%d rc=%s; restarting", p.pid, p.returncode)
                    self.procs[i] = self._spawn()
                    self.restarts += 1
                    next_at[i] = time.monotonic() + pause[i]   # crash loops slow down
                    pause[i] = min(self.RESTART_MAX_S, pause[i] * 2)

    def stop(self) -> None:
        """SIGTERM every worker, wait for running scans (grace_s), then SIGKILL the rest."""
        self._stop.set()
        if self._supervisor.is_alive():
            self._supervisor.join()
        with self._lock:
            procs = list(self.procs)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + 5
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            _mark_dead(p.pid)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_workers(settings, *, processes: int | None = None, env: dict | None = None,
                  grace_s: float = 30.0) -> WorkerPool:
    """Start scan worker processes for `scapgate serve` on one machine; call .stop() on exit.
    processes defaults to Settings.workers, else the number of cores."""
    n = processes or settings.workers or os.cpu_count() or 2
    return WorkerPool(settings, n, env=env, grace_s=grace_s).start()


def _mark_dead(pid: int) -> None:
    """Let prometheus' multiprocess collector drop a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir"):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)


# -- command line -----------------------------------------------------------------------------

def register(subparsers) -> None:
    w = subparsers.add_parser("worker", help="run scans from the shared queue (scan worker)")
    w.add_argument("--concurrency", type=int, default=None,
                   help="scans at once (default: SCAPGATE_WORKERS, else the number of cores)")
    w.add_argument("--store", default=None, help="'' = SQLite in the state dir; redis://…")
    w.add_argument("--state-dir", default=None)
    w.add_argument("--lease-s", type=float, default=None, help="claim lease (default 60)")
    w.add_argument("--grace-s", type=float, default=30.0,
                   help="on SIGTERM, let running scans finish this long, then give them back")
    w.add_argument("--exit-with-parent", type=int, default=None, metavar="PID",
                   help="stop when process PID is no longer our parent (scapgate serve)")
    w.set_defaults(fn=cmd_worker)


def cmd_worker(args) -> int:
    from ..config import Settings
    from ..scan import engine
    from .backends import open_store
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings.from_env(state_dir=args.state_dir, store=args.store, lease_s=args.lease_s)
    store = open_store(settings.store, settings.state_dir)
    worker = Worker(store, engine.build_pipeline(settings),
                    concurrency=args.concurrency or settings.workers or os.cpu_count() or 2,
                    lease_s=settings.lease_s, max_attempts=settings.scan_attempts,
                    backoff_s=settings.retry_backoff_s)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.exit_with_parent:
        threading.Thread(target=_watch_parent, args=(args.exit_with_parent, stop),
                         daemon=True).start()
    log.info("worker.started owner=%s store=%s concurrency=%d lease_s=%s", worker.owner,
             getattr(store, "safe_url", store.url), worker.concurrency, worker.lease_s)
    if worker.pipeline.settings.cves:
        from .cves import FeedKeeper
        FeedKeeper(settings, worker.pipeline, store).start(stop)
    worker.run(stop, grace_s=args.grace_s)
    store.close()
    log.info("worker.stopped owner=%s", worker.owner)
    return 0


def _watch_parent(pid: int, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        if os.getppid() != pid:
            log.warning("worker.orphaned: parent %d is gone; stopping", pid)
            stop.set()
