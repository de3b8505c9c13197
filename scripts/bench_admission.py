"""Latency of a cache-hit admission decision over TLS with keep-alive, as kube-apiserver sees it.

    .venv/bin/python -m scripts.bench_admission [--requests 2000] [--connections 1]

Starts a throwaway registry (a synthetic Debian 12 image pushed), `scapgate serve` (gunicorn
gthread, 2 workers, TLS) in a temporary directory, scans the image once, then sends reviews on
kept-alive connections exactly as tests/webhook_fixtures.ApiServer does, and prints p50/p90/p99
of the client-side round trip and of the server's own duration_ms (from its decision log).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.builders import imagebuild  # noqa: E402
from tests.builders.registry import start_registry  # noqa: E402
from tests.builders.webhooks import (  # noqa: E402
    Server,
    make_certs,
    make_review,
    pod_spec,
    workload,
    write_policies,
)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def run(requests: int, connections: int, kind: str) -> int:
    with tempfile.TemporaryDirectory(prefix="scapgate-bench-") as tmp:
        tmp = Path(tmp)
        reg = start_registry(tmp / "registry")
        try:
            built = imagebuild.build_synthetic_images(tmp / "oci")
            image = reg.push(built[kind].layout, kind, f"bench/{kind}:1")
            policies = write_policies(tmp / "policies", str(imagebuild.datastream_path()))
            srv = Server(tmp / "server", policy_dir=policies, certs=make_certs(tmp / "certs"),
                         env={"SCAPGATE_INSECURE_REGISTRIES": reg.host}).start()
            try:
                return measure(srv, image, requests, connections)
            finally:
                srv.stop()
        finally:
            reg.stop()


def measure(srv: Server, image: str, requests: int, connections: int) -> int:
    def review():
        return make_review(workload("Pod", pod_spec([image])))

    warm = srv.client()
    deadline = time.monotonic() + 120
    while warm.review(review(), timeout="30s")["response"]["auditAnnotations"]["verdict"] \
            == "pending":
        if time.monotonic() > deadline:
            print("the image was never scanned", file=sys.stderr)
            return 1
    warm.close()
    per_conn = requests // connections
    lat: list[float] = []
    uids: list[str] = []
    lock = threading.Lock()

    def worker():
        client = srv.client()
        for _ in range(100):                              # warm this connection's caches
            client.review(review())
        mine, ids = [], []
        for _ in range(per_conn):
            r = review()
            t0 = time.perf_counter()
            resp = client.review(r)
            mine.append((time.perf_counter() - t0) * 1000)
            assert resp["response"]["auditAnnotations"]["verdict"] in ("pass", "fail")
            ids.append(r["request"]["uid"])
        client.close()
        with lock:
            lat.extend(mine)
            uids.extend(ids)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    wanted = set(uids)
    server_ms = [d["duration_ms"] for d in srv.decisions() if d["uid"] in wanted]
    hits = sum(1 for d in srv.decisions() if d["uid"] in wanted and d["cache"] == "hit")
    print(f"{len(lat)} cache-hit reviews over TLS, keep-alive, {connections} connection(s), "
          f"gunicorn gthread ×{srv.workers}; load average {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores")
    print(f"  round trip  p50 {pct(lat, 50):6.2f} ms  p90 {pct(lat, 90):6.2f} ms  "
          f"p99 {pct(lat, 99):6.2f} ms  max {max(lat):6.2f} ms  mean {statistics.mean(lat):.2f}")
    if server_ms:
        print(f"  in server   p50 {pct(server_ms, 50):6.2f} ms  p90 {pct(server_ms, 90):6.2f} ms"
              f"  p99 {pct(server_ms, 99):6.2f} ms  (decision log duration_ms)")
    print(f"  throughput  {len(lat) / wall:.0f} reviews/s; result cache hits {hits}/{len(lat)}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--image", choices=["good", "bad"], default="good",
                   help="good: allowed; bad: denied with a full message")
    args = p.parse_args()
    return run(args.requests, args.connections, args.image)


if __name__ == "__main__":
    sys.exit(main())
