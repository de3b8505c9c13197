"""The oldest scans queued or running, with their images and ages (the console's overview),
against the SQLite file and a real redis-server."""
from __future__ import annotations

import json

from tests.builders.stores import redis_server, store, store_kind  # noqa: F401
from webhook.store.base import job_image


def payload(image: str) -> str:
    return json.dumps({"key": {}, "image": image, "content": {}})


def test_jobs_lists_the_oldest_with_image_state_and_age(store):
    for i in range(5):
        store.enqueue(f"k{i}", payload(f"registry.test/app{i}@sha256:{i:064x}"), limit=100)
    claim = store.claim("worker-1", lease_s=60)
    jobs = store.jobs(3)
    assert [j.kid for j in jobs] == ["k0", "k1", "k2"]
    assert jobs[0].image == f"registry.test/app0@sha256:{0:064x}"
    assert all(j.enqueued_at > 0 for j in jobs)
    assert [j.enqueued_at for j in jobs] == sorted(j.enqueued_at for j in jobs)
    states = {j.kid: j.state for j in store.jobs(10)}
    assert states[claim.kid] == "running" and len(states) == 5
    assert list(states.values()).count("ready") == 4
    assert store.jobs(0) == []


def test_a_payload_that_is_not_a_job_gives_no_image():
    assert job_image("not json") == "" and job_image('["a"]') == ""
    assert job_image(payload("x" * 2000)) == "x" * 512


def test_the_console_overview_names_the_oldest_scans_with_their_ages(tmp_path):
    import time

    from webhook.serve.console_pages import _queue
    from webhook.store.scans import ScanService
    from webhook.store.sqlite import SQLiteStore
    service = ScanService(SQLiteStore(str(tmp_path / "s.db")))
    try:
        service.store.enqueue("k1", payload("registry.test/slow@sha256:" + "1" * 64), limit=10)
        q = _queue(service, time.time() + 30)
        assert q["depth"] == 1 and q["error"] == ""
        (job,) = q["jobs"]
        assert job["image"] == "registry.test/slow@sha256:" + "1" * 64
        assert job["state"] == "ready" and 29 <= job["age"] <= 40
    finally:
        service.close()
