"""Section 9: the console's pages with 10,000 workloads and 2,000 images in the inventory.

Each page is rendered in the benchmark's own process by the Flask app `scapgate serve` runs
(create_app with a console listener configured), through Flask's test client — the server
time of a page, without TLS and the network: what the page costs the webhook process. The
inventory is a fresh SQLite store with 10,000 Deployment entries in 50 namespaces running
2,000 distinct images, each with a stored scan result (a quarter failing a rule).
"""
from __future__ import annotations

import json
import shutil
import time

from .common import Section, f, log, median, pct

WORKLOADS = 10_000
IMAGES = 2_000
ROUNDS = 10
TARGET_MS = 200.0
CONSOLE = "127.0.0.1:18444"


def run(ctx, plan) -> list[Section]:
    from webhook.config import Settings
    from webhook.scan.results import RuleResult, ScanResult
    from webhook.serve.app import create_app
    work = ctx.work / "console"
    pol_dir = work / "policies"
    pol_dir.mkdir(parents=True)
    shutil.copy(ctx.policy / "default.yaml", pol_dir / "default.yaml")
    token = work / "token"
    token.write_text("bench-console-token-" + "x" * 20)
    settings = Settings.from_env(state_dir=str(work / "state"), policy=str(pol_dir),
                                 inventory_rejudge_s=0.0, console_bind=CONSOLE,
                                 console_token_file=str(token))
    settings.cve_feeds = ("off",)
    app = create_app(settings)
    deps = app.extensions["scapgate"]
    store = deps.service.store
    policy = deps.policies().select("team-0", "127.0.0.1:5000/app/i0:1")
    content = policy.content()
    rule = "xccdf_org.ssgproject.content_rule_file_permissions_etc_shadow"
    digests = [f"sha256:{i:064x}" for i in range(1, IMAGES + 1)]
    for i, d in enumerate(digests):
        key = deps.key_for(d, content)
        fail = i % 4 == 0
        res = ScanResult(key=key, image=f"127.0.0.1:5000/app/i{i}@{d}", product="debian12",
                         profile=policy.profile or "standard",
                         rules=[RuleResult(rule, "Verify permissions on shadow", "medium",
                                           "fail" if fail else "pass")],
                         scanned_at=time.time())
        store.put(key.id(), res.to_json(), scanned_at=res.scanned_at)
    entries = []
    for n in range(WORKLOADS):
        ns, i = f"team-{n % 50}", n % IMAGES
        fail = i % 4 == 0
        reasons = [{"id": "file_permissions_etc_shadow", "kind": "rule", "severity": "medium",
                    "title": "Verify permissions on shadow"}] if fail else []
        body = {"namespace": ns, "kind": "Deployment", "name": f"app-{n}", "uid": f"u{n}",
                "owner": "", "owners": [], "verdict": "fail" if fail else "pass",
                "policies": [policy.name], "admitted_at": time.time(),
                "judged_at": time.time(), "images": [{
                    "path": "spec.template.spec.containers[0].image",
                    "image": f"127.0.0.1:5000/app/i{i}:1", "digest": digests[i],
                    "state": "fail" if fail else "pass", "policy": policy.name,
                    "reasons": reasons, "product": "debian12"}]}
        entries.append((f"{ns}/Deployment/app-{n}", ns, "", json.dumps(body)))
    store.inv_replace(entries)
    client = app.test_client()
    headers = {"Authorization": "Bearer " + token.read_text()}
    base = f"https://{CONSOLE}"
    pages = {"overview": "/", "workloads": "/workloads",
             "workloads, verdict fail, page 5": "/workloads?verdict=fail&page=5",
             "image": f"/images/{digests[0]}?policy={policy.name}",
             "policies": "/policies", "decisions": "/decisions"}
    times: dict[str, list[float]] = {}
    for name, path in pages.items():
        resp = client.get(path, base_url=base, headers=headers)
        assert resp.status_code == 200, (name, resp.status_code, resp.data[:300])
        times[name] = []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            resp = client.get(path, base_url=base, headers=headers)
            times[name].append((time.perf_counter() - t0) * 1000)
            assert resp.status_code == 200
        log(f"console {name}: median {median(times[name]):.0f} ms")
    s = Section("9. Console pages with 10,000 workloads and 2,000 images",
                intro=(f"{WORKLOADS:,} Deployment entries in 50 namespaces running {IMAGES:,} "
                       f"distinct images (each with a stored result, a quarter failing a rule), "
                       f"SQLite store; each page rendered {ROUNDS} times after one warm-up by the "
                       f"app `scapgate serve` runs, through Flask's test client on the console "
                       f"listener (server time, no TLS or network)."),
                headers=["page", "median ms", "p90 ms", "max ms"])
    worst = 0.0
    for name, ms in times.items():
        worst = max(worst, median(ms))
        s.rows.append([name, f(median(ms), 0), f(pct(ms, 90), 0), f(max(ms), 0)])
    s.target(f"9 each page's server time ≤ {TARGET_MS:g} ms (median)", worst <= TARGET_MS,
             f"slowest page median {f(worst, 0)} ms")
    s.raw = {"times": times}
    return [s]
