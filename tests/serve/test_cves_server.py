"""CVEs through the whole product: `scapgate serve` with its scan workers and their feed
keeper, a feed in Debian's format on a real HTTP server, a real registry, reviews posted as
kube-apiserver posts them over TLS.

The image (the synthetic Debian 12 one: login and passwd from the source `shadow` at
1:4.13+dfsg1-1+b1) is admitted under the first feed; the registry is then stopped and the
feed server starts serving a feed with a fixed CVE of `shadow`: the workers fetch it, re-judge
the image from its kept package database, and the next review is denied with that CVE — no
registry access, no rescan.
"""
from __future__ import annotations

import yaml

from tests.builders import feeds as F
from tests.builders.registry import start_registry
from tests.builders.webhooks import Server, make_certs, make_review, pod_spec, until, workload

SHADOW_FIX = "1:4.13+dfsg1-1+deb12u1"
OLD = F.Advisory("CVE-2026-4001", (("shadow", "1:4.13+dfsg1-1"),))
NEW = F.Advisory("CVE-2026-4002", (("shadow", SHADOW_FIX),), title="shadow: su bypass")


def policy(datastream: str) -> dict:
    return {"apiVersion": "scapgate.io/v1", "kind": "ImagePolicy",
            "metadata": {"name": "cves", "owner": "test", "description": "CVEs deny"},
            "spec": {"default": True,
                     "content": {"datastream": datastream, "profile": "standard"},
                     "rules": {"denySeverity": "none"},
                     "actions": {"pending": "deny", "error": "deny"},
                     "cves": {"denySeverity": "unknown", "maxFeedAge": "2d",
                              "staleFeed": "deny"}}}


def test_a_feed_update_denies_an_admitted_image_with_the_registry_stopped(
        tmp_path, synthetic_layout, scap_datastream):
    reg = start_registry(tmp_path / "registry")
    built = synthetic_layout["good"]
    ref = reg.push(built.layout, built.tag, "cve/good:1")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "cves.yaml").write_text(yaml.safe_dump(policy(str(scap_datastream))))
    path = "/oval-definitions-bookworm.xml.bz2"
    with F.FeedServer() as feeds:
        feeds.put(path, F.compress(F.debian_feed("bookworm", "12", [OLD]), "bz2"))
        srv = Server(tmp_path / "srv", policy_dir=tmp_path / "policies",
                     certs=make_certs(tmp_path / "certs"), workers=1,
                     env={"SCAPGATE_CVE_FEEDS": f"debian12={feeds.url(path)}",
                          "SCAPGATE_CVE_REFRESH_S": "1", "SCAPGATE_CVE_REJUDGE_POLL_S": "0.5",
                          "SCAPGATE_INSECURE_REGISTRIES": reg.host}).start()
        client = srv.client()
        try:
            review = make_review(workload("Pod", pod_spec([ref]), namespace="team-a"))

            def answer():
                return client.review(review)["response"]

            first = until("admitted under the first feed",
                          lambda: (r := answer())["allowed"] and r)
            assert first["auditAnnotations"]["verdict"] == "pass"
            reg.stop()                                 # no registry from here on
            feeds.put(path, F.compress(F.debian_feed("bookworm", "12", [OLD, NEW]), "bz2"))
            denied = until("denied once the new feed is judged",
                           lambda: (not (r := answer())["allowed"]) and r)
            msg = denied["status"]["message"]
            assert f"CVE-2026-4002 unknown shadow (login) 1:4.13+dfsg1-1+b1 → {SHADOW_FIX}" \
                in msg
            assert denied["auditAnnotations"]["verdict"] == "fail"
            assert any(r[0] == path and r[1].get("If-None-Match") for r in feeds.requests)
            assert "cves.rejudged product=debian12" in srv.log()
        finally:
            client.close()
            srv.stop()
            reg.stop()
