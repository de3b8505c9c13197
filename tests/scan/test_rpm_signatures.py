"""What oscap 1.3.7 makes of RPM signatures, and two rewrites of Red Hat's signature criterion.

Red Hat's OVAL v2 feeds judge a package vulnerable when "<pkg> is earlier than <fixed>" AND
"<pkg> is signed with Red Hat redhatrelease2 key" (rpminfo_state signature_keyid equals
199e2f91fd431d51). oscap 1.3.7's rpminfo probe reads the key id only from the v3
(header+payload) signature (SIGPGP/SIGGPG) and reports "0" for a header-only (v4) signature, the
kind rpm >= 4.16 writes and current RHEL packages carry, and for an unsigned package. So on such
an image the plain criterion is false for every vulnerable package: the CVE is hidden.

Everything here is real: gpg keys, rpmsign, rpm --root installs, oscap oval eval on the root
(OSCAP_PROBE_ROOT, HOME with .rpmmacros "%_dbpath /var/lib/rpm" as DESIGN.md says); our own
key stands in for Red Hat's (nobody can sign with theirs). The feed below is written in Red
Hat's v2 shape (criteria tree, rpmverifyfile tests on /etc/redhat-release, one shared
signature state) with each signature criterion in four variants:

  plain    signature_keyid equals KEY                              (as Red Hat ships it)
  or       two states, KEY and "0", state_operator="OR"            (rewrite candidate 1)
  pattern  signature_keyid pattern match ^(KEY|0)$                 (rewrite candidate 2)
  and      the two states of "or" with state_operator="AND"        (control: proves oscap
                                                                     honours the attribute)
Findings and commands: /work/notes/rpm-signatures.md.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree

from tests.builders.rpmsign import (DBPATH, gpg_key, keyid_of, query_signatures,
                                    signed_rpm_root)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (oscap's rpm probes chroot)"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in
                           ("oscap", "rpm", "rpmbuild", "rpmsign", "gpg", "gpgconf",
                            "db5.3_load")),
                       reason="needs oscap, rpm, rpmbuild, rpmsign, gpg and db5.3_load"),
]

MODES = ("none", "v4", "v3")
DBS = ("sqlite", "bdb")
VARIANTS = ("plain", "or", "pattern", "and")

# What the roots hold and what the feed says is fixed (RHSA-2024:3339 and RHSA-2022:4584 fixed
# versions): openssl-libs is vulnerable, zlib is patched, openssl is not installed.
INSTALLED = {"openssl-libs": "1:3.0.7-16.el9", "zlib": "0:1.2.11-40.el9"}
FIXED = {"openssl-libs": "1:3.0.7-27.el9", "zlib": "0:1.2.11-31.el9_0.1",
         "openssl": "1:3.0.7-27.el9"}
VULNERABLE, PATCHED, ABSENT = "openssl-libs", "zlib", "openssl"

P = "oval:test.scapgate"
NS = {"r": "http://oval.mitre.org/XMLSchema/oval-results-5",
      "lin": "http://oval.mitre.org/XMLSchema/oval-system-characteristics-5#linux"}


# --------------------------------------------------------------------------- the feed

def redhat_v2_feed(keyid: str, fixed: dict[str, str]) -> str:
    """OVAL 5.10 definitions in Red Hat's v2 shape: per package and variant one definition
    OR(RHEL must be installed [rpmverifyfile none satisfy],
       AND(RHEL 9 is installed, OR(AND(<pkg> is earlier than <fixed>, <signature test>)))).
    Ids: definition <P>:def:<i><v> (package i = 1.., variant v = 1..4 in VARIANTS order),
    evr test <P>:tst:<i>0, signature tests <P>:tst:<i><v>, rpminfo_object <P>:obj:<i>0."""
    sig_states = {"plain": ["3"], "or": ["3", "4"], "pattern": ["5"], "and": ["3", "4"]}
    sig_op = {"plain": "", "or": ' state_operator="OR"', "pattern": "",
              "and": ' state_operator="AND"'}
    definitions, tests, objects, states = [], [], [], []
    for i, (name, evr) in enumerate(fixed.items(), start=1):
        objects.append(f'<red-def:rpminfo_object id="{P}:obj:{i}0" version="1">'
                       f'<red-def:name>{name}</red-def:name></red-def:rpminfo_object>')
        states.append(f'<red-def:rpminfo_state id="{P}:ste:{i}0" version="1">'
                      f'<red-def:evr datatype="evr_string" operation="less than">{evr}'
                      f'</red-def:evr></red-def:rpminfo_state>')
        tests.append(f'<red-def:rpminfo_test check="at least one" comment="{name} is earlier '
                     f'than {evr}" id="{P}:tst:{i}0" version="1"><red-def:object object_ref='
                     f'"{P}:obj:{i}0"/><red-def:state state_ref="{P}:ste:{i}0"/>'
                     f'</red-def:rpminfo_test>')
        for v, variant in enumerate(VARIANTS, start=1):
            refs = "".join(f'<red-def:state state_ref="{P}:ste:{s}"/>'
                           for s in sig_states[variant])
            tests.append(f'<red-def:rpminfo_test check="at least one"{sig_op[variant]} '
                         f'comment="{name} is signed with Red Hat redhatrelease2 key '
                         f'({variant})" id="{P}:tst:{i}{v}" version="1"><red-def:object '
                         f'object_ref="{P}:obj:{i}0"/>{refs}</red-def:rpminfo_test>')
            definitions.append(f'''
  <definition class="patch" id="{P}:def:{i}{v}" version="1">
   <metadata><title>{name} earlier than {evr} ({variant})</title>
    <description>{name} fixed in {evr}; signature criterion: {variant}</description></metadata>
   <criteria operator="OR">
    <criterion comment="Red Hat Enterprise Linux must be installed" test_ref="{P}:tst:1"/>
    <criteria operator="AND">
     <criterion comment="Red Hat Enterprise Linux 9 is installed" test_ref="{P}:tst:2"/>
     <criteria operator="OR">
      <criteria operator="AND">
       <criterion comment="{name} is earlier than {evr}" test_ref="{P}:tst:{i}0"/>
       <criterion comment="{name} is signed with Red Hat redhatrelease2 key" test_ref="{P}:tst:{i}{v}"/>
      </criteria>
     </criteria>
    </criteria>
   </criteria>
  </definition>''')
    nl = "\n  "
    return f'''<?xml version="1.0" encoding="UTF-8"?>
<oval_definitions xmlns="http://oval.mitre.org/XMLSchema/oval-definitions-5"
    xmlns:oval="http://oval.mitre.org/XMLSchema/oval-common-5"
    xmlns:red-def="http://oval.mitre.org/XMLSchema/oval-definitions-5#linux">
 <generator><oval:product_name>scapgate tests</oval:product_name>
  <oval:schema_version>5.10</oval:schema_version>
  <oval:timestamp>2024-06-01T00:00:00</oval:timestamp></generator>
 <definitions>{"".join(definitions)}
 </definitions>
 <tests>
  <red-def:rpmverifyfile_test check="none satisfy" comment="Red Hat Enterprise Linux must be installed" id="{P}:tst:1" version="1"><red-def:object object_ref="{P}:obj:1"/><red-def:state state_ref="{P}:ste:1"/></red-def:rpmverifyfile_test>
  <red-def:rpmverifyfile_test check="at least one" comment="Red Hat Enterprise Linux 9 is installed" id="{P}:tst:2" version="1"><red-def:object object_ref="{P}:obj:1"/><red-def:state state_ref="{P}:ste:2"/></red-def:rpmverifyfile_test>
  {nl.join(tests)}
 </tests>
 <objects>
  <red-def:rpmverifyfile_object id="{P}:obj:1" version="1">
   <red-def:behaviors noconfigfiles="true" noghostfiles="true" nogroup="true" nolinkto="true" nomd5="true" nomode="true" nomtime="true" nordev="true" nosize="true" nouser="true"/>
   <red-def:name operation="pattern match"/><red-def:epoch operation="pattern match"/>
   <red-def:version operation="pattern match"/><red-def:release operation="pattern match"/>
   <red-def:arch operation="pattern match"/>
   <red-def:filepath>/etc/redhat-release</red-def:filepath>
  </red-def:rpmverifyfile_object>
  {nl.join(objects)}
 </objects>
 <states>
  <red-def:rpmverifyfile_state id="{P}:ste:1" version="1"><red-def:name operation="pattern match">^redhat-release</red-def:name></red-def:rpmverifyfile_state>
  <red-def:rpmverifyfile_state id="{P}:ste:2" version="1"><red-def:name operation="pattern match">^redhat-release</red-def:name><red-def:version operation="pattern match">^9[^\\d]</red-def:version></red-def:rpmverifyfile_state>
  <red-def:rpminfo_state id="{P}:ste:3" version="1"><red-def:signature_keyid operation="equals">{keyid}</red-def:signature_keyid></red-def:rpminfo_state>
  <red-def:rpminfo_state id="{P}:ste:4" version="1"><red-def:signature_keyid operation="equals">0</red-def:signature_keyid></red-def:rpminfo_state>
  <red-def:rpminfo_state id="{P}:ste:5" version="1"><red-def:signature_keyid operation="pattern match">^({keyid}|0)$</red-def:signature_keyid></red-def:rpminfo_state>
  {nl.join(states)}
 </states>
</oval_definitions>
'''


# --------------------------------------------------------------------------- oscap

@dataclass(frozen=True)
class OvalRun:
    rc: int
    definitions: dict   # (package, variant) -> result
    tests: dict         # test id -> result
    items: dict         # package name -> rpminfo_item fields
    stderr: str

    def result(self, package: str, variant: str) -> str:
        return self.definitions[(package, variant)]


def oval_eval(root: Path, feed: Path, work: Path) -> OvalRun:
    """``OSCAP_PROBE_ROOT=<root> HOME=<dir with .rpmmacros> oscap oval eval --results R feed``
    (schema validation on: the rewritten feed must be valid OVAL 5.10)."""
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    home.mkdir(exist_ok=True)
    (home / ".rpmmacros").write_text(f"%_dbpath {DBPATH}\n")
    results = work / "results.xml"
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    env.update(HOME=str(home), OSCAP_PROBE_ROOT=str(root))
    proc = subprocess.run(["oscap", "oval", "eval", "--results", str(results), str(feed)],
                          env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    if proc.returncode or not results.exists():
        raise RuntimeError(f"oscap rc={proc.returncode}: {proc.stderr[-2000:]}")
    doc = etree.parse(str(results))
    names = list(FIXED)
    definitions = {}
    for d in doc.iterfind(".//r:results/r:system/r:definitions/r:definition", NS):
        number = d.get("definition_id").rsplit(":", 1)[1]
        definitions[(names[int(number[:-1]) - 1], VARIANTS[int(number[-1]) - 1])] = d.get("result")
    tests = {t.get("test_id"): t.get("result")
             for t in doc.iterfind(".//r:results/r:system/r:tests/r:test", NS)}
    items = {}
    for item in doc.iterfind(".//lin:rpminfo_item", NS):
        fields = {etree.QName(c).localname: c.text for c in item}
        items[fields["name"]] = {**fields, "status": item.get("status")}
    return OvalRun(proc.returncode, definitions, tests, items, proc.stderr)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rpmsig")


@pytest.fixture(scope="session")
def key(base) -> tuple[Path, str]:
    """Stands in for Red Hat's release key: the feed's signature states name it."""
    return gpg_key(base)


@pytest.fixture(scope="session")
def other_key(base) -> tuple[Path, str]:
    """Another vendor's key (a rebuild, a third-party repository)."""
    return gpg_key(base, "other vendor <rpm@other.invalid>")


@pytest.fixture(scope="session")
def feed(base, key) -> Path:
    path = base / "feed.xml"
    path.write_text(redhat_v2_feed(key[1], FIXED))
    return path


@pytest.fixture(scope="session")
def scan(base, key, feed):
    """scan(mode, db, signer=key) -> (root, OvalRun); each root built and scanned once."""
    done: dict = {}

    def run(mode: str, db: str = "sqlite", signer: tuple[Path, str] | None = None):
        signer = signer or key
        tag = (mode, db, signer[1])
        if tag not in done:
            root = signed_rpm_root(base, INSTALLED, mode, db=db, key=signer)
            done[tag] = root, oval_eval(root, feed, base / f"oscap-{mode}-{db}-{signer[1]}")
        return done[tag]

    return run


MATRIX = [pytest.param(m, db, id=f"{m}-{db}") for m in MODES for db in DBS]


# --------------------------------------------------------------------------- what rpm says

@pytest.mark.parametrize("mode,db", MATRIX)
def test_rpm_reports_which_signature_tags_a_package_carries(scan, key, mode, db):
    """rpm -q --qf '%{SIGPGP:pgpsig}|%{RSAHEADER:pgpsig}|%{DSAHEADER:pgpsig}|%{SIGGPG:pgpsig}'
    (key ids shown): unsigned -|-|-|-; v4 -|KEY|-|-; v3 KEY|KEY|-|- — rpmsign --rpmv3 adds the
    header+payload signature next to the header-only one. Same on sqlite and bdb."""
    root, _ = scan(mode, db)
    sigs = query_signatures(root, list(INSTALLED))
    assert set(sigs) == set(INSTALLED)
    expect = {"none": (None, None, None, None), "v4": (None, key[1], None, None),
              "v3": (key[1], key[1], None, None)}[mode]
    for name, tags in sigs.items():
        got = tuple(keyid_of(tags[t]) for t in ("SIGPGP", "RSAHEADER", "DSAHEADER", "SIGGPG"))
        assert got == expect, (name, tags)
        if mode != "none":
            assert tags["RSAHEADER"].startswith("RSA/SHA256, "), tags


# --------------------------------------------------------------------------- what oscap sees

@pytest.mark.parametrize("mode,db", MATRIX)
def test_oscap_reads_the_key_id_only_from_a_v3_signature(scan, key, mode, db):
    """rpminfo_item signature_keyid: "0" unsigned, "0" with a header-only (v4) signature, the
    key id (16 hex, lowercase) with a v3 signature; sqlite and bdb alike. The rest of the item
    is right in every mode (the probe did read the rpmdb: not the ~/.rpmdb trap)."""
    _, run = scan(mode, db)
    item = run.items[VULNERABLE]
    assert item["signature_keyid"] == (key[1] if mode == "v3" else "0")
    assert item["status"] == "exists"
    assert item["evr"] == INSTALLED[VULNERABLE]
    assert item["extended_name"] == f"{VULNERABLE}-{INSTALLED[VULNERABLE]}.noarch"
    assert ABSENT not in run.items
    # the "RHEL 9 is installed" part of every definition holds in every root
    assert run.tests[f"{P}:tst:1"] == "false" and run.tests[f"{P}:tst:2"] == "true"
    if db == "bdb":
        assert "Found bdb_ro Packages database" in run.stderr
    else:
        assert "RPM:" not in run.stderr, run.stderr


@pytest.mark.parametrize("mode,db", MATRIX)
def test_vulnerable_package_plain_criterion_needs_a_v3_signature(scan, mode, db):
    """With a vulnerable openssl-libs: Red Hat's plain criterion is true only when the package
    has a v3 signature; unsigned or v4-only signed, the definition is false (CVE hidden)
    although "is earlier than" is true. Both rewrites are true in every mode; the AND control
    never is (so oscap honours state_operator rather than ignoring it)."""
    _, run = scan(mode, db)
    assert run.tests[f"{P}:tst:10"] == "true"  # openssl-libs is earlier than the fix
    assert run.result(VULNERABLE, "plain") == ("true" if mode == "v3" else "false")
    assert run.result(VULNERABLE, "or") == "true"
    assert run.result(VULNERABLE, "pattern") == "true"
    assert run.result(VULNERABLE, "and") == "false"


@pytest.mark.parametrize("mode,db", MATRIX)
def test_rewrites_add_no_finding_for_patched_or_absent_packages(scan, mode, db):
    """zlib at a version past the fix, and openssl (not installed): every variant false in
    every mode: the rewrites only relax the signature half of the AND."""
    _, run = scan(mode, db)
    for package in (PATCHED, ABSENT):
        for variant in VARIANTS:
            assert run.result(package, variant) == "false", (package, variant)


def test_single_state_tests_are_what_the_rewrites_combine(scan, key):
    """The signature tests alone (not the definitions): plain is true only for v3; the OR test
    is true for v3 (first state matches) and for v4 (second state "0" matches): a real OR."""
    for mode in MODES:
        _, run = scan(mode)
        t = {v: run.tests[f"{P}:tst:1{i}"] for i, v in enumerate(VARIANTS, start=1)}
        assert t == {"plain": "true" if mode == "v3" else "false", "or": "true",
                     "pattern": "true", "and": "false"}, mode


# --------------------------------------------------------------------------- other vendors

@pytest.mark.parametrize("mode", ["v3", "v4"])
def test_another_vendors_signature(scan, other_key, mode):
    """A vulnerable openssl-libs signed by ANOTHER key. v3: oscap sees that key, so the plain
    criterion and both rewrites are false (not Red Hat's package: Red Hat's intent kept). v4:
    oscap sees "0", so the rewrites are true: they cannot tell a foreign v4-signed (or
    unsigned) package from Red Hat's; they err towards reporting the vulnerable version."""
    root, run = scan(mode, "sqlite", other_key)
    assert keyid_of(query_signatures(root, [VULNERABLE])[VULNERABLE]["RSAHEADER"]) == other_key[1]
    seen = run.items[VULNERABLE]["signature_keyid"]
    assert seen == (other_key[1] if mode == "v3" else "0")
    assert run.result(VULNERABLE, "plain") == "false"
    rewritten = "false" if mode == "v3" else "true"
    assert run.result(VULNERABLE, "or") == rewritten
    assert run.result(VULNERABLE, "pattern") == rewritten


# --------------------------------------------------------------------------- the feed itself

def test_rewritten_feed_is_valid_oval_5_10(feed):
    """Both rewrites pass `oscap oval validate` (OVAL 5.10 schemas: rpminfo_test allows any
    number of state elements, state_operator exists since 5.6)."""
    proc = subprocess.run(["oscap", "oval", "validate", str(feed)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
