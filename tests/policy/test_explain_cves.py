"""`scapgate policy explain` shows the CVE rules: each CVE with deny / waived / ignore and why,
the feed it was judged with, what was not evaluated, and a stale feed."""
from __future__ import annotations

import datetime as dt

import yaml

from webhook.policy import model
from webhook.policy.cli import explain_cves
from webhook.scan.results import CveFinding, ScanKey, ScanResult

TODAY = dt.date(2026, 12, 3)
DOC = """
apiVersion: scapgate.io/v1
kind: ImagePolicy
metadata: {name: p, owner: o, description: d}
spec:
  content: {datastream: ssg-debian12-ds.xml, profile: standard}
  cves: {denySeverity: high, fixedOnly: true, maxFeedAge: 2d, staleFeed: warn}
  waivers:
    - {package: openssl, reason: r, owner: team-a, ticket: SEC-9, expires: "2027-01-31"}
"""


def result(feed: dict) -> ScanResult:
    key = ScanKey("sha256:" + "1" * 64, "c", "standard", "", "s")
    return ScanResult(key=key, image="img", product="ubuntu2204", cves=[
        CveFinding("CVE-1", "curl", "7.81.0-1", "7.81.0-1ubuntu1.16", "critical", "t"),
        CveFinding("CVE-2", "openssl", "3.0.2-0ubuntu1.15", "3.0.2-0ubuntu1.18", "high", "t"),
        CveFinding("CVE-3", "tar", "1.34", "", "high", "t"),
        CveFinding("CVE-4", "zlib", "1.2.11", "1.2.11.1", "medium", "t")], feed=feed)


def test_each_cve_says_what_it_does_and_why():
    pol = model.from_document(yaml.safe_load(DOC), path="p.yaml")
    feed = {"feed": "ubuntu2204", "sha256": "ab" * 32, "evaluated": 40, "definitions": 900,
            "note": "severity is Ubuntu's priority", "unevaluated": {"kernel": 3}}
    lines = explain_cves(result(feed), pol, image="img", namespace="ns", today=TODAY,
                         feed_age_s=3600)
    text = "\n".join(lines)
    assert "DENY   CVE-1 critical curl 7.81.0-1 → 7.81.0-1ubuntu1.16 — severity critical >= " \
           "cves.denySeverity high" in text
    assert "WAIVED CVE-2 high openssl" in text and "waiver SEC-9 by team-a until 2027-01-31" in text
    assert "ignore CVE-3 high tar 1.34 → no fix yet — no fix released (cves.fixedOnly)" in text
    assert "ignore CVE-4 medium zlib" in text and "is below cves.denySeverity high" in text
    assert "feed ubuntu2204 sha256 abababababab, 40 of 900 definitions" in text
    assert "not evaluated: 3 kernel definition(s) (the running kernel decides" in text
    assert "stale-feed" not in text


def test_an_old_feed_is_named_with_its_action():
    pol = model.from_document(yaml.safe_load(DOC), path="p.yaml")
    lines = explain_cves(result({"feed": "ubuntu2204", "sha256": "ab" * 32}), pol, image="img",
                         namespace="ns", today=TODAY, feed_age_s=5 * 86400)
    assert any("stale-feed: the CVE feed for ubuntu2204 is 5d old, older than cves.maxFeedAge "
               "2d (action warn)" in x for x in lines)
