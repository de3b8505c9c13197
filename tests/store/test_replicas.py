"""Two webhook replicas (`scapgate serve` → gunicorn, each with its own scan workers) sharing
one real Redis: one scan per image across replicas, and the store's outage and recovery."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.builders.stores import redis_server, wait_for  # noqa: F401
from tests.builders.webhooks import (  # noqa: F401
    Server,
    denial,
    make_certs,
    make_review,
    pod_spec,
    unique_image,
    webhook_policies,
    workload,
)
from webhook.store.base import SCANS_STARTED
from webhook.store.redis_store import RedisStore

ADMISSIONS = 50
DECIDE_DEADLINE_S = 120


def audit(resp: dict) -> dict:
    return resp["response"].get("auditAnnotations", {})


def metric(text: str, name: str) -> float:
    """Sum of a metric's samples in a Prometheus text exposition."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + " ", name + "{")))


@pytest.fixture
def replicas(tmp_path, redis_server, registry, webhook_policies):
    """Two servers, as two pods of the chart: own state dir, metrics dir and scan workers;
    one Redis between them."""
    certs = make_certs(tmp_path / "certs")
    servers = []
    try:
        for i in range(2):
            work = tmp_path / f"replica-{i}"
            work.mkdir()
            servers.append(Server(work, policy_dir=webhook_policies, certs=certs, env={
                "SCAPGATE_STORE": redis_server.url,
                "SCAPGATE_INSECURE_REGISTRIES": registry.host}).start())
        yield servers
    finally:
        for s in servers:
            s.stop()


def test_fifty_admissions_over_two_replicas_start_exactly_one_scan(replicas, registry, tmp_path,
                                                                   redis_server):
    image = unique_image(registry, tmp_path, bad=True)          # nobody has scanned it yet
    barrier = threading.Barrier(ADMISSIONS)

    def admit(i: int) -> tuple[dict, list[dict]]:
        client = replicas[i % 2].client()
        try:
            barrier.wait(timeout=30)
            first = client.review(make_review(workload("Pod", pod_spec([image]))))
            final, deadline = first, time.monotonic() + DECIDE_DEADLINE_S
            while audit(final).get("verdict") == "pending":       # kube-apiserver retries
                assert time.monotonic() < deadline, "still pending past the deadline"
                final = client.review(make_review(workload("Pod", pod_spec([image]))))
            return first, final
        finally:
            client.close()

    with ThreadPoolExecutor(ADMISSIONS) as pool:
        outcomes = list(pool.map(admit, range(ADMISSIONS)))

    finals = [f for _, f in outcomes]
    assert {audit(f).get("verdict") for f in finals} == {"fail"}
    assert all(f["response"]["allowed"] is False for f in finals)
    assert len({denial(f) for f in finals}) == 1, "all 50 reach the very same verdict"
    assert "file_permissions_etc_shadow" in denial(finals[0])

    store = RedisStore(redis_server.url)
    assert store.counter(SCANS_STARTED) == 1
    texts = [s.get("/metrics")[1].decode() for s in replicas]
    per_replica = [metric(t, "scapgate_scans_started_total") for t in texts]
    assert sum(per_replica) == 1, per_replica
    firsts = [audit(f).get("verdict") for f, _ in outcomes]
    print(f"\n50 admissions over 2 replicas: scans started {sum(per_replica):.0f} "
          f"(per replica {per_replica}), first answers {dict((v, firsts.count(v)) for v in set(firsts))}")
    store.close()


def test_store_outage_is_the_error_action_and_not_ready_then_recovers(replicas, registry,
                                                                      tmp_path, redis_server):
    srv = replicas[0]
    image = unique_image(registry, tmp_path, bad=False)
    redis_server.stop()
    status, body, _ = srv.get("/readyz")
    assert status == 503 and json.loads(body)["checks"]["store"] != "ok"
    client = srv.client()
    try:
        resp = client.review(make_review(workload("Pod", pod_spec([image]))))
        assert resp["response"]["allowed"] is False
        assert audit(resp)["verdict"] == "error"
        assert "scan service unavailable" in denial(resp)
        redis_server.start()                                    # same port: Redis is back
        wait_for(lambda: srv.get("/readyz")[0] == 200, 30, "/readyz to recover")
        deadline = time.monotonic() + DECIDE_DEADLINE_S
        while True:
            resp = client.review(make_review(workload("Pod", pod_spec([image]))), timeout="30s")
            if audit(resp).get("verdict") not in ("pending", "error"):
                break
            assert time.monotonic() < deadline, denial(resp)
        assert resp["response"]["allowed"] is True and audit(resp)["verdict"] == "pass"
    finally:
        client.close()
