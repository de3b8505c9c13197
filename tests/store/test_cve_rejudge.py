"""CVEs end to end: `scapgate scan --cve-feed`, and a feed update that changes a known image's
verdict with the registry stopped (re-judged from the kept package database, no refetch).

Real parts: a docker-registry on 127.0.0.1 holding the synthetic Debian 12 image (login and
passwd built from the source package `shadow` at 1:4.13+dfsg1-1+b1), feeds in Debian's exact
format served by a real HTTP server, skopeo, umoci, oscap, the SQLite store, the CLI as a
subprocess.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from tests.builders import feeds as F
from tests.builders.registry import start_registry
from webhook import policy as policy_mod
from webhook.config import Settings
from webhook.scan import engine
from webhook.scan.images import parse
from webhook.scan.results import ScanResult, cve_key
from webhook.store.backends import open_store
from webhook.scan.feeds import FeedStore
from webhook.store.cves import FeedBoard, rejudge

SHADOW_FIX = "1:4.13+dfsg1-1+deb12u1"          # above the image's 1:4.13+dfsg1-1+b1
POLICY = """\
apiVersion: scapgate.io/v1
kind: ImagePolicy
metadata: {name: cves, owner: test, description: CVEs of Debian's feed deny}
spec:
  default: true
  content: {datastream: ssg-debian12-ds.xml, profile: standard}
  rules: {denySeverity: none}
  cves: {denySeverity: unknown, fixedOnly: true, maxFeedAge: 2d, staleFeed: deny}
"""
WAIVER = """\
  waivers:
    - {package: shadow, reason: login is not used, owner: team-a, ticket: SEC-1,
       expires: "2099-01-01"}
"""


def feed_with(*advisories) -> bytes:
    return F.compress(F.debian_feed("bookworm", "12", advisories), "bz2")


OLD = F.Advisory("CVE-2026-4001", (("shadow", "1:4.13+dfsg1-1"),))        # fixed long ago
NEW = F.Advisory("CVE-2026-4002", (("shadow", SHADOW_FIX),), title="shadow: su bypass")


@pytest.fixture()
def own_registry(tmp_path, synthetic_layout):
    reg = start_registry(tmp_path / "registry")
    built = synthetic_layout["good"]
    ref = reg.push(built.layout, built.tag, "cve/good:1")
    yield reg, ref, built.digest
    reg.stop()


def scapgate(*args, env: dict, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "webhook", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env}, check=check)


def test_scan_with_a_feed_lists_source_package_cves_and_a_waiver_allows(
        tmp_path, own_registry, scap_datastream):
    reg, ref, digest = own_registry
    (tmp_path / "p.yaml").write_text(POLICY)
    with F.FeedServer() as server:
        server.put("/oval-definitions-bookworm.xml.bz2", feed_with(OLD, NEW))
        env = {"SCAPGATE_STATE_DIR": str(tmp_path / "state"),
               "SCAPGATE_INSECURE_REGISTRIES": reg.host, "SCAPGATE_CVE_FEEDS": "off"}
        proc = scapgate("scan", ref, "--policy", str(tmp_path / "p.yaml"), "--json",
                        "--cve-feed", server.url("/oval-definitions-bookworm.xml.bz2"), env=env)
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert {(c["id"], c["package"], c["binary"], c["installed"], c["fixed"], c["severity"])
            for c in out["cves"]} == {
        ("CVE-2026-4002", "shadow", "login", "1:4.13+dfsg1-1+b1", SHADOW_FIX, "unknown"),
        ("CVE-2026-4002", "shadow", "passwd", "1:4.13+dfsg1-1+b1", SHADOW_FIX, "unknown")}
    assert out["verdict"]["state"] == "fail"
    assert [r["kind"] for r in out["verdict"]["reasons"]] == ["cve", "cve"]
    assert "only CVEs with a released fix" in out["cve_feed"]["note"]

    (tmp_path / "p.yaml").write_text(POLICY + WAIVER)
    with F.FeedServer() as server:
        server.put("/f.xml.bz2", feed_with(OLD, NEW))
        proc = scapgate("scan", ref, "--policy", str(tmp_path / "p.yaml"),
                        "--cve-feed", f"debian12={server.url('/f.xml.bz2')}", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CVE-2026-4002 unknown shadow (login) 1:4.13+dfsg1-1+b1 → " + SHADOW_FIX in proc.stdout
    assert "waived:  CVE-2026-4002 by team-a (SEC-1)" in proc.stdout


def test_a_new_feed_changes_a_known_images_verdict_with_the_registry_stopped(
        tmp_path, own_registry, scap_datastream):
    reg, ref, digest = own_registry
    (tmp_path / "p.yaml").write_text(POLICY)
    pol = policy_mod.load_set(str(tmp_path / "p.yaml")).policies[0]
    with F.FeedServer() as server:
        path = "/oval-definitions-bookworm.xml.bz2"
        server.put(path, feed_with(OLD))
        settings = Settings(state_dir=str(tmp_path / "state"), insecure_registries=(reg.host,),
                            cve_feeds=(f"debian12={server.url(path)}",))
        pipeline = engine.build_pipeline(settings)
        first = pipeline.feeds.update("debian12", server.url(path))
        assert first.outcome == "updated"
        content = pol.content()
        result = pipeline.scan(parse(f"{ref.split(':1')[0]}@{digest}"), content)
        assert result.state == "done" and result.cves == []
        assert result.feed["sha256"] == first.status.sha256
        store = open_store("", settings.state_dir)
        store.put(result.key.id(), result.to_json(), scanned_at=result.scanned_at)
        today = dt.date.today()
        st = pipeline.feeds.current("debian12", recheck_s=0)
        before = policy_mod.evaluate(result, pol, image=ref, namespace="default", today=today,
                                     feed_age_s=st.age_s())
        assert before.state == "pass"

        reg.stop()                                  # from here on, no registry at all
        server.put(path, feed_with(OLD, NEW))
        proc = scapgate("feeds", "update", "--product", "debian12",
                        env={"SCAPGATE_STATE_DIR": settings.state_dir,
                             "SCAPGATE_CVE_FEEDS": f"debian12={server.url(path)}"})
    assert proc.returncode == 0, proc.stderr
    assert "updated" in proc.stdout and "re-judged 1 image(s)" in proc.stdout
    new = pipeline.feeds.current("debian12", recheck_s=0)
    assert new.sha256 != first.status.sha256
    # what every replica's admission reads: the feed in force, published in the shared store
    # (a webhook pod with a state dir of its own, no feeds in it)
    board = FeedBoard(open_store("", settings.state_dir), FeedStore(str(tmp_path / "elsewhere")))
    assert board.current_for("debian12").sha256 == new.sha256
    body = store.get(cve_key(digest, "debian12", new.sha256, pipeline.scanner_version()).id())
    assert body is not None
    judged = ScanResult.from_json(body)
    assert [(c.id, c.binary) for c in sorted(judged.cves, key=lambda c: c.binary)] == [
        ("CVE-2026-4002", "login"), ("CVE-2026-4002", "passwd")]
    after = policy_mod.evaluate(result, pol, image=ref, namespace="default", today=today,
                                cves=judged, feed_age_s=new.age_s())
    assert after.state == "fail" and not after.allowed
    assert after.reasons[0].title.startswith("CVE-2026-4002 unknown shadow (")
    # the latest pointer holds the same evaluation; a second pass has nothing left to do
    latest = store.get(cve_key(digest, "debian12", "latest", pipeline.scanner_version()).id())
    assert ScanResult.from_json(latest).feed["sha256"] == new.sha256
    again = rejudge("debian12", pipeline, store)
    assert (again.judged, again.already) == (0, 1)


RHEL_POLICY = """\
apiVersion: scapgate.io/v1
kind: ImagePolicy
metadata: {name: rhel-cves, owner: test, description: Red Hat advisories of severity high deny}
spec:
  default: true
  content:
    products:
      rhel: {profile: cis_server_l1}
  rules: {denySeverity: none}
  cves: {denySeverity: high, fixedOnly: true, maxFeedAge: 2d, staleFeed: deny}
"""


def test_scan_of_an_rpm_image_lists_red_hat_advisories_with_severity(
        tmp_path, registry, scap_datastream):
    """The RHEL 9 test root (rpmbuild + rpm --root: unsigned packages, so oscap reads key id
    "0"): an Important advisory for its `setup` 2.13.7-10.el9 is found and denies (high), a
    Moderate one is listed and not enforced, one for a package it lacks is absent."""
    from tests.builders import distros
    img = distros.rpm_root("good")
    ref = registry.push(img.layout, img.tag, "cve/rhel9:1")
    (tmp_path / "p.yaml").write_text(RHEL_POLICY)
    feed = F.compress(F.redhat_feed("9", [
        F.Advisory("RHSA-2026:2001", (("setup", "2.13.7-11.el9"),), severity="Important",
                   title="setup security update", cves=("CVE-2026-6001",)),
        F.Advisory("RHSA-2026:2002", (("filesystem", "3.16-3.el9"),), severity="Moderate",
                   title="filesystem update"),
        F.Advisory("RHSA-2026:2003", (("openssl-libs", "1:3.0.7-27.el9"),),
                   severity="Critical", title="openssl security update")]), "xz")
    (tmp_path / "rhel-9.oval.xml.xz").write_bytes(feed)
    env = {"SCAPGATE_STATE_DIR": str(tmp_path / "state"),
           "SCAPGATE_INSECURE_REGISTRIES": registry.host, "SCAPGATE_CVE_FEEDS": "off"}
    proc = scapgate("scan", ref, "--policy", str(tmp_path / "p.yaml"), "--json",
                    "--cve-feed", f"rhel9={tmp_path / 'rhel-9.oval.xml.xz'}", env=env)
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["product"] == "rhel9"
    assert [(c["id"], c["package"], c["installed"], c["fixed"], c["severity"], c["cves"])
            for c in out["cves"]] == [
        ("RHSA-2026:2001", "setup", "2.13.7-10.el9", "2.13.7-11.el9", "high", ["CVE-2026-6001"]),
        ("RHSA-2026:2002", "filesystem", "3.16-2.el9", "3.16-3.el9", "medium", [])]
    assert [r["id"] for r in out["verdict"]["reasons"]] == ["RHSA-2026:2001"]
    # the advisory's CVE waived: allowed, and the output says by whom until when
    (tmp_path / "p.yaml").write_text(RHEL_POLICY + """\
  waivers:
    - {rule: CVE-2026-6001, reason: setup's files are replaced at build, owner: team-b,
       ticket: SEC-7, expires: "2099-12-31"}
""")
    proc = scapgate("scan", ref, "--policy", str(tmp_path / "p.yaml"),
                    "--cve-feed", f"rhel9={tmp_path / 'rhel-9.oval.xml.xz'}", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "waived:  RHSA-2026:2001 by team-b (SEC-7) until 2099-12-31" in proc.stdout
