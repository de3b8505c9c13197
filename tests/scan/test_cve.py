"""CVE evaluation (webhook/scan/cve.py) with real oscap, against roots of each vendor and feeds
in each vendor's exact format (tests/builders/feeds.py), compared with plain `oscap oval eval`.

Every trap of DESIGN.md "CVE feeds" has a test here that fails if it reopens:
- Debian's feed names SOURCE packages: a glibc CVE must be found through libc6;
- the uname test is not applicable offline (OSCAP_PROBE_ROOT set): the AND is decided by the
  release and package tests;
- Debian's unfixed CVEs ("less than 0:0") are never reported;
- Red Hat's signature check: a package signed header-only (key id unreadable: "0") still has
  its CVEs found; one signed by another vendor's readable key does not;
- kernel definitions decided by the running kernel are counted as unevaluated, never dropped.
And the slice an image is evaluated with gives the same true definitions as the whole feed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.builders import feeds as F
from tests.builders import rpmsign
from tests.builders.imagebuild import dpkg_stanza
from webhook.scan import cve

pytestmark = pytest.mark.skipif(shutil.which("oscap") is None, reason="needs oscap")

OS_RELEASE_BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
LSB_JAMMY = ("DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=22.04\nDISTRIB_CODENAME=jammy\n"
             'DISTRIB_DESCRIPTION="Ubuntu 22.04.5 LTS"\n')


def dpkg_root(path: Path, stanzas: str, *, debian: str | None = "12.8",
              lsb: str | None = None) -> Path:
    """A root with just what CVE matching reads: release files, dpkg status, dpkg tables."""
    (path / "etc").mkdir(parents=True)
    (path / "var/lib/dpkg").mkdir(parents=True)
    (path / "usr/share/dpkg").mkdir(parents=True)
    for name in ("cputable", "ostable", "tupletable"):
        shutil.copy(f"/usr/share/dpkg/{name}", path / "usr/share/dpkg" / name)
    if debian:
        (path / "etc/debian_version").write_text(debian + "\n")
        (path / "etc/os-release").write_text(OS_RELEASE_BOOKWORM)
    if lsb:
        (path / "etc/lsb-release").write_text(lsb)
        (path / "etc/os-release").write_text('ID=ubuntu\nVERSION_ID="22.04"\n')
    (path / "var/lib/dpkg/status").write_text(stanzas)
    return path


DEBIAN_PACKAGES = (dpkg_stanza("libc6", "2.36-9+deb12u4", source="glibc")
                   + dpkg_stanza("libc-bin", "2.36-9+deb12u4", source="glibc")
                   + dpkg_stanza("libssl3", "3.0.11-1~deb12u2", source="openssl")
                   + dpkg_stanza("liblzma5", "5.4.1-0.2", source="xz-utils")
                   + dpkg_stanza("bash", "5.2.15-2+b2"))
DEBIAN_ADVISORIES = [
    F.Advisory("CVE-2026-1001", (("glibc", "2.36-9+deb12u9"),), title="glibc overflow"),
    F.Advisory("CVE-2026-1002", (("bash", "5.2.15-2+deb12u1"),)),
    F.Advisory("CVE-2026-1003", (("openssl", "3.0.10-1"),)),          # fixed below installed
    F.Advisory("CVE-2026-1004", (("glibc", None),)),                  # unfixed: "0:0"
    F.Advisory("CVE-2026-1005", (("curl", "8.0.0-1"),)),              # not installed
    F.Advisory("CVE-2026-1006", (("xz-utils", "5.6.1+really5.4.5-1"),)),
]


def evaluate(tmp: Path, feed: bytes, root: Path, *, kind: str, package_db: str = "dpkg",
             whole: bool = False) -> cve.Evaluation:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "feed.xml").write_bytes(feed)
    cve.build_index(str(tmp / "feed.xml"), str(tmp / "index.sqlite"))
    index = cve.FeedIndex(str(tmp / "index.sqlite"))
    work = tmp / ("whole" if whole else "slice")
    work.mkdir()
    scratch = work / "root"
    shutil.copytree(root, scratch, symlinks=True)
    try:
        return cve.evaluate(str(scratch), str(work), index, kind=kind, package_db=package_db,
                            whole=whole)
    finally:
        index.close()


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory) -> Path:
    return dpkg_root(tmp_path_factory.mktemp("deb") / "root", DEBIAN_PACKAGES)


@pytest.fixture(scope="module")
def debian_feed() -> bytes:
    return F.debian_feed("bookworm", "12", DEBIAN_ADVISORIES)


def by_id(ev: cve.Evaluation) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in ev.findings:
        out.setdefault(f.id, []).append(f)
    return out


def test_debian_cves_of_source_packages_are_found_through_their_binaries(
        tmp_path, debian_root, debian_feed):
    ev = evaluate(tmp_path, debian_feed, debian_root, kind="debian")
    found = by_id(ev)
    assert set(found) == {"CVE-2026-1001", "CVE-2026-1002", "CVE-2026-1006"}
    glibc = sorted(found["CVE-2026-1001"], key=lambda f: f.binary)
    assert [(f.package, f.binary, f.installed, f.fixed) for f in glibc] == [
        ("glibc", "libc-bin", "2.36-9+deb12u4", "2.36-9+deb12u9"),
        ("glibc", "libc6", "2.36-9+deb12u4", "2.36-9+deb12u9")]
    bash = found["CVE-2026-1002"][0]
    assert (bash.package, bash.binary, bash.severity) == ("bash", "", "unknown")
    assert found["CVE-2026-1006"][0].line() == (
        "CVE-2026-1006 unknown xz-utils (liblzma5) 5.4.1-0.2 → 5.6.1+really5.4.5-1")


def test_plain_oscap_misses_the_source_named_cves_scapgate_finds(tmp_path, debian_root,
                                                                 debian_feed):
    """The trap itself, measured: the same feed and root, evaluated as published."""
    (tmp_path / "feed.xml").write_bytes(debian_feed)
    root = tmp_path / "root"
    shutil.copytree(debian_root, root)
    plain = F.plain_oval_eval(tmp_path / "feed.xml", root, tmp_path / "plain")
    ids = F.definition_ids(debian_feed)
    true = {d for d, r in plain.definitions.items() if r == "true"}
    assert ids["CVE-2026-1002"][0] in true                      # bash names its own source
    assert not set(ids["CVE-2026-1001"]) & true                 # glibc: missed
    assert not set(ids["CVE-2026-1006"]) & true                 # xz-utils: missed


def test_uname_is_not_applicable_offline_and_does_not_decide(tmp_path, debian_root,
                                                            debian_feed):
    (tmp_path / "feed.xml").write_bytes(debian_feed)
    root = tmp_path / "root"
    shutil.copytree(debian_root, root)
    plain = F.plain_oval_eval(tmp_path / "feed.xml", root, tmp_path / "plain")
    uname = F.test_ids(debian_feed, "(?i)architecture")
    assert uname and {plain.tests[t] for t in uname} == {"not applicable"}
    assert "offline mode is not supported by uname probe" in plain.stderr


def test_release_test_decides_a_debian_11_root_has_none_of_the_12_cves(tmp_path, debian_feed):
    root = dpkg_root(tmp_path / "root", DEBIAN_PACKAGES, debian="11.9")
    assert evaluate(tmp_path / "e", debian_feed, root, kind="debian").findings == []


@pytest.mark.parametrize("kind", ["debian", "ubuntu", "redhat"])
def test_the_slice_finds_exactly_what_the_whole_feed_finds(tmp_path, kind, debian_root,
                                                           debian_feed, ubuntu_case, rh_case):
    feed, root, package_db = {"debian": (debian_feed, debian_root, "dpkg"),
                              "ubuntu": ubuntu_case, "redhat": rh_case}[kind]
    part = evaluate(tmp_path / "a", feed, root, kind=kind, package_db=package_db)
    whole = evaluate(tmp_path / "b", feed, root, kind=kind, package_db=package_db, whole=True)
    assert part.true == whole.true and part.true
    assert sorted(map(repr, part.findings)) == sorted(map(repr, whole.findings))
    assert part.unevaluated == whole.unevaluated
    assert part.definitions < whole.definitions


# -- Ubuntu ---------------------------------------------------------------------------------

UBUNTU_PACKAGES = (dpkg_stanza("libssl3", "3.0.2-0ubuntu1.15", source="openssl")
                   + dpkg_stanza("openssl", "3.0.2-0ubuntu1.15")
                   + dpkg_stanza("tar", "1.34+dfsg-1ubuntu0.1.22.04.1")
                   + dpkg_stanza("linux-libc-dev", "5.15.0-100.110"))
UBUNTU_ADVISORIES = [
    F.Advisory("CVE-2026-2001", (("libssl3", "3.0.2-0ubuntu1.18"), ("openssl", "3.0.2-0ubuntu1.18")),
               severity="high", title="openssl flaw"),
    F.Advisory("CVE-2026-2002", (("tar", None),), severity="low"),            # unfixed, present
    F.Advisory("CVE-2026-2003", (("curl", None),), severity="critical"),      # not installed
    F.Advisory("CVE-2026-2004", (("libssl3", "3.0.2-0ubuntu1.10"),), severity="medium"),
    F.Advisory("CVE-2026-2005", (("linux-image-5.15.0-100-generic", "5.15.0-105.115"),),
               severity="high", kernel=True),
]


@pytest.fixture(scope="module")
def ubuntu_case(tmp_path_factory):
    root = dpkg_root(tmp_path_factory.mktemp("ubu") / "root", UBUNTU_PACKAGES, debian=None,
                     lsb=LSB_JAMMY)
    return F.ubuntu_feed("jammy", "22.04", UBUNTU_ADVISORIES), root, "dpkg"


def test_ubuntu_priority_unfixed_and_kernel_definitions(tmp_path, ubuntu_case):
    feed, root, db = ubuntu_case
    ev = evaluate(tmp_path, feed, root, kind="ubuntu", package_db=db)
    found = by_id(ev)
    assert set(found) == {"CVE-2026-2001", "CVE-2026-2002"}
    assert {(f.package, f.severity, f.fixed) for f in found["CVE-2026-2001"]} == {
        ("libssl3", "high", "3.0.2-0ubuntu1.18"), ("openssl", "high", "3.0.2-0ubuntu1.18")}
    tar = found["CVE-2026-2002"][0]
    assert (tar.severity, tar.fixed, tar.installed) == ("low", "", "1.34+dfsg-1ubuntu0.1.22.04.1")
    assert tar.line().endswith("→ no fix yet")
    # the kernel CVE is decided by the running kernel (oscap: "unknown" offline): counted as
    # not evaluated, never a silent "not vulnerable"
    assert ev.unevaluated == {"kernel": 1}


# -- Red Hat --------------------------------------------------------------------------------

RH_ADVISORIES = [
    F.Advisory("RHSA-2026:1001", (("openssl-libs", "1:3.0.7-27.el9"),), severity="Important",
               title="openssl security update", cves=("CVE-2026-3001", "CVE-2026-3002")),
    F.Advisory("RHSA-2026:1002", (("openssl-libs", "1:3.0.7-10.el9"),), severity="Critical",
               title="old fix, already installed"),
    F.Advisory("RHSA-2026:1003", (("curl", "7.76.1-29.el9"),), severity="Moderate",
               title="curl: not installed"),
]


@pytest.fixture(scope="module")
def rh_keys(tmp_path_factory):
    base = tmp_path_factory.mktemp("rpm")
    return base, rpmsign.gpg_key(base, "scapgate-test-vendor")


def rh_root(rh_keys, mode: str) -> Path:
    base, key = rh_keys
    return rpmsign.signed_rpm_root(base, {"openssl-libs": "1:3.0.7-16.el9"}, mode, key=key)


@pytest.fixture(scope="module")
def rh_case(rh_keys):
    key_id = rh_keys[1][1]
    return F.redhat_feed("9", RH_ADVISORIES, key_id=key_id), rh_root(rh_keys, "v4"), \
        "rpm:var/lib/rpm"


@pytest.mark.parametrize("mode", ["v4", "v3", "none"])
def test_red_hat_cves_are_found_whatever_signature_oscap_can_read(tmp_path, rh_keys, mode):
    feed = F.redhat_feed("9", RH_ADVISORIES, key_id=rh_keys[1][1])
    root = rh_root(rh_keys, mode)
    ev = evaluate(tmp_path, feed, root, kind="redhat", package_db="rpm:var/lib/rpm")
    assert [(f.id, f.package, f.installed, f.fixed, f.severity) for f in ev.findings] == [
        ("RHSA-2026:1001", "openssl-libs", "1:3.0.7-16.el9", "1:3.0.7-27.el9", "high")]
    assert ev.findings[0].cves == ("CVE-2026-3001", "CVE-2026-3002")


def test_plain_oscap_hides_a_header_signed_vulnerable_package(tmp_path, rh_keys):
    """The trap: Red Hat's criterion as published is false for a v4 (header-only) signature."""
    feed = F.redhat_feed("9", RH_ADVISORIES, key_id=rh_keys[1][1])
    (tmp_path / "feed.xml").write_bytes(feed)
    root = tmp_path / "root"
    shutil.copytree(rh_root(rh_keys, "v4"), root, symlinks=True)
    plain = F.plain_oval_eval(tmp_path / "feed.xml", root, tmp_path / "plain",
                              rpm_dbpath="/var/lib/rpm")
    assert plain.definitions[F.redhat_definition_id("RHSA-2026:1001")] == "false"


def test_another_vendors_readable_key_is_not_red_hats(tmp_path, rh_keys):
    """Accepting the unreadable key id must not accept every key: a v3 signature by another
    key is read, and is not Red Hat's."""
    feed = F.redhat_feed("9", RH_ADVISORIES, key_id=F.REDHAT_KEY_ID)
    ev = evaluate(tmp_path, feed, rh_root(rh_keys, "v3"), kind="redhat",
                  package_db="rpm:var/lib/rpm")
    assert ev.findings == []


# -- slicing rules --------------------------------------------------------------------------

def test_definitions_that_can_be_true_without_a_package_are_always_kept(tmp_path, debian_feed,
                                                                        rh_keys):
    (tmp_path / "d.xml").write_bytes(debian_feed)
    cve.build_index(str(tmp_path / "d.xml"), str(tmp_path / "d.sqlite"))
    ix = cve.FeedIndex(str(tmp_path / "d.sqlite"))
    assert ix.meta["always"] == 0                       # every Debian definition needs a package
    assert ix.definitions_for(set()) == []
    ids = F.definition_ids(debian_feed)
    assert ix.definitions_for({"glibc"}) == sorted(ids["CVE-2026-1001"] + ids["CVE-2026-1004"])
    # Red Hat's "must be installed" check (none satisfy) can be true without any package
    (tmp_path / "r.xml").write_bytes(F.redhat_feed("9", RH_ADVISORIES))
    cve.build_index(str(tmp_path / "r.xml"), str(tmp_path / "r.sqlite"))
    rx = cve.FeedIndex(str(tmp_path / "r.sqlite"))
    assert len(rx.definitions_for(set())) == len(RH_ADVISORIES)
    # ... until that check and "RHEL 9 is installed" are probed on the image: then only the
    # advisories of installed packages stay
    probes = rx.meta["probe_tests"]
    assert len(probes) == 2
    on_rhel = {t: ("false" if "must be installed" in c else "true")
               for t, c in ((t, _comment(rx, t)) for t in probes)}
    assert [d.rsplit(":", 1)[1] for d in rx.definitions_for({"openssl-libs"}, on_rhel)] == [
        "20261001", "20261002"]
    on_clone = {t: "true" for t in probes}
    assert len(rx.definitions_for({"openssl-libs"}, on_clone)) == len(RH_ADVISORIES)


def _comment(index: cve.FeedIndex, test_id: str) -> str:
    (xml,) = index._db.execute("SELECT xml FROM items WHERE id = ?", (test_id,)).fetchone()
    return cve.etree.fromstring(xml).get("comment", "")


def test_not_an_oval_document_is_refused(tmp_path):
    for name, body in (("html", b"<html><body>503</body></html>"), ("broken", b"<oval_defin"),
                       ("empty", b"")):
        (tmp_path / name).write_bytes(body)
        with pytest.raises(cve.FeedError):
            cve.build_index(str(tmp_path / name), str(tmp_path / f"{name}.sqlite"))
        assert not (tmp_path / f"{name}.sqlite").exists()


def test_an_unfixed_kernel_cve_is_counted_not_reported_for_every_image(tmp_path, ubuntu_case):
    """Offline, oscap drops the uname test of an unfixed kernel CVE and the release check alone
    makes it true (measured, tests/scan/test_feed_formats.py): it would be reported for every
    image. The running kernel is the node's: counted as not evaluated, never a finding."""
    feed_adv = UBUNTU_ADVISORIES + [
        F.Advisory("CVE-2026-2006", (("linux-image-5.15.0-100-generic", None),),
                   severity="high", kernel=True)]
    _, root, db = ubuntu_case
    feed = F.ubuntu_feed("jammy", "22.04", feed_adv)
    (tmp_path / "f.xml").write_bytes(feed)
    plain = F.plain_oval_eval(tmp_path / "f.xml", root, tmp_path / "plain")
    assert plain.definitions[F.ubuntu_definition_id("jammy", "CVE-2026-2006")] == "true"
    ev = evaluate(tmp_path / "e", feed, root, kind="ubuntu", package_db=db)
    assert "CVE-2026-2006" not in by_id(ev)
    assert ev.unevaluated == {"kernel": 2}


def test_red_hats_feed_on_a_clone_is_refused_not_a_flood(tmp_path):
    """A root whose rocky-release owns /etc/redhat-release: Red Hat's "must be installed"
    check (none satisfy) is true and every RHSA definition with it — refused as not applying."""
    root = F.rpm_cve_root(tmp_path / "rocky", release_package="rocky-release")
    feed = F.redhat_feed("9", RH_ADVISORIES)
    with pytest.raises(cve.FeedError, match="does not apply to this image"):
        evaluate(tmp_path / "e", feed, root, kind="redhat", package_db="rpm:var/lib/rpm")
