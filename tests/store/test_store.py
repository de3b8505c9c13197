"""The store contract, one suite run against the SQLite file and a real redis-server."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.builders.stores import redis_server, store, store_kind, wait_for  # noqa: F401
from webhook.store.backends import open_store
from webhook.store.base import EXISTS, FULL, QUEUED, RETRY, STORED, StoreUnavailable, backoff_s
from webhook.store.redis_store import RedisStore
from webhook.store.sqlite import SQLiteStore

LIMIT = 100


def test_results_round_trip(store):
    assert store.get("k1") is None
    store.put("k1", '{"a": 1}', scanned_at=10.0)
    store.put("k2", '{"b": 2}', scanned_at=11.0)
    assert store.get("k1") == '{"a": 1}'
    assert store.get_many(["k1", "k2", "nope"]) == {"k1": '{"a": 1}', "k2": '{"b": 2}'}
    assert store.get_many([]) == {}
    store.put("k1", '{"a": 3}', scanned_at=12.0)
    assert store.get("k1") == '{"a": 3}'


def test_enqueue_is_single_flight_under_50_concurrent_submits(store):
    barrier = threading.Barrier(50)

    def submit(_):
        barrier.wait(timeout=10)
        return store.enqueue("same", "payload", limit=LIMIT)

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(submit, range(50)))
    assert answers.count(QUEUED) == 1 and answers.count(EXISTS) == 49
    assert store.depth() == 1


def test_running_job_is_not_queued_again(store):
    assert store.enqueue("k", "p", limit=LIMIT) == QUEUED
    claim = store.claim("w1", lease_s=30)
    assert claim and claim.kid == "k" and claim.attempt == 1
    assert store.enqueue("k", "p", limit=LIMIT) == EXISTS
    assert store.job("k").state == "running" and store.job("k").owner == "w1"


def test_final_result_counts_as_exists_unless_not_newer_than_asked(store):
    store.put("k", "done", scanned_at=1000.0, final=True)
    assert store.enqueue("k", "p", limit=LIMIT) == EXISTS
    assert store.enqueue("k", "p", limit=LIMIT, newer_than=999.5) == EXISTS
    assert store.enqueue("k", "p", limit=LIMIT, newer_than=1000.0) == QUEUED   # stale: rescan
    assert store.get("k") == "done", "a stale result keeps deciding while the rescan runs"
    assert store.enqueue("k", "p", limit=LIMIT, newer_than=1000.0) == EXISTS  # single-flight


def test_transient_error_result_is_replaced_by_the_next_enqueue(store):
    store.put("k", "registry down", scanned_at=time.time(), final=False)
    assert store.enqueue("k", "p", limit=LIMIT) == QUEUED
    assert store.get("k") is None, "waiters wait for the retry instead of the old error"


def test_queue_is_bounded(store):
    for i in range(3):
        assert store.enqueue(f"k{i}", "p", limit=3) == QUEUED
    assert store.enqueue("k3", "p", limit=3) == FULL
    assert store.enqueue("k0", "p", limit=3) == EXISTS
    assert store.depth() == 3
    claim = store.claim("w", lease_s=30)                 # running jobs still count
    assert store.enqueue("k3", "p", limit=3) == FULL
    store.complete(claim, "r", scanned_at=1.0)
    assert store.enqueue("k3", "p", limit=3) == QUEUED


def test_claim_takes_each_job_once_across_threads(store):
    kids = {f"k{i}" for i in range(20)}
    for kid in sorted(kids):
        store.enqueue(kid, f"payload-{kid}", limit=LIMIT)
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(n):
        while (c := store.claim(f"w{n}", lease_s=30)) is not None:
            assert c.payload == f"payload-{c.kid}"
            with lock:
                claimed.append(c.kid)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(drain, range(8)))
    assert sorted(claimed) == sorted(kids)


def test_complete_stores_result_and_removes_job(store):
    store.enqueue("k", "p", limit=LIMIT)
    claim = store.claim("w", lease_s=30)
    assert store.complete(claim, "result", scanned_at=5.0) is True
    assert store.get("k") == "result"
    assert store.job("k") is None and store.depth() == 0
    assert store.claim("w", lease_s=30) is None


def test_lease_expires_and_another_worker_takes_the_job(store):
    store.enqueue("k", "p", limit=LIMIT)
    first = store.claim("dead", lease_s=1.0)
    assert store.claim("other", lease_s=30) is None, "a live lease is exclusive"
    second = wait_for(lambda: store.claim("other", lease_s=30), 5, "the lease to expire")
    assert second.kid == "k" and second.attempt == 2 and second.owner == "other"
    assert store.renew(first, 30) is False, "the dead worker lost its lease"
    # The late worker's result is still a valid result, but the job stays with its new owner.
    assert store.complete(first, "late", scanned_at=1.0) is False
    assert store.get("k") == "late" and store.job("k").owner == "other"
    assert store.complete(second, "result", scanned_at=2.0) is True
    assert store.job("k") is None


def test_renew_keeps_the_lease(store):
    store.enqueue("k", "p", limit=LIMIT)
    claim = store.claim("w", lease_s=1.0)
    end = time.monotonic() + 3.0                     # three lease lengths
    while time.monotonic() < end:
        assert store.renew(claim, 1.0) is True
        assert store.claim("thief", lease_s=30) is None
        time.sleep(0.05)                             # renewing every 50 ms is the point here
    assert store.job("k").owner == "w"


def test_transient_failure_retries_with_backoff_then_stores_error(store):
    store.enqueue("k", "p", limit=LIMIT)
    claim = store.claim("w", lease_s=30)
    assert store.fail(claim, "err1", scanned_at=1.0, permanent=False, max_attempts=3,
                      base_backoff_s=1.0) == RETRY
    assert store.get("k") is None and store.job("k").state == "ready"
    assert store.claim("w", lease_s=30) is None, "backing off"
    claim = wait_for(lambda: store.claim("w", lease_s=30), 5, "the backoff to pass")
    assert claim.attempt == 2
    assert store.job("k").due - time.time() > 20, "running: due is the lease expiry"
    assert store.fail(claim, "err2", scanned_at=2.0, permanent=False, max_attempts=3,
                      base_backoff_s=0.01) == RETRY
    claim = wait_for(lambda: store.claim("w", lease_s=30), 5, "the second backoff")
    assert claim.attempt == 3
    assert store.fail(claim, "err3", scanned_at=3.0, permanent=False, max_attempts=3,
                      base_backoff_s=0.01) == STORED
    assert store.get("k") == "err3" and store.job("k") is None
    assert store.enqueue("k", "p", limit=LIMIT) == QUEUED, "a transient error may be retried"


def test_permanent_failure_is_stored_at_once(store):
    store.enqueue("k", "p", limit=LIMIT)
    claim = store.claim("w", lease_s=30)
    assert store.fail(claim, "not found", scanned_at=1.0, permanent=True, max_attempts=3,
                      base_backoff_s=1) == STORED
    assert store.get("k") == "not found" and store.job("k") is None
    assert store.enqueue("k", "p", limit=LIMIT) == EXISTS


def test_release_gives_the_job_back_without_counting_the_attempt(store):
    store.enqueue("k", "p", limit=LIMIT)
    claim = store.claim("w", lease_s=30)
    assert store.release(claim) is True
    again = store.claim("w2", lease_s=30)
    assert again.kid == "k" and again.attempt == 1


def test_counters_are_shared(store, store_kind, request, tmp_path):
    assert store.counter("scans_started") == 0
    assert store.incr("scans_started") == 1
    other = (SQLiteStore(str(tmp_path / "state" / "scapgate.db")) if store_kind == "sqlite"
             else RedisStore(request.getfixturevalue("redis_server").url))
    try:
        assert other.incr("scans_started", 2) == 3
        assert store.counter("scans_started") == 3
    finally:
        other.close()


def test_ping(store):
    store.ping()


def test_backoff_doubles_and_is_capped():
    assert [backoff_s(a, 2.0) for a in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff_s(30, 2.0) == 300.0


def test_open_store_picks_the_implementation(tmp_path):
    assert isinstance(open_store("", str(tmp_path)), SQLiteStore)
    s = open_store(f"sqlite://{tmp_path}/x.db", "/nonexistent")
    assert isinstance(s, SQLiteStore) and s.path == f"{tmp_path}/x.db"
    assert open_store(f"sqlite:///{tmp_path}/y.db", "").path == f"{tmp_path}/y.db"  # SQLAlchemy's
    assert isinstance(open_store("redis://127.0.0.1:1/0", str(tmp_path)), RedisStore)
    with pytest.raises(ValueError, match="unsupported store"):
        open_store("postgres://x", str(tmp_path))


def test_sqlite_uses_wal(tmp_path):
    s = SQLiteStore(str(tmp_path / "db" / "scapgate.db"))
    s.ping()
    assert s._read("PRAGMA journal_mode")[0][0] == "wal"
    s.close()


def test_redis_down_raises_store_unavailable_and_recovers(redis_server):
    s = RedisStore(redis_server.url)
    s.put("k", "v", scanned_at=1.0)
    redis_server.stop()
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"Redis store redis://127\.0\.0\.1"):
        s.get("k")
    with pytest.raises(StoreUnavailable):
        s.ping()
    assert time.monotonic() - t0 < 3, "an outage must fail fast, not hang admissions"
    redis_server.start()
    s.ping()
    assert s.get("k") is None                        # no persistence in tests: a fresh Redis
    assert s.enqueue("k", "p", limit=LIMIT) == QUEUED
    s.close()


def test_sqlite_unusable_raises_store_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    s = SQLiteStore(str(blocker / "scapgate.db"))
    with pytest.raises(StoreUnavailable, match="SQLite store"):
        s.get("k")
