"""Which CVE evaluation decides an admission (decide._cves_for), over the real decision code
with the scan service swapped at our seam (FakeService; the stored values are the ones the
workers write, tests/store/test_cve_rejudge.py runs them for real).

- the scan's own evaluation, when it was made with the product's feed in force;
- after a feed update, the workers' evaluation with the new feed as soon as it is stored;
- until then the digest's latest evaluation (or the scan's own): never "pending";
- a feed older than maxFeedAge, or none at all, is the state stale-feed with its action.
"""
from __future__ import annotations

import pytest
import yaml

from tests.admission.test_admission import D, IMG, NOW, make_deps, message, pod
from tests.builders.webhooks import FakeService, policy_doc
from webhook import policy as policy_mod
from webhook.scan.feeds import FeedStatus
from webhook.scan.results import CveFinding, ScanResult, cve_key

OLD, NEW = "a" * 64, "b" * 64
HIGH = CveFinding("CVE-2026-5001", "openssl", "3.0.11-1~deb12u2", "3.0.13-1~deb12u1", "high",
                  "openssl: a flaw", binary="libssl3")


@pytest.fixture
def policies(tmp_path):
    ds = tmp_path / "ds.xml"
    ds.write_text("<not-really-scap/>")
    doc = policy_doc("default", default=True, priority=0, datastream=str(ds))
    doc["spec"]["cves"] = {"denySeverity": "high", "maxFeedAge": "2d", "staleFeed": "deny"}
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "default.yaml").write_text(yaml.safe_dump(doc))
    return policy_mod.load_set(str(tmp_path / "p"))


def feed(sha: str, *, age_s: float = 3600.0) -> FeedStatus:
    return FeedStatus("debian12", source="https://feeds.test/bookworm", sha256=sha,
                      index="index.sqlite", definitions=10, as_of=NOW - age_s,
                      checked_at=NOW - age_s)


def scanned(job, cves=(), sha=OLD, as_of=NOW - 7200) -> ScanResult:
    return ScanResult(key=job.key, image=IMG["good"], product="debian12",
                      scanned_at=NOW - 60, cves=list(cves),
                      feed={"product": "debian12", "sha256": sha, "as_of": as_of})


def cve_result(digest: str, sha: str, cves=(), as_of=NOW - 600) -> ScanResult:
    return ScanResult(key=cve_key(digest, "debian12", sha, "test-scanner"),
                      image=IMG["good"], product="debian12", scanned_at=NOW - 30,
                      cves=list(cves),
                      feed={"product": "debian12", "sha256": sha, "as_of": as_of})


def deps_with(policies, service, kept):
    return make_deps(policies, service, feeds=lambda product: kept.get(product))


def test_the_scans_own_evaluation_decides_while_its_feed_is_in_force(policies):
    svc = FakeService(finish=lambda job: scanned(job, [HIGH]))
    d = deps_with(policies, svc, {"debian12": feed(OLD)})
    out = run_pod(d)
    assert out.response["allowed"] is False
    assert "CVE-2026-5001 high openssl (libssl3) 3.0.11-1~deb12u2 → 3.0.13-1~deb12u1" \
        in message(out)


def test_after_a_feed_update_the_new_evaluation_decides_once_stored(policies):
    svc = FakeService(finish=lambda job: scanned(job, [HIGH]))
    kept = {"debian12": feed(OLD)}
    d = deps_with(policies, svc, kept)
    assert run_pod(d).response["allowed"] is False
    kept["debian12"] = feed(NEW)              # the feed changed: the fix is now known ...
    svc.put(cve_result(D["good"], "latest", [HIGH], as_of=NOW - 7200))
    out = run_pod(d)                          # ... but not evaluated yet: old verdict, no wait
    assert out.response["allowed"] is False and out.verdict == "fail"
    svc.put(cve_result(D["good"], NEW, []))   # the worker re-judged the digest
    out = run_pod(d)
    assert out.response["allowed"] is True and out.verdict == "pass"
    assert not svc.jobs[1:]                   # no rescan was ever asked for


def test_the_latest_evaluation_decides_until_the_current_one_lands(policies):
    svc = FakeService(finish=lambda job: scanned(job, []))
    d = deps_with(policies, svc, {"debian12": feed(NEW)})
    svc.put(cve_result(D["good"], "latest", [HIGH], as_of=NOW - 60))   # newer than the scan's
    out = run_pod(d)
    assert out.response["allowed"] is False and "CVE-2026-5001" in message(out)


def test_a_stale_feed_is_its_own_state_with_its_own_action(policies):
    svc = FakeService(finish=lambda job: scanned(job, []))
    out = run_pod(deps_with(policies, svc, {"debian12": feed(OLD, age_s=3 * 86400)}))
    assert out.response["allowed"] is False and out.verdict == "stale-feed"
    assert "(cves.staleFeed: deny): the CVE feed for debian12 is 3d old, older than " \
           "cves.maxFeedAge 2d" in message(out)
    assert out.response["auditAnnotations"]["verdict"] == "stale-feed"


def test_no_feed_for_the_product_is_stale_feed_too(policies):
    svc = FakeService(finish=lambda job: scanned(job, []))
    out = run_pod(deps_with(policies, svc, {}))
    assert out.verdict == "stale-feed" and out.response["allowed"] is False


def run_pod(deps):
    from webhook.admission.budget import Budget
    from webhook.admission.decide import decide
    return decide(pod("good")["request"], deps, Budget(8.5))
