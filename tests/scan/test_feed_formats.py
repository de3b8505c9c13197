"""Vendor-format CVE feeds (tests/builders/feeds.py) judged by PLAIN oscap 1.3.7.

Real parts only: feeds written in Debian's, Ubuntu's and Red Hat's exact layouts, ``oscap oval
validate`` / ``oscap oval eval --results`` run by hand (OSCAP_PROBE_ROOT, APT_CONFIG ignoring
the host's apt.conf.d, a private HOME whose .rpmmacros names the rpmdb), small synthetic roots
written in tmp_path, rpmbuild + ``rpm --root -i`` for the RPM roots, and a real HTTP server.

What plain oscap decides, measured here (each is asserted below):
* All five layouts pass ``oscap oval validate``. Ubuntu's CVE feed puts <description> before
  <affected>/<reference> (OVAL's MetadataType wants title, affected*, reference*, description);
  it validates anyway because the xsd:any after description swallows them, and oscap re-orders
  them in its results file.
* Validation is quadratic in feed size: 500 / 1,000 / 2,000 Debian definitions take 4.5 /
  10.5 / 43 s; 12,000 (43 MB) had not finished after 12 minutes. ``oscap oval eval`` without
  --skip-valid validates first. The same 43 MB feed evaluates with --skip-valid in 1.6-2.9 s
  at about 400 MB RSS.
* Debian: the uname_test ("Installed architecture is all") is "not applicable" under
  OSCAP_PROBE_ROOT (stderr "W: oscap: Requested offline mode is not supported by uname
  probe."), and an AND ignores it: the release test and the dpkg test decide. A CVE of source
  ``glibc`` fixed above the installed libc6 is FALSE (the dpkginfo object names the source; no
  binary is called glibc) - the source-name trap. bash / xz-utils (binary named like its
  source) are matched. Unfixed ("less than 0:0") is never true.
* Ubuntu: fixed above the installed version -> true; unfixed + package present -> true;
  absent package -> false either way. Kernel definitions: uname_test "not applicable",
  variable_test (local_variable from uname's os_release) "unknown" (stderr "Entity name
  'value' from state ... not found in item"), so a FIXED kernel CVE is "unknown" - but an
  UNFIXED kernel CVE is TRUE: its only package criterion is the uname test, "not applicable"
  drops out of the AND and the release check alone makes it true. Offline, every unfixed
  kernel CVE of a real jammy feed is reported for every image.
* Red Hat: on an unsigned-package RHEL root the evr rpminfo test is true but the
  signature_keyid test is false (oscap reads key id "0"), so the definition is false. Without
  the .rpmmacros fix nothing is found at all. On a clone whose /etc/redhat-release belongs to
  another package (rocky-release), "Red Hat Enterprise Linux must be installed" (check "none
  satisfy") is true and EVERY RHSA definition is true, whatever is installed.
"""
from __future__ import annotations

import hashlib
import http.client
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lxml import etree

from tests.builders import feeds as f
from tests.builders.feeds import Advisory

pytestmark = pytest.mark.skipif(shutil.which("oscap") is None, reason="needs oscap")

D = f"{{{f.NS_DEF}}}"
LINUX = f"{{{f.NS_LINUX}}}"
IND = f"{{{f.NS_IND}}}"
UNIX = f"{{{f.NS_UNIX}}}"

# --------------------------------------------------------------------------- the advisories

DEBIAN_ADVISORIES = (
    Advisory("CVE-2099-0001", (("bash", "5.2.15-3"),), description="bash: fixed above installed"),
    Advisory("CVE-2099-0002", (("bash", "5.2.15-1"),), description="bash: fixed below installed"),
    Advisory("CVE-2099-0003", (("glibc", "2.36-9+deb12u7"),), description="glibc above libc6's"),
    Advisory("CVE-2099-0004", (("bash", None),), description="bash: no fix yet"),
    Advisory("CVE-2099-0005", (("xz-utils", "5.4.5-0.1"),), description="xz-utils: binary = source"),
    Advisory("CVE-2099-0006", (("openssl", "3.0.13-1~deb12u1"), ("bash", "5.2.15-3"))),
)
UBUNTU_ADVISORIES = (
    Advisory("CVE-2099-1001", (("libssl3", "3.0.2-0ubuntu1.15"), ("openssl", "3.0.2-0ubuntu1.15")),
             severity="high"),
    Advisory("CVE-2099-1002", (("liblzma5", None),), severity="low"),
    Advisory("CVE-2099-1003", (("linux-image-5.15.0-100-generic", "5.15.0-100.110"),),
             severity="high", kernel=True),
    Advisory("CVE-2099-1004", (("bash", "5.1-6"),), severity="medium"),
    Advisory("CVE-2099-1005", (("nginx", "1.18.0-6ubuntu14.4"),), severity="medium"),
    Advisory("CVE-2099-1006", (("nginx", None),), severity="untriaged"),
    Advisory("CVE-2099-1007", (("linux-image-5.15.0-100-generic", None),), severity="medium",
             kernel=True),
)
USN_ADVISORIES = (
    Advisory("USN-6000-1", (("libssl3", "3.0.2-0ubuntu1.15"), ("openssl", "3.0.2-0ubuntu1.15")),
             severity="high", title="OpenSSL vulnerabilities", cves=("CVE-2099-1001",)),
    Advisory("USN-6001-1", (("linux-image-5.15.0-100-generic", "5.15.0-100.110"),),
             severity="high", title="Linux kernel vulnerabilities", cves=("CVE-2099-1003",),
             kernel=True),
    Advisory("USN-6002-1", (("nginx", "1.18.0-6ubuntu14.4"),), title="nginx vulnerability",
             cves=("CVE-2099-1005",)),
)
REDHAT_ADVISORIES = (
    Advisory("RHSA-2024:1234", (("zlib", "1.2.11-40.el9"), ("zlib-devel", "1.2.11-40.el9")),
             severity="Important", title="zlib security update", cves=("CVE-2099-2001",)),
    Advisory("RHSA-2024:1235", (("zlib", "0:1.2.11-30.el9"),), severity="Low",
             title="zlib older fix", cves=("CVE-2099-2002",)),
    Advisory("RHSA-2024:0042", (("telnet-server", "0.17-86.el9"),), severity="Critical",
             title="telnet-server security update", cves=("CVE-2099-2003",)),
)


def _feeds() -> dict[str, bytes]:
    return {
        "debian": f.debian_feed("bookworm", "12", DEBIAN_ADVISORIES),
        "debian-packages-section": f.debian_feed("bookworm", "12", DEBIAN_ADVISORIES,
                                                 split_packages=False),
        "ubuntu-cve": f.ubuntu_feed("jammy", "22.04", UBUNTU_ADVISORIES),
        "ubuntu-usn": f.ubuntu_feed("jammy", "22.04", USN_ADVISORIES, variant="usn"),
        "redhat": f.redhat_feed("9", REDHAT_ADVISORIES),
    }


@pytest.fixture(scope="module")
def feed_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("feeds")
    out = {}
    for name, data in _feeds().items():
        out[name] = d / f"{name}.xml"
        out[name].write_bytes(data)
    return out


def _ids(path: Path) -> dict[str, list[str]]:
    return f.definition_ids(path.read_bytes())


def _one(ids: dict[str, list[str]], key: str) -> str:
    assert len(ids[key]) == 1, ids[key]
    return ids[key][0]


def _eval(feed: Path, root: Path, tmp: Path, **kw) -> f.OvalRun:
    run = f.plain_oval_eval(feed, root, tmp, timeout=60, **kw)
    assert run.rc == 0, run.stderr[-2000:]
    assert run.definitions, run.stderr[-2000:]
    return run


# --------------------------------------------------------------------------- 1. schema

@pytest.mark.parametrize("name", ["debian", "debian-packages-section", "ubuntu-cve", "ubuntu-usn",
                                  "redhat"])
def test_feed_passes_oscap_schema_validation(feed_files, name):
    # Ubuntu's CVE feed writes <description> before <affected>/<reference>; OVAL's
    # MetadataType orders title, affected*, reference*, description, xsd:any - the two land in
    # the lax xsd:any, so what Canonical publishes validates (and oscap re-orders them).
    proc = f.oval_validate(feed_files[name], timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_validation_really_checks_the_schema(tmp_path, feed_files):
    broken = feed_files["ubuntu-cve"].read_text().replace(
        "<linux-def:name var_ref", "<linux-def:nam var_ref", 1)
    (tmp_path / "broken.xml").write_text(broken)
    proc = f.oval_validate(tmp_path / "broken.xml", timeout=60)
    assert proc.returncode != 0
    assert "nam': This element is not expected" in proc.stdout + proc.stderr


@pytest.mark.parametrize("kind", ["bz2", "xz", "gz", ""])
def test_compress_round_trips(kind):
    import bz2, gzip, lzma
    data = _feeds()["debian"]
    packed = f.compress(data, kind)
    unpack = {"bz2": bz2.decompress, "xz": lzma.decompress, "gz": gzip.decompress,
              "": lambda b: b}[kind]
    assert unpack(packed) == data
    if kind:
        assert len(packed) < len(data) / 3


# --------------------------------------------------------------------------- format facts

def _tree(data: bytes):
    return etree.fromstring(data)


def test_debian_layout_matches_the_security_trackers_generator():
    data = _feeds()["debian"]
    root = _tree(data)
    assert root.findtext(f"{D}generator/{{{f.NS_COMMON}}}product_name") == "Debian"
    assert root.findtext(f"{D}generator/{{{f.NS_COMMON}}}schema_version") == "5.11.2"
    defs = root.findall(f"{D}definitions/{D}definition")
    # one definition per (CVE, source package): CVE-2099-0006 has two
    assert len(defs) == 7
    titles = {d.findtext(f"{D}metadata/{D}title"): d for d in defs}
    d = titles["CVE-2099-0003 glibc"]
    assert d.get("id") == f.debian_definition_id("CVE-2099-0003 glibc")
    assert re.fullmatch(r"oval:org\.debian:def:\d+", d.get("id"))
    assert d.get("class") == "vulnerability"
    assert d.find(f"{D}metadata/{D}advisory") is None            # no severity anywhere
    assert d.findtext(f"{D}metadata/{D}affected/{D}platform") == "Debian GNU/Linux 12"
    assert d.findtext(f"{D}metadata/{D}affected/{D}product") == "glibc"
    c = d.find(f"{D}criteria")
    assert (c.get("comment"), c.get("operator")) == ("Release section", "AND")
    arch = c.find(f"{D}criteria/{D}criteria")
    assert arch.get("comment") == "Architecture independent section"
    assert [x.get("comment") for x in arch] == ["all architecture", "glibc DPKG is earlier than 2.36-9+deb12u7"]
    # tests / objects / states
    tests = root.find(f"{D}tests")
    assert all(t.get("id").startswith("oval:org.debian.oval:tst:") for t in tests)
    rel = tests.find(f"{IND}textfilecontent54_test")
    assert rel.get("comment") == "Debian GNU/Linux 12 is installed"
    obj = root.find(f"{D}objects/{IND}textfilecontent54_object")
    assert obj.findtext(f"{IND}pattern") == r"(\d+)\.\d"
    assert (obj.findtext(f"{IND}path"), obj.findtext(f"{IND}filename")) == ("/etc", "debian_version")
    uname = tests.find(f"{UNIX}uname_test")
    assert uname.get("comment") == "Installed architecture is all" and uname.find(f"{UNIX}state") is None
    names = [o.findtext(f"{LINUX}name") for o in root.iterfind(f"{D}objects/{LINUX}dpkginfo_object")]
    assert "glibc" in names and "libc6" not in names            # SOURCE names
    evrs = {e.text: (e.get("datatype"), e.get("operation"))
            for e in root.iterfind(f"{D}states/{LINUX}dpkginfo_state/{LINUX}evr")}
    assert evrs["0:2.36-9+deb12u7"] == ("debian_evr_string", "less than")
    assert "0:0" in evrs                                          # the unfixed CVE
    for t in tests.iterfind(f"{LINUX}dpkginfo_test"):
        assert (t.get("check"), t.get("check_existence")) == ("all", "at_least_one_exists")
    # the literal xmlns= of lxml's output, as in Debian's file
    assert b'<dpkginfo_test id="oval:org.debian.oval:tst:' in data
    assert b'xmlns="http://oval.mitre.org/XMLSchema/oval-definitions-5#linux">' in data


def test_debian_packages_section_when_not_split():
    root = _tree(_feeds()["debian-packages-section"])
    d = next(d for d in root.iterfind(f"{D}definitions/{D}definition")
             if d.findtext(f"{D}metadata/{D}title") == "CVE-2099-0006")
    section = d.find(f".//{D}criteria[@comment='Packages section']")
    assert section.get("operator") == "OR" and len(section) == 2


def test_ubuntu_cve_layout_matches_oval_lib():
    data = _feeds()["ubuntu-cve"]
    assert not data.startswith(b"<?xml")                         # ElementTree.write: no declaration
    root = _tree(data)
    ns = "oval:com.ubuntu.jammy"
    assert root.findtext(f"{D}generator/{{{f.NS_COMMON}}}product_name") == "Canonical CVE OVAL Generator"
    defs = {d.get("id"): d for d in root.iterfind(f"{D}definitions/{D}definition")}
    assert defs[f"{ns}:def:100"].get("class") == "inventory"
    d = defs[f.ubuntu_definition_id("jammy", "CVE-2099-1001")]
    assert d.get("id") == f"{ns}:def:209910010000000"
    assert d.findtext(f"{D}metadata/{D}title") == "CVE-2099-1001 on Ubuntu 22.04 LTS (jammy) - high"
    assert [c.tag.split("}")[1] for c in d.find(f"{D}metadata")] == [
        "title", "description", "affected", "reference", "advisory"]
    assert d.findtext(f"{D}metadata/{D}advisory/{D}severity") == "High"
    ext = d.find(f"{D}criteria/{D}extend_definition")
    assert (ext.get("definition_ref"), ext.get("applicability_check")) == (f"{ns}:def:100", "true")
    obj = root.find(f"{D}objects/{LINUX}dpkginfo_object")
    name = obj.find(f"{LINUX}name")
    assert name.get("var_check") == "at least one" and name.get("var_ref").startswith(f"{ns}:var:")
    var = root.find(f"{D}variables/{D}constant_variable[@id='{name.get('var_ref')}']")
    assert [v.text for v in var] == ["libssl3", "openssl"]
    tests = {t.get("id"): t for t in root.find(f"{D}tests")}
    unfixed = tests[f"{ns}:tst:209910020000000"]
    assert unfixed.find(f"{LINUX}state") is None                 # unfixed = package present
    assert unfixed.get("comment") == "Does the 'liblzma5' package exist?"
    evr = root.find(f"{D}states/{LINUX}dpkginfo_state/{LINUX}evr")
    assert (evr.get("datatype"), evr.get("operation"), evr.text) == (
        "debian_evr_string", "less than", "0:3.0.2-0ubuntu1.15")
    lsb = root.find(f"{D}objects/{IND}textfilecontent54_object")
    assert lsb.findtext(f"{IND}filepath") == "/etc/lsb-release"
    # kernel: uname on the running kernel AND a variable_test of its evr
    k = defs[f"{ns}:def:209910030000000"].find(f"{D}criteria/{D}criteria/{D}criteria")
    assert k.get("operator") == "AND"
    kinds = [tests[c.get("test_ref")].tag.split("}")[1] for c in k]
    assert kinds == ["uname_test", "variable_test"]
    state = root.find(f"{D}states/{UNIX}uname_state/{UNIX}os_release")
    assert (state.get("operation"), state.text) == ("pattern match", r"5.15.0-\d+(-generic)")
    local = root.find(f"{D}variables/{D}local_variable")
    assert local.get("datatype") == "debian_evr_string"
    assert local.find(f".//{D}object_component").get("item_field") == "os_release"


def test_ubuntu_usn_layout_matches_oval_lib():
    root = _tree(_feeds()["ubuntu-usn"])
    ns = "oval:com.ubuntu.jammy"
    assert root.findtext(f"{D}generator/{{{f.NS_COMMON}}}product_name") == "Canonical USN OVAL Generator"
    d = root.find(f"{D}definitions/{D}definition[@id='{ns}:def:60001000000']")
    assert d.get("class") == "patch"
    assert d.findtext(f"{D}metadata/{D}title") == "USN-6000-1 -- OpenSSL vulnerabilities"
    assert d.find(f"{D}metadata/{D}advisory").get("from") == "security@ubuntu.com"
    refs = {r.get("source"): r.get("ref_id") for r in d.iterfind(f"{D}metadata/{D}reference")}
    assert refs == {"USN": "USN-6000-1", "CVE": "CVE-2099-1001"}
    assert d.find(f".//{D}criterion").get("test_ref") == f"{ns}:tst:600010000000"
    kt = root.find(f"{D}tests/{IND}variable_test")
    assert (kt.get("check"), kt.get("check_existence")) == ("all", "all_exist")


def test_redhat_layout_matches_oval_v2():
    root = _tree(_feeds()["redhat"])
    assert root.findtext(f"{D}generator/{{{f.NS_COMMON}}}product_name") == "Red Hat OVAL Patch Definition Merger"
    assert root.findtext(f"{D}generator/{{{f.NS_COMMON}}}schema_version") == "5.10"
    d = root.find(f"{D}definitions/{D}definition[@id='oval:com.redhat.rhsa:def:20241234']")
    assert d.get("class") == "patch"
    assert d.findtext(f"{D}metadata/{D}title") == "RHSA-2024:1234: zlib security update (Important)"
    adv = d.find(f"{D}metadata/{D}advisory")
    assert adv.findtext(f"{D}severity") == "Important"
    assert [c.text for c in adv.iterfind(f"{D}cve")] == ["CVE-2099-2001"]
    assert "cpe:/o:redhat:enterprise_linux:9::baseos" in [c.text for c in adv.iterfind(f"{D}affected_cpe_list/{D}cpe")]
    top = d.find(f"{D}criteria")
    assert top.get("operator") == "OR"
    assert top[0].get("comment") == "Red Hat Enterprise Linux must be installed"
    assert top[1][0].get("comment") == "Red Hat Enterprise Linux 9 is installed"
    pairs = [[c.get("comment") for c in a] for a in top[1][1]]
    assert pairs[0] == ["zlib is earlier than 0:1.2.11-40.el9",      # epoch 0 added
                        "zlib is signed with Red Hat redhatrelease2 key"]
    tests = {t.get("comment"): t for t in root.find(f"{D}tests")}
    assert tests["Red Hat Enterprise Linux must be installed"].get("check") == "none satisfy"
    assert tests["Red Hat Enterprise Linux must be installed"].tag == f"{LINUX}rpmverifyfile_test"
    key = root.find(f"{D}states/{LINUX}rpminfo_state/{LINUX}signature_keyid")
    assert (key.get("operation"), key.text) == ("equals", "199e2f91fd431d51")
    evr = root.find(f"{D}states/{LINUX}rpminfo_state/{LINUX}evr")
    assert (evr.get("datatype"), evr.get("operation")) == ("evr_string", "less than")
    ver = root.find(f"{D}states/{LINUX}rpmverifyfile_state/{LINUX}version")
    assert ver.text == r"^9[^\d]"


# --------------------------------------------------------------------------- 2. plain oscap

@pytest.fixture(scope="module")
def debian_root(tmp_path_factory) -> Path:
    return f.debian_cve_root(tmp_path_factory.mktemp("debian12") / "root")


@pytest.fixture(scope="module")
def debian_run(debian_root, feed_files, tmp_path_factory) -> f.OvalRun:
    # plain: no --skip-valid (small feed, so validation costs a fraction of a second)
    return _eval(feed_files["debian"], debian_root, tmp_path_factory.mktemp("debian-eval"))


def test_debian_plain_oscap_verdicts(debian_run, feed_files):
    ids = _ids(feed_files["debian"])
    res = {title: debian_run.definitions[_one(ids, title)] for title in (
        "CVE-2099-0001 bash", "CVE-2099-0002 bash", "CVE-2099-0003 glibc", "CVE-2099-0004 bash",
        "CVE-2099-0005 xz-utils", "CVE-2099-0006 bash", "CVE-2099-0006 openssl")}
    assert res == {
        "CVE-2099-0001 bash": "true",       # 5.2.15-2+b2 < 5.2.15-3
        "CVE-2099-0002 bash": "false",      # fixed below the installed version
        "CVE-2099-0003 glibc": "false",     # THE SOURCE-NAME TRAP: libc6 2.36-9+deb12u4 < fix
        "CVE-2099-0004 bash": "false",      # unfixed: "less than 0:0" is never true
        "CVE-2099-0005 xz-utils": "true",   # the binary xz-utils carries the source's name
        "CVE-2099-0006 bash": "true",
        "CVE-2099-0006 openssl": "false",   # trap again: libssl3 is built from openssl
    }


def test_debian_uname_test_is_not_applicable_offline(debian_run, feed_files):
    [uname] = f.tests_by_comment(feed_files["debian"].read_bytes(), "^Installed architecture is all$")
    assert debian_run.tests[uname] == "not applicable"
    assert "offline mode is not supported by uname probe" in debian_run.stderr
    [release] = f.tests_by_comment(feed_files["debian"].read_bytes(), "Debian GNU/Linux 12 is installed")
    assert debian_run.tests[release] == "true"


def test_debian_packages_section_is_an_or(debian_root, feed_files, tmp_path):
    run = _eval(feed_files["debian-packages-section"], debian_root, tmp_path)
    ids = _ids(feed_files["debian-packages-section"])
    assert run.definitions[_one(ids, "CVE-2099-0006")] == "true"     # openssl false OR bash true
    assert run.definitions[_one(ids, "CVE-2099-0003")] == "false"


def test_debian_feed_does_not_apply_to_another_release(tmp_path, feed_files):
    root = f.debian_cve_root(tmp_path / "root", debian_version="11.11")
    run = _eval(feed_files["debian"], root, tmp_path / "w")
    assert set(run.definitions.values()) == {"false"}


@pytest.fixture(scope="module")
def ubuntu_root(tmp_path_factory) -> Path:
    return f.ubuntu_cve_root(tmp_path_factory.mktemp("jammy") / "root")


def test_ubuntu_cve_plain_oscap_verdicts(ubuntu_root, feed_files, tmp_path):
    run = _eval(feed_files["ubuntu-cve"], ubuntu_root, tmp_path)
    res = {c: run.definitions[f.ubuntu_definition_id("jammy", c)] for c in (
        "CVE-2099-1001", "CVE-2099-1002", "CVE-2099-1003", "CVE-2099-1004", "CVE-2099-1005",
        "CVE-2099-1006", "CVE-2099-1007")}
    assert run.definitions["oval:com.ubuntu.jammy:def:100"] == "true"   # lsb-release: jammy
    assert res == {
        "CVE-2099-1001": "true",      # libssl3/openssl 3.0.2-0ubuntu1.10 < 3.0.2-0ubuntu1.15
        "CVE-2099-1002": "true",      # unfixed, liblzma5 installed: presence is enough
        "CVE-2099-1003": "unknown",   # kernel fixed: uname n/a AND variable_test unknown
        "CVE-2099-1004": "false",     # fixed below the installed version
        "CVE-2099-1005": "false",     # nginx not installed
        "CVE-2099-1006": "false",     # unfixed, nginx not installed
        # unfixed kernel CVE: only the uname test, "not applicable", drops out of the AND and
        # the release check alone makes it TRUE - a false positive for every image offline.
        "CVE-2099-1007": "true",
    }
    kernel_tests = f.tests_by_comment(feed_files["ubuntu-cve"].read_bytes(), r"^Is kernel .* running\?$")
    assert {run.tests[t] for t in kernel_tests} == {"not applicable"}
    [variable] = f.tests_by_comment(feed_files["ubuntu-cve"].read_bytes(), "version comparison")
    assert run.tests[variable] == "unknown"


def test_ubuntu_usn_plain_oscap_verdicts(ubuntu_root, feed_files, tmp_path):
    run = _eval(feed_files["ubuntu-usn"], ubuntu_root, tmp_path)
    res = {u: run.definitions[f.ubuntu_definition_id("jammy", u, "usn")]
           for u in ("USN-6000-1", "USN-6001-1", "USN-6002-1")}
    assert res == {"USN-6000-1": "true", "USN-6001-1": "unknown", "USN-6002-1": "false"}


def test_ubuntu_feed_does_not_apply_to_debian(debian_root, feed_files, tmp_path):
    run = _eval(feed_files["ubuntu-cve"], debian_root, tmp_path)
    assert run.definitions["oval:com.ubuntu.jammy:def:100"] == "false"
    assert set(run.definitions.values()) == {"false"}


@pytest.fixture(scope="module")
def rpm_roots(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("rpmbuild") is None or shutil.which("rpm") is None:
        pytest.skip("needs rpm and rpmbuild")
    base = tmp_path_factory.mktemp("rpm")
    return {"rhel": f.rpm_cve_root(base / "rhel"),
            "clone": f.rpm_cve_root(base / "clone", release_package="rocky-release",
                                    packages=(("zlib", "1.2.11", "41.el9"),))}


def test_redhat_unsigned_packages_make_every_definition_false(rpm_roots, feed_files, tmp_path):
    feed = feed_files["redhat"].read_bytes()
    run = _eval(feed_files["redhat"], rpm_roots["rhel"], tmp_path, rpm_dbpath="/var/lib/rpm")
    defs = {a.id: run.definitions[f.redhat_definition_id(a.id)] for a in REDHAT_ADVISORIES}
    # zlib-1.2.11-39.el9 is below RHSA-2024:1234's fix, but the package is unsigned: oscap
    # reads signature_keyid "0", the "signed with Red Hat redhatrelease2 key" test is false,
    # and so is the AND.
    assert defs == {"RHSA-2024:1234": "false", "RHSA-2024:1235": "false", "RHSA-2024:0042": "false"}
    [evr] = f.tests_by_comment(feed, r"^zlib is earlier than 0:1\.2\.11-40\.el9$")
    [sig] = [t for t in f.tests_by_comment(feed, r"^zlib is signed with") if t.startswith(
        "oval:com.redhat.rhsa:tst:20241234")]
    assert run.tests[evr] == "true"                # the evr test alone: installed < fix
    assert run.tests[sig] == "false"               # the signature_keyid criterion
    [below] = f.tests_by_comment(feed, r"^zlib is earlier than 0:1\.2\.11-30\.el9$")
    assert run.tests[below] == "false"
    release = {c: run.tests[t] for c in ("Red Hat Enterprise Linux must be installed",
                                         "Red Hat Enterprise Linux 9 is installed")
               for t in f.tests_by_comment(feed, f"^{c}$")}
    assert release == {"Red Hat Enterprise Linux must be installed": "false",
                       "Red Hat Enterprise Linux 9 is installed": "true"}


def test_redhat_without_the_rpmdb_fix_sees_nothing(rpm_roots, feed_files, tmp_path):
    feed = feed_files["redhat"].read_bytes()
    run = _eval(feed_files["redhat"], rpm_roots["rhel"], tmp_path, rpm_dbpath=None)
    assert set(run.tests.values()) == {"false"}
    assert "~/.rpmdb" in run.stderr
    [evr] = f.tests_by_comment(feed, r"^zlib is earlier than 0:1\.2\.11-40\.el9$")
    assert run.tests[evr] == "false"


def test_redhat_feed_on_a_clone_reports_every_definition(rpm_roots, feed_files, tmp_path):
    # /etc/redhat-release owned by rocky-release: "must be installed" (check "none satisfy")
    # is true and ORs every definition true - zlib 41.el9 is above every fix and
    # telnet-server is not installed.
    run = _eval(feed_files["redhat"], rpm_roots["clone"], tmp_path, rpm_dbpath="/var/lib/rpm")
    assert {run.definitions[f.redhat_definition_id(a.id)] for a in REDHAT_ADVISORIES} == {"true"}


# --------------------------------------------------------------------------- 3. FeedServer

def _get(server: f.FeedServer, path: str, headers: dict | None = None, method: str = "GET"):
    host, port = server.base_url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_feed_server_etag_and_if_none_match():
    body = f.compress(_feeds()["debian"], "bz2")
    with f.FeedServer() as srv:
        srv.put("/debian/oval-definitions-bookworm.xml.bz2", body)
        assert srv.url("debian/x") == srv.base_url + "/debian/x"
        status, headers, got = _get(srv, "/debian/oval-definitions-bookworm.xml.bz2")
        assert (status, got) == (200, body)
        etag = headers["ETag"]
        assert etag == '"%s"' % hashlib.sha256(body).hexdigest()[:32]
        assert headers["Content-Type"] == "application/x-bzip2"
        assert "Last-Modified" not in headers
        status, headers, got = _get(srv, "/debian/oval-definitions-bookworm.xml.bz2",
                                    {"If-None-Match": etag})
        assert (status, got) == (304, b"") and headers["ETag"] == etag
        assert _get(srv, "/debian/oval-definitions-bookworm.xml.bz2",
                    {"If-None-Match": '"other"'})[0] == 200
        srv.put("/debian/oval-definitions-bookworm.xml.bz2", body + b"x")   # feed updated
        assert _get(srv, "/debian/oval-definitions-bookworm.xml.bz2", {"If-None-Match": etag})[0] == 200
        statuses = [s for p, h, s in srv.requests]
        assert statuses == [200, 304, 200, 200]
        assert srv.requests[1][1]["If-None-Match"] == etag
        srv.put("/noetag", b"abc", etag=False)
        assert "ETag" not in _get(srv, "/noetag")[1]


def test_feed_server_last_modified_and_if_modified_since():
    mtime = 1_717_200_000.0
    with f.FeedServer() as srv:
        srv.put("/rhel-9.oval.xml.bz2", b"feed", etag=False, last_modified=mtime)
        status, headers, _ = _get(srv, "/rhel-9.oval.xml.bz2")
        assert status == 200
        lm = headers["Last-Modified"]
        assert lm == "Sat, 01 Jun 2024 00:00:00 GMT"
        assert _get(srv, "/rhel-9.oval.xml.bz2", {"If-Modified-Since": lm})[0] == 304
        assert _get(srv, "/rhel-9.oval.xml.bz2",
                    {"If-Modified-Since": "Fri, 31 May 2024 23:59:59 GMT"})[0] == 200
        srv.put("/rhel-9.oval.xml.bz2", b"feed2", etag=False, last_modified=mtime + 3600)
        assert _get(srv, "/rhel-9.oval.xml.bz2", {"If-Modified-Since": lm})[0] == 200
        # If-None-Match wins over If-Modified-Since (RFC 9110)
        srv.put("/both", b"b", last_modified=mtime)
        assert _get(srv, "/both", {"If-None-Match": '"stale"',
                                   "If-Modified-Since": "Sat, 01 Jun 2024 00:00:00 GMT"})[0] == 200


def test_feed_server_fail_head_and_404():
    with f.FeedServer() as srv:
        srv.put("/feed.xml", b"<x/>")
        srv.fail("/feed.xml", 503)
        assert _get(srv, "/feed.xml")[0] == 503
        assert _get(srv, "/feed.xml?cachebust=1")[0] == 503
        srv.fail("/feed.xml", None)
        assert _get(srv, "/feed.xml")[:3:2] == (200, b"<x/>")
        srv.fail("/feed.xml", 500, times=1)
        assert [_get(srv, "/feed.xml")[0] for _ in range(2)] == [500, 200]
        srv.fail("/gone.xml", 404)
        assert _get(srv, "/gone.xml")[0] == 404
        assert _get(srv, "/never-put")[0] == 404
        status, headers, body = _get(srv, "/feed.xml", method="HEAD")
        assert (status, headers["Content-Length"], body) == (200, "4", b"")
        srv.fail("/feed.xml", 503)
        srv.put("/feed.xml", b"<y/>")           # a new put clears the failure
        assert _get(srv, "/feed.xml")[2] == b"<y/>"
        assert len(srv.requests_for("/feed.xml")) == 7


def test_feed_server_serves_concurrent_requests():
    with f.FeedServer() as srv:
        srv.put("/slow", b"s" * 1000, delay=0.3)
        srv.put("/fast", b"f")
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda p: _get(srv, p)[0], ["/slow"] * 6 + ["/fast"] * 10))
        assert got == [200] * 16
        assert time.monotonic() - start < 1.5        # the 6 slow ones overlap
        assert len(srv.requests) == 16


# --------------------------------------------------------------------------- 4. large feed

def test_large_debian_feed_is_real_size_valid_xml_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SCAPGATE_CACHE_DIR", str(tmp_path / "cache-a"))
    start = time.monotonic()
    path = f.large_debian_feed(tmp_path / "dest")
    build = time.monotonic() - start
    assert build < 20, f"building the large feed took {build:.1f} s"
    assert path == tmp_path / "dest" / "oval-definitions-bookworm.xml"
    size = path.stat().st_size
    assert size >= 40_000_000, size
    cached = f.large_debian_feed()                       # the cache entry itself, no rebuild
    assert cached.parent.parent == tmp_path / "cache-a" / "feeds"
    inode = cached.stat().st_ino
    start = time.monotonic()
    assert f.large_debian_feed().stat().st_ino == inode
    assert time.monotonic() - start < 0.5

    count, products = 0, set()
    for _, el in etree.iterparse(str(path), tag=f"{D}definition", huge_tree=True):
        count += 1
        assert el.get("id").startswith("oval:org.debian:def:")
        products.add(el.findtext(f"{D}metadata/{D}affected/{D}product"))
        el.clear()
    assert count >= 10_000
    real = set(f.DEBIAN_SOURCES) & products
    assert {"glibc", "openssl", "xz-utils"} <= real and len(real) > 150
    assert any(p.startswith("synthetic-src-") for p in products)

    monkeypatch.setenv("SCAPGATE_CACHE_DIR", str(tmp_path / "cache-b"))   # same recipe, same bytes
    again = f.large_debian_feed()
    assert again != cached
    assert _sha(again) == _sha(cached)


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
