"""The scan service over the shared store, with real scans of real images from a real registry,
against both stores (SQLite file, real Redis). A pipeline stand-in appears only where a test
must control timing, beside the test that runs the real thing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.builders.stores import (  # noqa: F401
    ScanEnv,
    WorkerProcess,
    free_port,
    redis_server,
    running_worker,
    scan_env,
    scan_settings,
    store_kind,
    wait_for,
)
from webhook.scan.results import error_result
from webhook.store import scans
from webhook.store.backends import open_store
from webhook.store.base import EXISTS, FULL, QUEUED, SCANS_STARTED, StoreUnavailable
from webhook.store.scans import ScanService, build_service
from webhook.store.worker import start_workers

WAIT_S = 120          # a real scan takes ~1 s here; a loaded CI machine gets slack


def service_for(env: ScanEnv, **kwargs) -> ScanService:
    s = env.settings
    return ScanService(open_store(s.store, s.state_dir), queue_limit=kwargs.pop("queue_limit", 64),
                       l1_size=s.l1_size, l1_ttl_s=s.l1_ttl_s, **kwargs)


def lookups(tier: str, result: str) -> float:
    return scans.CACHE_LOOKUPS.labels(tier, result)._value.get()


def test_fifty_concurrent_admissions_start_exactly_one_scan(scan_env, images):
    env, image = scan_env, images["bad"]
    service = service_for(env)
    job = env.job(image)
    barrier = threading.Barrier(50)

    def admission(_):
        barrier.wait(timeout=10)
        assert service.lookup(job.key) is None
        state = service.submit(job)
        return state, service.wait(job.key, WAIT_S)

    with running_worker(service.store, env.pipeline, concurrency=2):
        with ThreadPoolExecutor(50) as pool:
            outcomes = list(pool.map(admission, range(50)))
    states = [s for s, _ in outcomes]
    assert states.count(QUEUED) == 1 and states.count(EXISTS) == 49
    assert service.store.counter(SCANS_STARTED) == 1
    results = [r for _, r in outcomes]
    assert all(r is not None and r.state == "done" for r in results)
    assert len({r.to_json() for r in results}) == 1, "all 50 see the very same result"
    assert {r.id: r.severity for r in results[0].failed()} == image.fails
    assert service.depth() == 0
    assert service.submit(job) == EXISTS, "a finished result is not scanned again"
    service.close()


def test_restart_decides_from_the_store_without_rescanning(scan_env, images):
    """A fresh process (a restarted webhook) finds every known image in L2: no cold miss."""
    env = scan_env
    names = ["good", "bad", "two_layer"]
    service = service_for(env)
    with running_worker(service.store, env.pipeline, concurrency=2):
        for n in names:
            assert service.submit(env.job(images[n])) == QUEUED
        for n in names:
            assert service.wait(env.key(images[n]), WAIT_S).state == "done"
    started = service.store.counter(SCANS_STARTED)
    assert started == len(names)
    service.close()

    keys = {n: env.key(images[n]).id() for n in names}
    out = subprocess.run(
        [sys.executable, "-c", RESTARTED_PROCESS, json.dumps(keys)], capture_output=True,
        text=True, timeout=60, env={**os.environ, "SCAPGATE_STATE_DIR": env.settings.state_dir,
                                    "SCAPGATE_STORE": env.settings.store})
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout)
    assert seen["misses"] == [], "cold misses after a restart"
    assert seen["states"] == {"good": "done", "bad": "done", "two_layer": "done"}
    assert seen["l2_hits"] == len(names) and seen["l1_hits"] == len(names)
    assert seen["submits"] == {n: EXISTS for n in names}
    assert open_store(env.settings.store, env.settings.state_dir).counter(SCANS_STARTED) == started
    print(f"\ncold misses after restart ({env.settings.store or 'sqlite'}): {len(seen['misses'])}")


# What a restarted webhook process does: build the service from Settings, decide from L2.
RESTARTED_PROCESS = r"""
import json, sys
from webhook.config import Settings
from webhook.store import scans
keys = json.loads(sys.argv[1])
svc = scans.build_service(Settings.from_env())
class K:                       # lookup needs only .id(); the real ScanKey is in the store
    def __init__(self, kid): self.kid = kid
    def id(self): return self.kid
out = {"misses": [], "states": {}, "submits": {}}
for name, kid in keys.items():
    r = svc.lookup(K(kid))
    if r is None:
        out["misses"].append(name)
        continue
    out["states"][name] = r.state
    assert svc.lookup(K(kid)) is r                        # second lookup: L1
    out["submits"][name] = svc.submit(scans.Job(r.key, image=r.image, content=None))
out["l2_hits"] = scans.CACHE_LOOKUPS.labels("l2", "hit")._value.get()
out["l1_hits"] = scans.CACHE_LOOKUPS.labels("l1", "hit")._value.get()
print(json.dumps(out))
"""


def test_lookup_latency_l1_hit_vs_l2_hit(scan_env, images):
    env = scan_env
    service = service_for(env)
    key = env.key(images["good"])
    with running_worker(service.store, env.pipeline):
        service.submit(env.job(images["good"]))
        assert service.wait(key, WAIT_S).state == "done"

    def timed(fn, n=200) -> float:
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e6)
        return sorted(samples)[n // 2]

    def l2_hit():
        service.forget(key)
        assert service.lookup(key) is not None

    l2_us = timed(l2_hit)
    service.lookup(key)
    before = lookups("l1", "hit")
    l1_us = timed(lambda: service.lookup(key))
    assert lookups("l1", "hit") - before == 200
    assert l1_us < l2_us
    print(f"\nlookup median ({env.settings.store or 'sqlite'}): L1 hit {l1_us:.1f} µs, "
          f"L2 hit {l2_us:.1f} µs")
    service.close()


def test_queue_full(scan_env, images):
    env = scan_env
    service = service_for(env, queue_limit=2)
    assert service.submit(env.job(images["good"])) == QUEUED
    assert service.submit(env.job(images["bad"])) == QUEUED
    assert service.submit(env.job(images["two_layer"])) == FULL
    assert service.submit(env.job(images["good"])) == EXISTS
    assert service.depth() == 2
    service.close()


def test_stale_result_is_rescanned_once(scan_env, images):
    env = scan_env
    service, other = service_for(env), service_for(env)      # two admission processes
    job = env.job(images["good"])
    with running_worker(service.store, env.pipeline):
        service.submit(job)
        first = service.wait(job.key, WAIT_S)
        assert service.lookup(job.key) is first                  # in L1 now
        assert other.lookup(job.key).scanned_at == first.scanned_at
        assert service.submit(job) == EXISTS                     # not stale: no rescan
        assert service.resubmit(job, after=first.scanned_at) == QUEUED
        assert service.resubmit(job, after=first.scanned_at) == EXISTS   # single-flight
        assert service.lookup(job.key).scanned_at == first.scanned_at, "stale still decides"
        fresh = service.wait(job.key, WAIT_S, after=first.scanned_at)
        assert fresh is not None and fresh.scanned_at > first.scanned_at
        assert service.lookup(job.key) is fresh, "lookups see the rescan, not the old L1 copy"
    assert fresh.state == "done" and service.store.counter(SCANS_STARTED) == 2
    # Another process still holding the stale copy in L1 asks for a rescan: the fresher
    # result in the store wins, no third scan, and its next lookup sees the fresh result.
    assert other.resubmit(job, after=first.scanned_at) == EXISTS
    assert other.lookup(job.key).scanned_at == fresh.scanned_at
    assert service.store.counter(SCANS_STARTED) == 2
    service.close()
    other.close()


def test_unreachable_registry_is_retried_with_backoff_then_stored(scan_env, images):
    env = scan_env
    dead = f"127.0.0.1:{free_port()}"                   # nothing listens: refused
    env.settings.insecure_registries += (dead,)
    env.pipeline = ScanEnv(env.settings, env.datastream).pipeline
    job = env.job(images["good"])
    job = scans.Job(job.key, image=f"{dead}/synthetic/good@{images['good'].digest}",
                    content=env.content)
    service = service_for(env)
    with running_worker(service.store, env.pipeline, max_attempts=3, backoff_s=0.05):
        assert service.submit(job) == QUEUED
        result = service.wait(job.key, WAIT_S)
    assert result.state == "error" and not result.permanent, result.error
    assert service.store.counter(SCANS_STARTED) == 3
    assert service.lookup(job.key) is not None and lookups("l2", "hit") > 0
    assert service.submit(job) == QUEUED, "a transient error is scanned again when asked"
    assert service.lookup(job.key) is None, "…and waiters wait for that retry"
    service.close()


def test_missing_image_is_a_permanent_error_at_once(scan_env, images):
    env = scan_env
    missing = "sha256:" + "0" * 64
    job = env.job(images["good"], digest=missing)
    service = service_for(env)
    with running_worker(service.store, env.pipeline, max_attempts=3, backoff_s=0.05):
        service.submit(job)
        result = service.wait(job.key, WAIT_S)
    assert result.state == "error" and result.permanent, result.error
    assert service.store.counter(SCANS_STARTED) == 1
    assert service.submit(job) == EXISTS
    service.close()


def test_only_final_results_are_kept_in_l1(scan_env, images):
    env = scan_env
    service = service_for(env)
    key = env.key(images["good"])
    err = error_result(key, "x", "registry unreachable", permanent=False, now=time.time())
    service.store.put(key.id(), err.to_json(), scanned_at=err.scanned_at, final=False)
    before = lookups("l2", "hit")
    assert service.lookup(key).error == "registry unreachable"
    assert service.lookup(key).error == "registry unreachable"
    assert lookups("l2", "hit") - before == 2, "a transient error is read from L2 every time"
    service.close()


def test_store_unreachable_then_recovers(redis_server, tmp_path, registry, scap_datastream,
                                         images):
    env = ScanEnv(scan_settings(tmp_path, registry, store=redis_server.url), scap_datastream)
    service = build_service(env.settings, env.pipeline)
    assert service.healthy()
    redis_server.stop()
    assert service.healthy() is False
    with pytest.raises(StoreUnavailable, match="Redis store"):
        service.lookup(env.key(images["good"]))
    with pytest.raises(StoreUnavailable):
        service.submit(env.job(images["good"]))
    redis_server.start()
    assert service.healthy()
    assert service.lookup(env.key(images["good"])) is None
    with running_worker(service.store, env.pipeline):
        assert service.submit(env.job(images["good"])) == QUEUED
        assert service.wait(env.key(images["good"]), WAIT_S).state == "done"
    service.close()


def test_wait_while_the_store_goes_away_raises_store_unavailable(redis_server, tmp_path,
                                                                  registry, scap_datastream,
                                                                  images):
    env = ScanEnv(scan_settings(tmp_path, registry, store=redis_server.url), scap_datastream)
    service = build_service(env.settings, env.pipeline)
    service.submit(env.job(images["good"]))                  # no worker: stays queued
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        service.wait(env.key(images["good"]), 0.5)
    service.close()


def test_killed_worker_process_loses_its_lease_and_another_finishes(scan_env, images, tmp_path):
    env = scan_env
    env.settings.lease_s = 2.0
    service = service_for(env)
    job = env.job(images["bad"])
    first = WorkerProcess(env.settings, tmp_path / "worker1.log")
    try:
        assert service.submit(job) == QUEUED
        # killed once it has started the scan (claimed and counted), not between the two
        wait_for(lambda: (j := service.store.job(job.key.id())) and j.owner == first.owner
                 and service.store.counter(SCANS_STARTED) == 1,
                 60, f"worker 1 to claim the job and start it\n{first.log()}", interval_s=0.005)
        first.kill()                                       # SIGKILL mid-scan
        assert service.lookup(job.key) is None, "the scan finished before the kill"
        assert service.store.job(job.key.id()).state == "running"
    finally:
        first.stop()
    second = WorkerProcess(env.settings, tmp_path / "worker2.log")
    try:
        result = service.wait(job.key, WAIT_S)
        assert result is not None, second.log()
    finally:
        assert second.stop() == 0, second.log()
    assert result.state == "done" and {r.id for r in result.failed()} == set(images["bad"].fails)
    assert service.store.counter(SCANS_STARTED) == 2       # the killed attempt and the retry
    assert service.store.job(job.key.id()) is None
    assert "scan.started" in second.log()
    service.close()


def test_start_workers_runs_scans_and_restarts_a_dead_worker(tmp_path, registry, scap_datastream,
                                                             images):
    """What `scapgate serve` does on one machine: worker processes beside the webhook."""
    env = ScanEnv(scan_settings(tmp_path, registry, workers=2), scap_datastream)
    service = build_service(env.settings, env.pipeline)
    pool = start_workers(env.settings, grace_s=10)
    try:
        assert len(pool.pids()) == 2
        victim = pool.pids()[0]
        os.kill(victim, 9)
        wait_for(lambda: pool.restarts == 1 and len(pool.pids()) == 2 and victim not in
                 pool.pids(), 30, "the pool to restart a dead worker")
        for n in ("good", "bad"):
            assert service.submit(env.job(images[n])) == QUEUED
        for n in ("good", "bad"):
            assert service.wait(env.key(images[n]), WAIT_S).state == "done"
    finally:
        pids = pool.pids()
        pool.stop()
    assert pool.pids() == [] and all(not _alive(p) for p in pids)
    service.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:                 # a zombie is not alive
        return fh.read().split(")")[-1].split()[0] != "Z"


# -- timing control at our own seam: a pipeline that blocks until the test lets it go --------

class BlockingPipeline:
    """Stands in for Pipeline.scan at our seam; the real scan runs in the tests above."""

    def __init__(self, env: ScanEnv):
        self.env = env
        self.release = threading.Event()
        self.started = threading.Event()

    def scan(self, ref, content, *, key, docker_config=None):
        self.started.set()
        assert self.release.wait(60)
        from webhook.scan.results import ScanResult
        return ScanResult(key=key, image=str(ref), scanned_at=time.time())


def test_wait_is_bounded_and_returns_as_soon_as_the_result_lands(scan_env, images):
    env = scan_env
    pipeline = BlockingPipeline(env)
    service = service_for(env, poll_s=0.02)
    job = env.job(images["good"])
    with running_worker(service.store, pipeline, lease_s=1.0) as worker:
        service.submit(job)
        assert pipeline.started.wait(30)
        t0 = time.monotonic()
        assert service.wait(job.key, 0.5) is None
        assert 0.5 <= time.monotonic() - t0 < 2.5, "wait is bounded by its timeout"
        # The scan outlives its 1 s lease three times over: renewals keep it ours.
        while time.monotonic() - t0 < 3.0:
            assert service.store.claim("thief", 30) is None
            time.sleep(0.1)                               # time passing is the point here
        assert service.store.job(job.key.id()).owner == worker.owner
        got: list = []
        waiter = threading.Thread(target=lambda: got.append(service.wait(job.key, 30)))
        waiter.start()
        released = time.monotonic()
        pipeline.release.set()
        waiter.join(30)
        assert got and got[0].state == "done"
        assert time.monotonic() - released < 2.0, "the waiter wakes at once, not at its timeout"
    assert service.store.counter(SCANS_STARTED) == 1
    service.close()
