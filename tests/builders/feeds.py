"""CVE OVAL feeds in each vendor's exact format, a real HTTP server to serve them, and plain
``oscap oval eval`` to judge roots with them. No pytest in here (usable from a shell).

The writers below are our own code; the *structure* they produce was read from the vendors'
generators and from published feeds (read, not copied):

Debian ``oval-definitions-<codename>.xml`` — sdelafond/debian-oval ``oval/definition/
generator.py`` + ``generate.py`` (the security team's generator, lxml, current since 2021-11):
  * one definition per (CVE, SOURCE package), key ``"CVE-2024-3094 xz-utils"`` = its title;
    id ``oval:org.debian:def:<md5(key) as a decimal integer>`` (note: ``org.debian``; only
    tests/objects/states use ``oval:org.debian.oval:{tst,obj,ste}:<n>``, numbered 1, 2, ...);
    class "vulnerability" ("patch" for DSA-* entries); no severity anywhere.
  * criteria: AND "Release section" [release test, OR "Architecture section" [AND
    "Architecture independent section" [uname "all architecture", dpkg test]]]; with several
    packages in one entry the dpkg criteria sit in an OR "Packages section" (the shape DSA
    entries and pre-2021 feeds have; ``split_packages=False`` writes that).
  * release: textfilecontent54 on /etc + debian_version, pattern ``(\\d+)\\.\\d``, instance 1,
    state subexpression equals "<major>"; uname_test without state; dpkginfo_object name =
    source package; dpkginfo_state evr datatype debian_evr_string "less than" "0:<fixed>"
    (epoch 0 added when missing); unfixed = fixed version "0" -> "0:0" (never true).
  * lxml writes test/object/state elements with a literal ``xmlns=`` attribute (last) instead
    of a prefix; generator product_name "Debian", schema_version 5.11.2.
Ubuntu ``com.ubuntu.<codename>.{cve,usn}.oval.xml`` — ubuntu-cve-tracker ``scripts/
oval_lib.py`` (kees/ubuntu-cve-tracker, 2024-02; older layout in mssalvatore/ubuntu-cve-
tracker-mirror incl. ``test/gold_oval_structure``), cross-checked with a published jammy USN
excerpt (fleetdm/fleet ``server/vulnerabilities/oval/parser_test.go``):
  * release: inventory definition ``oval:com.ubuntu.<codename>:def:100`` = family_test (unix)
    + textfilecontent54 on /etc/lsb-release ``^[\\s\\S]*DISTRIB_CODENAME=([a-z]+)$``; every
    other definition starts with ``extend_definition`` of it (applicability_check="true").
  * CVE feed (OvalGeneratorCVE, xml.etree + indent, no XML declaration, ASCII): definition id
    = CVE digits * 10**7, criterion tests +10 each; metadata order title, description,
    affected, reference, advisory (severity = priority, rights, public_date, <cve>); packages
    = dpkginfo_object whose name is var_ref to a constant_variable of binaries (var_check "at
    least one"); fixed -> state evr debian_evr_string "less than" "0:<fixed>"; unfixed -> the
    test has NO state (true when the package is present). Kernel packages: uname_test on the
    running kernel (os_release pattern) AND variable_test of a local_variable built from
    uname's os_release (regex_capture) "less than" the fix.
  * USN feed (OvalGeneratorUSN, text templates, prefixes ind/unix/linux): id = USN digits *
    10**6, tests "<id+n>0"; class "patch"; advisory from="security@ubuntu.com" with severity,
    issued, <cve> tags; same package/kernel shapes (variable_test check "all").
Red Hat OVAL v2 ``RHEL<N>/rhel-<N>.oval.xml`` — published RHSA definitions (excerpt in
fleetdm/fleet parser_test.go): generator "Red Hat OVAL Patch Definition Merger" schema 5.10;
``oval:com.redhat.rhsa:def:<YYYYNNNN>`` class "patch"; title "RHSA-Y:N: <title> (<Severity>)";
advisory from="secalert@redhat.com" with severity, rights, issued/updated, <cve>, <bugzilla>,
<affected_cpe_list>; criteria OR [rpmverifyfile "Red Hat Enterprise Linux must be installed"
(check "none satisfy"), AND [rpmverifyfile "Red Hat Enterprise Linux <N> is installed"
(name ^redhat-release, version ^<N>[^\\d]), OR [AND [rpminfo evr "less than" (arch pattern),
rpminfo signature_keyid "equals" <key>] per package]]].

Measured with oscap 1.3.7 on this machine: see tests/scan/test_feed_formats.py (its module
docstring lists what plain oscap decides for each format).
"""
from __future__ import annotations

import bz2
import email.utils
import fcntl
import gzip
import hashlib
import http.server
import json
import lzma
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence
from xml.sax.saxutils import escape as _esc, quoteattr as _qa

from tests.builders.imagebuild import cache_dir

NS_DEF = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
NS_COMMON = "http://oval.mitre.org/XMLSchema/oval-common-5"
NS_IND = "http://oval.mitre.org/XMLSchema/oval-definitions-5#independent"
NS_UNIX = "http://oval.mitre.org/XMLSchema/oval-definitions-5#unix"
NS_LINUX = "http://oval.mitre.org/XMLSchema/oval-definitions-5#linux"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_RES = "http://oval.mitre.org/XMLSchema/oval-results-5"

REDHAT_KEY_ID = "199e2f91fd431d51"   # "redhatrelease2", the key RHEL 8/9 packages are signed with
DEFAULT_TIMESTAMP = "2024-06-01T04:00:00"
RECIPE_VERSION = 1                   # bump when the large feed's bytes change


@dataclass(frozen=True)
class Advisory:
    """One vendor advisory, in the terms every feed writer understands.

    id: "CVE-2024-3094" (Debian, Ubuntu CVE feed), "USN-6000-1" (Ubuntu USN feed),
    "RHSA-2024:1234" (Red Hat), "DSA-5000-1" (Debian patch entry).
    packages: (name, fixed version or None = unfixed). Debian: SOURCE package names; Ubuntu:
    binary names; Red Hat: rpm names, fixed "1.2-3.el9" or "0:1.2-3.el9".
    severity: Red Hat severity (Critical/Important/Moderate/Low), Ubuntu priority
    (critical/high/medium/low/negligible/untriaged); Debian's feed has none (ignored).
    cves: CVEs referenced (RHSA/USN); a CVE-id advisory defaults to (id,).
    kernel: an Ubuntu definition decided by the RUNNING kernel (uname): cannot be evaluated
    offline.
    """
    id: str
    packages: tuple[tuple[str, str | None], ...]
    severity: str = ""
    title: str = ""
    cves: tuple[str, ...] = ()
    description: str = ""
    kernel: bool = False
    date: str = "2024-03-29"

    def __post_init__(self):
        object.__setattr__(self, "packages", tuple((n, v) for n, v in self.packages))
        if not self.cves and self.id.upper().startswith("CVE-"):
            object.__setattr__(self, "cves", (self.id,))
        else:
            object.__setattr__(self, "cves", tuple(self.cves))


def _digits(s: str) -> int:
    return int(re.sub(r"[^0-9]", "", s) or "0")


def _with_epoch(version: str) -> str:
    return version if ":" in version else f"0:{version}"


def _schema_location(*pairs: tuple[str, str], sep: str = " ") -> str:
    return sep.join(f"{ns} {xsd}" for ns, xsd in pairs)


# ============================================================================ Debian

DEBIAN_SCHEMA_LOCATION = _schema_location(
    (NS_IND, "independent-definitions-schema.xsd"), (NS_LINUX, "linux-definitions-schema.xsd"),
    (NS_UNIX, "unix-definitions-schema.xsd"), (NS_DEF, "oval-definitions-schema.xsd"),
    (NS_COMMON, "oval-common-schema.xsd"))
DEBIAN_RELEASE_PATTERN = r"(\d+)\.\d"


def debian_definition_id(key: str) -> str:
    """``oval:org.debian:def:<md5 of key as an integer>``; key is "CVE-… source" (or the id)."""
    return "oval:org.debian:def:%d" % int.from_bytes(hashlib.md5(key.encode()).digest(), "big")


class _DebianWriter:
    """Streams a Debian-format feed: definitions are written as they come, tests, objects and
    states are collected and written after them (as the generator's global lists are)."""
    NS = "oval:org.debian.oval"

    def __init__(self, out, major: str, timestamp: str):
        self.out, self.major = out, major
        self.tests: list[str] = []
        self.objects: list[str] = []
        self.states: list[str] = []
        self.n = {"tst": 0, "obj": 0, "ste": 0}
        self.obj_by_name: dict[str, str] = {}
        self.last_dpkg_state: tuple[str, str] | None = None
        self.release_test = self.arch_test = None
        out.write("<?xml version='1.0' encoding='UTF-8'?>\n"
                  f'<oval_definitions xmlns="{NS_DEF}" xmlns:ind-def="{NS_IND}" '
                  f'xmlns:linux-def="{NS_LINUX}" xmlns:oval="{NS_COMMON}" '
                  f'xmlns:oval-def="{NS_DEF}" xmlns:unix-def="{NS_UNIX}" xmlns:xsi="{NS_XSI}" '
                  f'xsi:schemaLocation="{DEBIAN_SCHEMA_LOCATION}">\n'
                  "  <generator>\n"
                  "    <oval:product_name>Debian</oval:product_name>\n"
                  "    <oval:schema_version>5.11.2</oval:schema_version>\n"
                  f"    <oval:timestamp>{timestamp}.188-04:00</oval:timestamp>\n"
                  "  </generator>\n  <definitions>\n")

    def _id(self, kind: str) -> str:
        self.n[kind] += 1
        return f"{self.NS}:{kind}:{self.n[kind]}"

    def _release(self) -> str:
        if self.release_test is None:
            self.release_test = self._id("tst")
            obj, ste = self._id("obj"), self._id("ste")
            self.objects.append(
                f'    <textfilecontent54_object id="{obj}" version="1" xmlns="{NS_IND}">\n'
                "      <path>/etc</path>\n      <filename>debian_version</filename>\n"
                f'      <pattern operation="pattern match">{DEBIAN_RELEASE_PATTERN}</pattern>\n'
                '      <instance datatype="int">1</instance>\n'
                "    </textfilecontent54_object>\n")
            self.states.append(
                f'    <textfilecontent54_state id="{ste}" version="1" xmlns="{NS_IND}">\n'
                f'      <subexpression operation="equals">{self.major}</subexpression>\n'
                "    </textfilecontent54_state>\n")
            self.tests.append(
                f'    <textfilecontent54_test id="{self.release_test}" version="1" check="all" '
                f'check_existence="at_least_one_exists" comment="Debian GNU/Linux {self.major} '
                f'is installed" xmlns="{NS_IND}">\n'
                f'      <object object_ref="{obj}"/>\n      <state state_ref="{ste}"/>\n'
                "    </textfilecontent54_test>\n")
        return self.release_test

    def _arch_all(self) -> str:
        if self.arch_test is None:
            self.arch_test = self._id("tst")
            obj = self._id("obj")
            self.objects.append(f'    <uname_object id="{obj}" version="1" xmlns="{NS_UNIX}"/>\n')
            self.tests.append(
                f'    <uname_test id="{self.arch_test}" version="1" check="all" '
                'check_existence="at_least_one_exists" comment="Installed architecture is all" '
                f'xmlns="{NS_UNIX}">\n      <object object_ref="{obj}"/>\n    </uname_test>\n')
        return self.arch_test

    def _dpkg_test(self, name: str, version: str) -> str:
        ref = self._id("tst")
        obj = self.obj_by_name.get(name)
        if obj is None:
            obj = self.obj_by_name[name] = self._id("obj")
            self.objects.append(f'    <dpkginfo_object id="{obj}" version="1" xmlns="{NS_LINUX}">\n'
                                f"      <name>{_esc(name)}</name>\n    </dpkginfo_object>\n")
        # The generator's state cache keeps only the last value per operation, so a state is
        # shared only by consecutive tests of the same version: reproduced, sizes stay real.
        if self.last_dpkg_state and self.last_dpkg_state[0] == version:
            ste = self.last_dpkg_state[1]
        else:
            ste = self._id("ste")
            self.last_dpkg_state = (version, ste)
            self.states.append(
                f'    <dpkginfo_state id="{ste}" version="1" xmlns="{NS_LINUX}">\n'
                f'      <evr datatype="debian_evr_string" operation="less than">'
                f"{_esc(_with_epoch(version))}</evr>\n    </dpkginfo_state>\n")
        comment = _qa(f"{name} is earlier than {version}")
        self.tests.append(
            f'    <dpkginfo_test id="{ref}" version="1" check="all" '
            f'check_existence="at_least_one_exists" comment={comment} xmlns="{NS_LINUX}">\n'
            f'      <object object_ref="{obj}"/>\n      <state state_ref="{ste}"/>\n'
            "    </dpkginfo_test>\n")
        return ref

    def definition(self, key: str, title: str, packages: Sequence[tuple[str, str]],
                   description: str, cves: Sequence[str], klass: str = "vulnerability",
                   date: str | None = None) -> str:
        did = debian_definition_id(key)
        release = self._release()
        arch = self._arch_all()
        refs = "".join(
            f'        <reference source="CVE" ref_id="{c}" '
            f'ref_url="https://cve.mitre.org/cgi-bin/cvename.cgi?name={c}"/>\n' for c in cves)
        i6 = " " * 12
        inner = [f'{i6}<criterion test_ref="{arch}" comment="all architecture"/>\n']
        dpkg = [(self._dpkg_test(n, v), f"{n} DPKG is earlier than {v}") for n, v in packages]
        if len(dpkg) > 1:
            inner.append(f'{i6}<criteria comment="Packages section" operator="OR">\n')
            inner += [f'{i6}  <criterion test_ref="{t}" comment={_qa(c)}/>\n' for t, c in dpkg]
            inner.append(f"{i6}</criteria>\n")
        else:
            inner += [f'{i6}<criterion test_ref="{t}" comment={_qa(c)}/>\n' for t, c in dpkg]
        date_el = f"          <date>{_esc(date)}</date>\n" if date else ""
        product = ", ".join(sorted({n for n, _ in packages}))
        self.out.write(
            f'    <definition id="{did}" version="1" class="{klass}">\n'
            "      <metadata>\n"
            f"        <title>{_esc(title)}</title>\n"
            '        <affected family="unix">\n'
            f"          <platform>Debian GNU/Linux {self.major}</platform>\n"
            f"          <product>{_esc(product)}</product>\n"
            "        </affected>\n"
            f"{refs}"
            f"        <description>{_esc(description)}</description>\n"
            f"        <debian>\n{date_el}          <moreinfo></moreinfo>\n        </debian>\n"
            "      </metadata>\n"
            '      <criteria comment="Release section" operator="AND">\n'
            f'        <criterion test_ref="{release}" comment="Debian {self.major} is installed"/>\n'
            '        <criteria comment="Architecture section" operator="OR">\n'
            '          <criteria comment="Architecture independent section" operator="AND">\n'
            + "".join(inner) +
            "          </criteria>\n        </criteria>\n      </criteria>\n    </definition>\n")
        return did

    def close(self) -> None:
        self.out.write("  </definitions>\n  <tests>\n")
        self.out.writelines(self.tests)
        self.out.write("  </tests>\n  <objects>\n")
        self.out.writelines(self.objects)
        self.out.write("  </objects>\n  <states>\n")
        self.out.writelines(self.states)
        self.out.write("  </states>\n</oval_definitions>\n")


class _Sink:
    def __init__(self):
        self.parts: list[str] = []

    def write(self, s: str) -> None:
        self.parts.append(s)

    def writelines(self, lines) -> None:
        self.parts.extend(lines)


def _debian_entries(advisories: Iterable[Advisory], split_packages: bool):
    """(key, title, [(source, version)], description, cves, class, date) as Debian emits."""
    entries = []
    for adv in advisories:
        pkgs = [(n, v if v else "0") for n, v in adv.packages]
        klass = "patch" if adv.id.upper().startswith(("DSA-", "DLA-")) else "vulnerability"
        if split_packages and klass == "vulnerability":
            for name, version in pkgs:
                key = f"{adv.id} {name}"
                entries.append((key, key, [(name, version)], adv.description, adv.cves, klass,
                                None))
        else:
            title = adv.title or adv.id
            entries.append((adv.id, title, pkgs, adv.description, adv.cves, klass,
                            adv.date if klass == "patch" else None))
    return sorted(entries, key=lambda e: e[0])


def debian_feed(codename: str, major: str, advisories: Iterable[Advisory], *,
                split_packages: bool = True, timestamp: str = DEFAULT_TIMESTAMP) -> bytes:
    """Debian's ``oval-definitions-<codename>.xml``: one definition per (CVE, source package)
    (split_packages, what Debian publishes since 2021-11), or one per advisory with an OR
    "Packages section" (split_packages=False). codename only names the file upstream."""
    sink = _Sink()
    w = _DebianWriter(sink, str(major), timestamp)
    for key, title, pkgs, descr, cves, klass, date in _debian_entries(advisories, split_packages):
        w.definition(key, title, pkgs, descr, cves, klass, date)
    w.close()
    return "".join(sink.parts).encode()


def debian_feed_name(codename: str) -> str:
    return f"oval-definitions-{codename}.xml"


# ============================================================================ Ubuntu

UBUNTU_SCHEMA_LOCATION = _schema_location(
    (NS_COMMON, "oval-common-schema.xsd"), (NS_DEF, "oval-definitions-schema.xsd"),
    (NS_IND, "independent-definitions-schema.xsd"), (NS_UNIX, "unix-definitions-schema.xsd"),
    (NS_LINUX, "linux-definitions-schema.xsd"), sep="   ")
UBUNTU_LSB_PATTERN = r"^[\s\S]*DISTRIB_CODENAME=([a-z]+)$"
UBUNTU_KERNEL_CAPTURE = r"^([\d|\.]+-\d+)[-|\w]+$"
UBUNTU_TERMS = ("Copyright (C) {year} Canonical LTD. All rights reserved. This program is free "
                "software: you can redistribute it and/or modify it under the terms of the GNU "
                "General Public License as published by the Free Software Foundation, version 3 "
                "of the License. This program is distributed in the hope that it will be useful, "
                "but WITHOUT ANY WARRANTY; without even the implied warranty of MERCHANTABILITY or "
                "FITNESS FOR A PARTICULAR PURPOSE.  See the GNU General Public License version 3 "
                "for more details. You should have received a copy of the GNU General Public "
                "License version 3 along with this program.  If not, see "
                "http://www.gnu.org/licenses/.")
UBUNTU_PRIORITIES = ("negligible", "low", "medium", "high", "critical")


def ubuntu_release_name(version: str) -> str:
    """"22.04" -> "Ubuntu 22.04 LTS" (even year, April), "23.10" -> "Ubuntu 23.10"."""
    year, month = version.split(".")[:2]
    lts = month == "04" and int(year) % 2 == 0
    return f"Ubuntu {version}{' LTS' if lts else ''}"


def ubuntu_feed_name(codename: str, variant: str = "cve") -> str:
    return f"com.ubuntu.{codename}.{variant}.oval.xml"


def ubuntu_definition_id(codename: str, advisory_id: str, variant: str = "cve") -> str:
    """CVE feed: CVE digits * 10**7; USN feed: USN digits * 10**6."""
    step = 10 ** 7 if variant == "cve" else 10 ** 6
    return f"oval:com.ubuntu.{codename}:def:{_digits(advisory_id) * step}"


def _kernel_regex(binaries: Sequence[str], fixed: str | None) -> str:
    """What oval_lib derives from kernel binary names (linux-image-5.15.0-100-generic ->
    ``5.15.0-\\d+(-generic)``); from the fixed version when no binary carries the ABI."""
    parts = re.findall(r"linux-image-[a-z]*-?([\d|\.]+-)\d+(-[\w|-]+)", " ".join(binaries))
    if parts:
        version = "".join(sorted({p[0] for p in parts}))
        flavours = "|".join(sorted({p[1] for p in parts}))
        return version + r"\d+(" + flavours + ")"
    m = re.match(r"([\d.]+)-", fixed or "")
    return (m.group(1) if m else r"[\d.]+") + r"-\d+(-generic)"


def _kernel_patched(fixed: str) -> str:
    m = re.search(r"([\d|\.]+-\d+)[\.|\d]+", fixed)
    return "0:" + (m.group(1) if m else fixed)


def _groups(packages: Sequence[tuple[str, str | None]]) -> list[tuple[str | None, list[str]]]:
    """Binaries grouped by fixed version (USN style; the CVE feed groups a source's binaries:
    binaries sharing a fixed version stand for one source package here), in first-seen order."""
    out: dict[str | None, list[str]] = {}
    for name, version in packages:
        out.setdefault(version, []).append(name)
    return list(out.items())


class _Ubuntu:
    def __init__(self, codename: str, version: str):
        self.codename, self.version = codename, version
        self.release_name = ubuntu_release_name(version)
        self.ns = f"oval:com.ubuntu.{codename}"
        self.release_id = _digits(version) * 10 ** 10
        self.defs: list[str] = []
        self.tests: list[str] = []
        self.objects: list[str] = []
        self.states: list[str] = []
        self.variables: list[str] = []

    def body(self, head: str) -> bytes:
        text = head
        for name in ("definitions", "tests", "objects", "states", "variables"):
            items = getattr(self, "defs" if name == "definitions" else name)
            if items:
                text += f"  <{name}>\n" + "".join(items) + f"  </{name}>\n"
        text += "</oval_definitions>\n"
        return text.encode("ascii", "xmlcharrefreplace")


def _ubuntu_cve_feed(codename: str, version: str, advisories: Iterable[Advisory],
                     timestamp: str) -> bytes:
    """OvalGeneratorCVE's layout (xml.etree written with indent: ``<e />`` for empty elements,
    attributes in insertion order, no XML declaration, ASCII with character references)."""
    u = _Ubuntu(codename, version)
    ns, rel = u.ns, u.release_name
    q = _qa
    u.defs.append(
        f'    <definition class="inventory" id="{ns}:def:100" version="1">\n'
        "      <metadata>\n"
        f"        <title>Check that {rel} ({codename}) is installed.</title>\n"
        "        <description />\n      </metadata>\n      <criteria>\n"
        f'        <criterion test_ref="{ns}:tst:100" comment="The host is part of the unix family." />\n'
        f'        <criterion test_ref="{ns}:tst:101" comment="The host is running Ubuntu {codename}" />\n'
        "      </criteria>\n    </definition>\n")
    u.tests += [
        f'    <ind-def:family_test id="{ns}:tst:100" check="at least one" '
        'check_existence="at_least_one_exists" version="1" comment="Is the host part of the unix '
        f'family?">\n      <ind-def:object object_ref="{ns}:obj:100" />\n'
        f'      <ind-def:state state_ref="{ns}:ste:100" />\n    </ind-def:family_test>\n',
        f'    <ind-def:textfilecontent54_test id="{ns}:tst:101" check="at least one" '
        f'check_existence="at_least_one_exists" version="1" comment="Is the host running Ubuntu '
        f'{codename}?">\n      <ind-def:object object_ref="{ns}:obj:101" />\n'
        f'      <ind-def:state state_ref="{ns}:ste:101" />\n    </ind-def:textfilecontent54_test>\n']
    kid = u.release_id   # the running-kernel uname object and its evr variable
    u.objects += [
        f'    <ind-def:family_object id="{ns}:obj:100" version="1" comment="The singleton family object." />\n',
        f'    <ind-def:textfilecontent54_object id="{ns}:obj:101" version="1" comment="The singleton '
        f'{codename} object.">\n      <ind-def:filepath>/etc/lsb-release</ind-def:filepath>\n'
        f'      <ind-def:pattern operation="pattern match">{_esc(UBUNTU_LSB_PATTERN)}</ind-def:pattern>\n'
        '      <ind-def:instance datatype="int">1</ind-def:instance>\n'
        "    </ind-def:textfilecontent54_object>\n",
        f'    <unix-def:uname_object id="{ns}:obj:{kid}" version="1" comment="The uname object." />\n']
    u.states += [
        f'    <ind-def:family_state id="{ns}:ste:100" version="1" comment="The singleton family state.">\n'
        "      <ind-def:family>unix</ind-def:family>\n    </ind-def:family_state>\n",
        f'    <ind-def:textfilecontent54_state id="{ns}:ste:101" version="1" comment="The singleton '
        f'{codename} state.">\n      <ind-def:subexpression>{codename}</ind-def:subexpression>\n'
        "    </ind-def:textfilecontent54_state>\n"]
    u.variables.append(
        f'    <local_variable id="{ns}:var:{kid}" version="1" datatype="debian_evr_string" '
        'comment="Kernel version in evr format">\n      <concat>\n'
        "        <literal_component>0:</literal_component>\n"
        f'        <regex_capture pattern="{UBUNTU_KERNEL_CAPTURE}">\n'
        f'          <object_component object_ref="{ns}:obj:{kid}" item_field="os_release" />\n'
        "        </regex_capture>\n      </concat>\n    </local_variable>\n")

    objects_by_bins: dict[tuple[str, ...], int] = {}
    for adv in sorted(advisories, key=lambda a: a.id):     # dict(sorted(...)) upstream
        base = _digits(adv.id) * 10 ** 7
        cur = base
        prio = (adv.severity or "medium").lower()
        crit: list[str] = []
        fixes: list[tuple[str, str]] = []
        for fixed, bins in _groups(adv.packages):
            src = bins[0]
            note_fixed = f" package in {codename} was vulnerable but has been fixed (note: '{fixed}')."
            note_open = f" package in {codename} is affected and needs fixing."
            if adv.kernel:
                regex = _kernel_regex(bins, fixed)
                run = cur
                u.tests.append(
                    f'    <unix-def:uname_test id="{ns}:tst:{run}" version="1" check="at least one" '
                    f'comment="Is kernel {_esc(src)} running?">\n'
                    f'      <unix-def:object object_ref="{ns}:obj:{kid}" />\n'
                    f'      <unix-def:state state_ref="{ns}:ste:{run}" />\n    </unix-def:uname_test>\n')
                u.states.append(
                    f'    <unix-def:uname_state id="{ns}:ste:{run}" version="1" comment="Regex match '
                    f'for kernel {_esc(src)}">\n      <unix-def:os_release operation="pattern match">'
                    f"{_esc(regex)}</unix-def:os_release>\n    </unix-def:uname_state>\n")
                cur += 10
                running = f'<criterion test_ref="{ns}:tst:{run}" comment="Is kernel {_esc(src)} running?" />'
                if fixed is None:
                    crit.append(f"          {running}\n")
                    continue
                ver = cur
                u.states.append(
                    f'    <ind-def:variable_state id="{ns}:ste:{ver}" version="1" comment="Kernel check">\n'
                    '      <ind-def:value datatype="debian_evr_string" operation="less than">'
                    f"{_esc(_kernel_patched(fixed))}</ind-def:value>\n    </ind-def:variable_state>\n")
                u.objects.append(
                    f'    <ind-def:variable_object id="{ns}:obj:{ver}" version="1">\n'
                    f"      <ind-def:var_ref>{ns}:var:{kid}</ind-def:var_ref>\n"
                    "    </ind-def:variable_object>\n")
                u.tests.append(
                    f'    <ind-def:variable_test id="{ns}:tst:{ver}" version="1" '
                    'check_existence="at_least_one_exists" check="at least one" comment="Kernel '
                    f'{_esc(src)} version comparison">\n'
                    f'      <ind-def:object object_ref="{ns}:obj:{ver}" />\n'
                    f'      <ind-def:state state_ref="{ns}:ste:{ver}" />\n    </ind-def:variable_test>\n')
                crit.append('          <criteria operator="AND">\n'
                            f"            {running}\n"
                            f'            <criterion test_ref="{ns}:tst:{ver}" comment={q(src + note_fixed)} />\n'
                            "          </criteria>\n")
                fixes.append((src, fixed))
                cur += 10
                continue
            key = tuple(bins)
            kw = "binaries" if len(bins) > 1 else "binary"
            obj_note = f"The '{src}' package {kw}"
            if key not in objects_by_bins:
                objects_by_bins[key] = cur
                u.variables.append(
                    f'    <constant_variable id="{ns}:var:{cur}" version="1" datatype="string" '
                    f"comment={q(obj_note)}>\n"
                    + "".join(f"      <value>{_esc(b)}</value>\n" for b in bins)
                    + "    </constant_variable>\n")
                u.objects.append(
                    f'    <linux-def:dpkginfo_object id="{ns}:obj:{cur}" version="1" comment={q(obj_note)}>\n'
                    f'      <linux-def:name var_ref="{ns}:var:{cur}" var_check="at least one" />\n'
                    "    </linux-def:dpkginfo_object>\n")
            obj = objects_by_bins[key]
            if fixed is None:
                test_note = f"Does the '{src}' package exist?"
                state = ""
                crit.append(f'          <criterion test_ref="{ns}:tst:{cur}" comment={q(src + note_open)} />\n')
            else:
                test_note = f"Does the '{src}' package exist and is the version less than '{fixed}'?"
                u.states.append(
                    f'    <linux-def:dpkginfo_state id="{ns}:ste:{cur}" version="1" '
                    f"comment={q(f'The package version is less than {chr(39)}{fixed}{chr(39)}')}>\n"
                    '      <linux-def:evr datatype="debian_evr_string" operation="less than">'
                    f"{_esc(_with_epoch(fixed))}</linux-def:evr>\n    </linux-def:dpkginfo_state>\n")
                state = f'      <linux-def:state state_ref="{ns}:ste:{cur}" />\n'
                crit.append(f'          <criterion test_ref="{ns}:tst:{cur}" comment={q(src + note_fixed)} />\n')
                fixes += [(b, fixed) for b in bins]
            u.tests.append(
                f'    <linux-def:dpkginfo_test id="{ns}:tst:{cur}" version="1" '
                f'check_existence="at_least_one_exists" check="at least one" comment={q(test_note)}>\n'
                f'      <linux-def:object object_ref="{ns}:obj:{obj}" />\n{state}'
                "    </linux-def:dpkginfo_test>\n")
            cur += 10
        descr = (adv.description or f"{adv.id} description.").replace("\n", "")
        if fixes:   # appended after the newlines are stripped from the CVE text, as upstream
            descr += ("\n\n    Update Instructions:\n\n    Run `sudo pro fix " + adv.id + "` to fix the "
                      "vulnerability. The problem can be corrected\n    by updating your system to "
                      "the following package versions:\n\n"
                      + "".join(f"{n} - {v}\n" for n, v in fixes) + "No subscription required")
        year = adv.date.split("-")[0]
        cve_tags = "".join(
            f'        <cve href="https://ubuntu.com/security/{c}" priority="{prio}" '
            f'public="{adv.date.replace("-", "")}">{c}</cve>\n' for c in adv.cves)
        u.defs.append(
            f'    <definition class="vulnerability" id="{ns}:def:{base}" version="1">\n'
            "      <metadata>\n"
            f"        <title>{_esc(adv.id)} on {rel} ({codename}) - {prio}</title>\n"
            f"        <description>{_esc(descr)}</description>\n"
            f'        <affected family="unix">\n          <platform>{rel}</platform>\n        </affected>\n'
            f'        <reference source="CVE" ref_id="{_esc(adv.id)}" '
            f'ref_url="https://cve.mitre.org/cgi-bin/cvename.cgi?name={_esc(adv.id)}" />\n'
            "        <advisory>\n"
            f"          <severity>{prio.capitalize()}</severity>\n"
            f"          <rights>Copyright (C) {year} Canonical Ltd.</rights>\n"
            f"          <public_date>{adv.date} 12:00:00 UTC</public_date>\n"
            + cve_tags.replace("        <cve", "          <cve") +
            "        </advisory>\n      </metadata>\n      <criteria>\n"
            f'        <extend_definition definition_ref="{ns}:def:100" comment="{rel} is installed." '
            'applicability_check="true" />\n'
            '        <criteria operator="OR">\n' + "".join(crit) +
            "        </criteria>\n      </criteria>\n    </definition>\n")
    head = (f'<oval_definitions xmlns="{NS_DEF}" xmlns:ind-def="{NS_IND}" xmlns:oval="{NS_COMMON}" '
            f'xmlns:unix-def="{NS_UNIX}" xmlns:linux-def="{NS_LINUX}" xmlns:xsi="{NS_XSI}" '
            f'xsi:schemaLocation="{UBUNTU_SCHEMA_LOCATION}">\n'
            "  <generator>\n"
            "    <oval:product_name>Canonical CVE OVAL Generator</oval:product_name>\n"
            "    <oval:product_version>2</oval:product_version>\n"
            "    <oval:schema_version>5.11.1</oval:schema_version>\n"
            f"    <oval:timestamp>{timestamp}</oval:timestamp>\n  </generator>\n")
    return u.body(head)


def _ubuntu_usn_feed(codename: str, version: str, advisories: Iterable[Advisory],
                     timestamp: str) -> bytes:
    """OvalGeneratorUSN's layout (text templates; prefixes ind, unix, linux)."""
    u = _Ubuntu(codename, version)
    ns, rel = u.ns, u.release_name
    product = "Long Term Support" if rel.endswith("LTS") else "Interim"
    q = _qa
    u.defs.append(
        f'    <definition class="inventory" id="{ns}:def:100" version="1">\n'
        "      <metadata>\n"
        f"        <title>Check that {rel} ({codename}) is installed.</title>\n"
        "        <description></description>\n      </metadata>\n      <criteria>\n"
        f'        <criterion test_ref="{ns}:tst:100" comment="The host is part of the unix family." />\n'
        f'        <criterion test_ref="{ns}:tst:101" comment="The host is running {rel} ({codename})." />\n'
        "      </criteria>\n    </definition>\n")
    u.tests += [
        f'    <ind:family_test id="{ns}:tst:100" check="at least one" check_existence="at_least_one_exists" '
        f'version="1" comment="Is the host part of the unix family?">\n'
        f'      <ind:object object_ref="{ns}:obj:100"/>\n      <ind:state state_ref="{ns}:ste:100"/>\n'
        "    </ind:family_test>\n",
        f'    <ind:textfilecontent54_test check="at least one" check_existence="at_least_one_exists" '
        f'id="{ns}:tst:101" version="1" comment="Is the host running Ubuntu {codename}?">\n'
        f'      <ind:object object_ref="{ns}:obj:101" />\n      <ind:state state_ref="{ns}:ste:101" />\n'
        "    </ind:textfilecontent54_test>\n"]
    u.objects += [
        f'    <ind:family_object id="{ns}:obj:100" version="1" comment="The singleton family object."/>\n',
        f'    <ind:textfilecontent54_object id="{ns}:obj:101" version="1">\n'
        '      <ind:filepath datatype="string">/etc/lsb-release</ind:filepath>\n'
        f'      <ind:pattern operation="pattern match">{_esc(UBUNTU_LSB_PATTERN)}</ind:pattern>\n'
        '      <ind:instance datatype="int">1</ind:instance>\n    </ind:textfilecontent54_object>\n']
    u.states += [
        f'    <ind:family_state id="{ns}:ste:100" version="1" comment="The singleton family object.">\n'
        "      <ind:family>unix</ind:family>\n    </ind:family_state>\n",
        f'    <ind:textfilecontent54_state id="{ns}:ste:101" version="1" comment="{rel}">\n'
        f'      <ind:subexpression datatype="string" operation="equals">{codename}</ind:subexpression>\n'
        "    </ind:textfilecontent54_state>\n"]
    for adv in sorted(advisories, key=lambda a: _digits(a.id)):
        base = _digits(adv.id) * 10 ** 6
        crit: list[str] = []
        fixes = []
        n = 0
        for fixed, bins in sorted(_groups(adv.packages), key=lambda g: g[0] or ""):
            if fixed is None:
                raise ValueError(f"{adv.id}: a USN only lists fixed packages ({bins})")
            fixes += [(b, fixed) for b in bins]
            tid = f"{base + n}0"
            if adv.kernel:
                regex = _kernel_regex(bins, fixed)
                vid = f"{base + n + 1}0"
                n += 2
                u.tests += [
                    f'    <unix:uname_test check="at least one" comment="Is kernel {_esc(regex)} currently '
                    f'running?" id="{ns}:tst:{tid}" version="1">\n'
                    f'      <unix:object object_ref="{ns}:obj:{tid}"/>\n'
                    f'      <unix:state state_ref="{ns}:ste:{tid}"/>\n    </unix:uname_test>\n',
                    f'    <ind:variable_test id="{ns}:tst:{vid}" version="1" check="all" '
                    'check_existence="all_exist" comment="kernel version comparison">\n'
                    f'      <ind:object object_ref="{ns}:obj:{vid}"/>\n'
                    f'      <ind:state state_ref="{ns}:ste:{vid}"/>\n    </ind:variable_test>\n']
                u.objects += [
                    f'    <unix:uname_object id="{ns}:obj:{tid}" version="1"/>\n',
                    f'    <ind:variable_object id="{ns}:obj:{vid}" version="1">\n'
                    f"      <ind:var_ref>{ns}:var:{tid}</ind:var_ref>\n    </ind:variable_object>\n"]
                u.states += [
                    f'    <unix:uname_state id="{ns}:ste:{tid}" version="1">\n'
                    f'      <unix:os_release operation="pattern match">{_esc(regex)}</unix:os_release>\n'
                    "    </unix:uname_state>\n",
                    f'    <ind:variable_state id="{ns}:ste:{vid}" version="1">\n'
                    '      <ind:value datatype="debian_evr_string" operation="less than">'
                    f"{_esc(_kernel_patched(fixed))}</ind:value>\n    </ind:variable_state>\n"]
                u.variables.append(
                    f'    <local_variable id="{ns}:var:{tid}" datatype="debian_evr_string" version="1" '
                    'comment="kernel version in evr format">\n      <concat>\n'
                    "        <literal_component>0:</literal_component>\n"
                    f'        <regex_capture pattern="{UBUNTU_KERNEL_CAPTURE}">\n'
                    f'          <object_component object_ref="{ns}:obj:{tid}" item_field="os_release"  />\n'
                    "        </regex_capture>\n      </concat>\n    </local_variable>\n")
                crit.append('            <criteria operator="AND">\n'
                            f'                <criterion test_ref="{ns}:tst:{tid}" comment="{product}" />\n'
                            f'                <criterion test_ref="{ns}:tst:{vid}" comment="{product}" />\n'
                            "            </criteria>\n")
                continue
            n += 1
            u.tests.append(
                f'    <linux:dpkginfo_test id="{ns}:tst:{tid}" version="1" check_existence="at_least_one_exists" '
                f'check="at least one" comment="{product}">\n'
                f'      <linux:object object_ref="{ns}:obj:{tid}"/>\n'
                f'      <linux:state state_ref="{ns}:ste:{tid}"/>\n    </linux:dpkginfo_test>\n')
            u.objects.append(
                f'    <linux:dpkginfo_object id="{ns}:obj:{tid}" version="1" comment="{product}">\n'
                f'      <linux:name var_ref="{ns}:var:{tid}" var_check="at least one" />\n'
                "    </linux:dpkginfo_object>\n")
            u.states.append(
                f'    <linux:dpkginfo_state id="{ns}:ste:{tid}" version="1" comment="{product}">\n'
                '      <linux:evr datatype="debian_evr_string" operation="less than">'
                f"{_esc(_with_epoch(fixed))}</linux:evr>\n    </linux:dpkginfo_state>\n")
            u.variables.append(
                f'    <constant_variable id="{ns}:var:{tid}" version="1" datatype="string" comment="{product}">\n'
                + "".join(f"      <value>{_esc(b)}</value>\n" for b in bins)
                + "    </constant_variable>\n")
            crit.append(f'            <criterion test_ref="{ns}:tst:{tid}" comment="{product}" />\n')
        prio = (adv.severity or "medium").lower()
        usn = adv.id if adv.id.upper().startswith("USN-") else f"USN-{adv.id}"
        descr = (adv.description or f"{adv.title or usn}.") + (
            "  Update Instructions:  Run `sudo pro fix " + usn + "` to fix the vulnerability. The "
            "problem can be corrected by updating your system to the following package versions:  "
            + "  ".join(f"{b} - {v}" for b, v in fixes) + "  No subscription required")
        refs = "".join(f'        <reference source="CVE" ref_id="{c}" ref_url="https://ubuntu.com/security/{c}"/>\n'
                       for c in adv.cves)
        tags = "".join(f'          <cve href="https://ubuntu.com/security/{c}" priority="{prio}" '
                       f'public="{adv.date.replace("-", "")}">{c}</cve>\n' for c in adv.cves)
        u.defs.append(
            f'    <definition id="{ns}:def:{base}" version="1" class="patch">\n'
            "      <metadata>\n"
            f"        <title>{_esc(usn)} -- {_esc(adv.title or 'security update')}</title>\n"
            f'        <affected family="unix">\n          <platform>{rel}</platform>\n        </affected>\n'
            f'        <reference source="USN" ref_id="{_esc(usn)}" ref_url="https://ubuntu.com/security/notices/{_esc(usn)}"/>\n'
            f"{refs}"
            f"        <description>{_esc(descr)}</description>\n"
            '        <advisory from="security@ubuntu.com">\n'
            f"          <severity>{prio.capitalize()}</severity>\n"
            f'          <issued date="{adv.date}"/>\n{tags}'
            "        </advisory>\n      </metadata>\n      <criteria>\n"
            f'        <extend_definition definition_ref="{ns}:def:100" comment="{rel} ({codename}) is installed." '
            'applicability_check="true" />\n'
            '        <criteria operator="OR">\n' + "".join(crit) +
            "        </criteria>\n      </criteria>\n    </definition>\n")
    year = timestamp[:4]
    head = (f'<oval_definitions\n    xmlns="{NS_DEF}"\n    xmlns:ind="{NS_IND}"\n    xmlns:oval="{NS_COMMON}"\n'
            f'    xmlns:unix="{NS_UNIX}"\n    xmlns:linux="{NS_LINUX}"\n'
            f'    xmlns:xsi="{NS_XSI}" xsi:schemaLocation="{UBUNTU_SCHEMA_LOCATION}">\n\n'
            "  <generator>\n"
            "    <oval:product_name>Canonical USN OVAL Generator</oval:product_name>\n"
            "    <oval:product_version>1</oval:product_version>\n"
            "    <oval:schema_version>5.11.1</oval:schema_version>\n"
            f"    <oval:timestamp>{timestamp}</oval:timestamp>\n"
            f"    <terms_of_use>{UBUNTU_TERMS.format(year=year)}</terms_of_use>\n  </generator>\n")
    return u.body(head)


def ubuntu_feed(codename: str, version: str, advisories: Iterable[Advisory], *,
                variant: str = "cve", timestamp: str = DEFAULT_TIMESTAMP) -> bytes:
    """``com.ubuntu.<codename>.<variant>.oval.xml`` (the dpkg variant, not the ``oci.`` one).
    variant "cve": one definition per CVE, unfixed packages tested for presence; "usn": one
    "patch" definition per USN (fixed packages only)."""
    if variant == "cve":
        return _ubuntu_cve_feed(codename, version, advisories, timestamp)
    if variant == "usn":
        return _ubuntu_usn_feed(codename, version, advisories, timestamp)
    raise ValueError(f"variant must be 'cve' or 'usn', not {variant!r}")


# ============================================================================ Red Hat

REDHAT_SCHEMA_LOCATION = _schema_location(
    (NS_COMMON, "oval-common-schema.xsd"), (NS_DEF, "oval-definitions-schema.xsd"),
    (NS_UNIX, "unix-definitions-schema.xsd"), (NS_LINUX, "linux-definitions-schema.xsd"))
REDHAT_ARCHES = "aarch64|i686|noarch|ppc64le|s390x|x86_64"
#: Ids of the release checks every RHSA shares (created by an early 2022 advisory upstream).
_RH_SHARED = {"must_tst": "20221728048", "is_tst": "20221728047", "file_obj": "20221728024",
              "must_ste": "20221728005", "is_ste": "20221728004", "sig_ste": "20221728002"}


def redhat_definition_id(advisory_id: str) -> str:
    """RHSA-2024:1234 -> oval:com.redhat.rhsa:def:20241234 (number padded to 4 digits)."""
    m = re.match(r"RH[SBE]A-(\d{4}):(\d+)", advisory_id)
    if not m:
        raise ValueError(f"not a Red Hat advisory id: {advisory_id!r}")
    return f"oval:com.redhat.rhsa:def:{m.group(1)}{int(m.group(2)):04d}"


def redhat_feed_name(major: str) -> str:
    return f"RHEL{major}/rhel-{major}.oval.xml"


def redhat_feed(major: str, advisories: Iterable[Advisory], *, key_id: str = REDHAT_KEY_ID,
                arch: str = REDHAT_ARCHES, timestamp: str = DEFAULT_TIMESTAMP,
                version: int = 635) -> bytes:
    """Red Hat OVAL v2 ``rhel-<major>.oval.xml`` with RHSA definitions. arch is the pattern
    of the evr states (real feeds list the advisory's arches; the default also matches the
    noarch rpms tests build). Unfixed packages do not exist in RHSA definitions (ValueError)."""
    ns = "oval:com.redhat.rhsa"
    v = version
    sh = {k: f"{ns}:{'tst' if k.endswith('tst') else 'obj' if k.endswith('obj') else 'ste'}:{i}"
          for k, i in _RH_SHARED.items()}
    defs, tests, objects, states = [], [], [], []
    tests += [
        f'\t\t<red-def:rpmverifyfile_test check="none satisfy" comment="Red Hat Enterprise Linux must be installed" '
        f'id="{sh["must_tst"]}" version="{v}">\n\t\t\t<red-def:object object_ref="{sh["file_obj"]}"/>\n'
        f'\t\t\t<red-def:state state_ref="{sh["must_ste"]}"/>\n\t\t</red-def:rpmverifyfile_test>\n',
        f'\t\t<red-def:rpmverifyfile_test check="at least one" comment="Red Hat Enterprise Linux {major} is installed" '
        f'id="{sh["is_tst"]}" version="{v}">\n\t\t\t<red-def:object object_ref="{sh["file_obj"]}"/>\n'
        f'\t\t\t<red-def:state state_ref="{sh["is_ste"]}"/>\n\t\t</red-def:rpmverifyfile_test>\n']
    objects.append(
        f'\t\t<red-def:rpmverifyfile_object id="{sh["file_obj"]}" version="{v}">\n'
        '\t\t\t<red-def:behaviors noconfigfiles="true" noghostfiles="true" nogroup="true" nolinkto="true" '
        'nomd5="true" nomode="true" nomtime="true" nordev="true" nosize="true" nouser="true"/>\n'
        '\t\t\t<red-def:name operation="pattern match"/>\n\t\t\t<red-def:epoch operation="pattern match"/>\n'
        '\t\t\t<red-def:version operation="pattern match"/>\n\t\t\t<red-def:release operation="pattern match"/>\n'
        '\t\t\t<red-def:arch operation="pattern match"/>\n'
        "\t\t\t<red-def:filepath>/etc/redhat-release</red-def:filepath>\n\t\t</red-def:rpmverifyfile_object>\n")
    states += [
        f'\t\t<red-def:rpmverifyfile_state id="{sh["must_ste"]}" version="{v}">\n'
        '\t\t\t<red-def:name operation="pattern match">^redhat-release</red-def:name>\n'
        "\t\t</red-def:rpmverifyfile_state>\n",
        f'\t\t<red-def:rpmverifyfile_state id="{sh["is_ste"]}" version="{v}">\n'
        '\t\t\t<red-def:name operation="pattern match">^redhat-release</red-def:name>\n'
        f'\t\t\t<red-def:version operation="pattern match">^{major}[^\\d]</red-def:version>\n'
        "\t\t</red-def:rpmverifyfile_state>\n",
        f'\t\t<red-def:rpminfo_state id="{sh["sig_ste"]}" version="{v}">\n'
        f'\t\t\t<red-def:signature_keyid operation="equals">{_esc(key_id)}</red-def:signature_keyid>\n'
        "\t\t</red-def:rpminfo_state>\n"]
    objects_by_name: dict[str, str] = {}
    for adv in sorted(advisories, key=lambda a: redhat_definition_id(a.id)):
        did = redhat_definition_id(adv.id)
        num = did.rsplit(":", 1)[1]
        seq = 0
        pkg_crit = []
        evr_states: dict[str, str] = {}
        for name, fixed in adv.packages:
            if fixed is None:
                raise ValueError(f"{adv.id}: RHSA definitions only hold fixed packages ({name})")
            evr = _with_epoch(fixed)
            if name not in objects_by_name:
                objects_by_name[name] = f"{ns}:obj:{num}{len(objects_by_name) + 1:03d}"
                objects.append(f'\t\t<red-def:rpminfo_object id="{objects_by_name[name]}" version="{v}">\n'
                               f"\t\t\t<red-def:name>{_esc(name)}</red-def:name>\n\t\t</red-def:rpminfo_object>\n")
            obj = objects_by_name[name]
            if evr not in evr_states:
                evr_states[evr] = f"{ns}:ste:{num}{len(evr_states) + 1:03d}"
                states.append(
                    f'\t\t<red-def:rpminfo_state id="{evr_states[evr]}" version="{v}">\n'
                    f'\t\t\t<red-def:arch datatype="string" operation="pattern match">{_esc(arch)}</red-def:arch>\n'
                    f'\t\t\t<red-def:evr datatype="evr_string" operation="less than">{_esc(evr)}</red-def:evr>\n'
                    "\t\t</red-def:rpminfo_state>\n")
            t_evr, t_sig = f"{ns}:tst:{num}{seq + 1:03d}", f"{ns}:tst:{num}{seq + 2:03d}"
            seq += 2
            c_evr, c_sig = f"{name} is earlier than {evr}", f"{name} is signed with Red Hat redhatrelease2 key"
            tests += [
                f'\t\t<red-def:rpminfo_test check="at least one" comment={_qa(c_evr)} id="{t_evr}" version="{v}">\n'
                f'\t\t\t<red-def:object object_ref="{obj}"/>\n\t\t\t<red-def:state state_ref="{evr_states[evr]}"/>\n'
                "\t\t</red-def:rpminfo_test>\n",
                f'\t\t<red-def:rpminfo_test check="at least one" comment={_qa(c_sig)} id="{t_sig}" version="{v}">\n'
                f'\t\t\t<red-def:object object_ref="{obj}"/>\n\t\t\t<red-def:state state_ref="{sh["sig_ste"]}"/>\n'
                "\t\t</red-def:rpminfo_test>\n"]
            pkg_crit.append(
                '\t\t\t\t\t\t<criteria operator="AND">\n'
                f'\t\t\t\t\t\t\t<criterion comment={_qa(c_evr)} test_ref="{t_evr}"/>\n'
                f'\t\t\t\t\t\t\t<criterion comment={_qa(c_sig)} test_ref="{t_sig}"/>\n'
                "\t\t\t\t\t\t</criteria>\n")
        sev = (adv.severity or "Moderate").capitalize()
        year = adv.id[5:9]
        title = f"{adv.id}: {adv.title or 'security update'} ({sev})"
        refs = "".join(f'\t\t\t\t<reference ref_id="{c}" ref_url="https://access.redhat.com/security/cve/{c}" source="CVE"/>\n'
                       for c in adv.cves)
        cves = "".join(
            f'\t\t\t\t\t<cve cvss3="7.5/CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H" cwe="CWE-400" '
            f'href="https://access.redhat.com/security/cve/{c}" impact="{sev.lower()}" '
            f'public="{adv.date.replace("-", "")}">{c}</cve>\n' for c in adv.cves)
        bugs = "".join(
            f'\t\t\t\t\t<bugzilla href="https://bugzilla.redhat.com/{2200000 + i}" id="{2200000 + i}">'
            f"{c} {_esc(adv.title or 'security flaw')}</bugzilla>\n" for i, c in enumerate(adv.cves))
        cpes = "".join(f"\t\t\t\t\t\t<cpe>{c}</cpe>\n" for c in (
            f"cpe:/a:redhat:enterprise_linux:{major}", f"cpe:/a:redhat:enterprise_linux:{major}::appstream",
            f"cpe:/o:redhat:enterprise_linux:{major}", f"cpe:/o:redhat:enterprise_linux:{major}::baseos"))
        defs.append(
            f'\t\t<definition class="patch" id="{did}" version="{v}">\n'
            "\t\t\t<metadata>\n"
            f"\t\t\t\t<title>{_esc(title)}</title>\n"
            f'\t\t\t\t<affected family="unix">\n\t\t\t\t\t<platform>Red Hat Enterprise Linux {major}</platform>\n'
            "\t\t\t\t</affected>\n"
            f'\t\t\t\t<reference ref_id="{adv.id}" ref_url="https://access.redhat.com/errata/{adv.id}" source="RHSA"/>\n'
            f"{refs}"
            f"\t\t\t\t<description>{_esc(adv.description)}</description>\n"
            '\t\t\t\t<advisory from="secalert@redhat.com">\n'
            f"\t\t\t\t\t<severity>{sev}</severity>\n"
            f"\t\t\t\t\t<rights>Copyright {year} Red Hat, Inc.</rights>\n"
            f'\t\t\t\t\t<issued date="{adv.date}"/>\n\t\t\t\t\t<updated date="{adv.date}"/>\n'
            f"{cves}{bugs}"
            f"\t\t\t\t\t<affected_cpe_list>\n{cpes}\t\t\t\t\t</affected_cpe_list>\n"
            "\t\t\t\t</advisory>\n\t\t\t</metadata>\n"
            '\t\t\t<criteria operator="OR">\n'
            f'\t\t\t\t<criterion comment="Red Hat Enterprise Linux must be installed" test_ref="{sh["must_tst"]}"/>\n'
            '\t\t\t\t<criteria operator="AND">\n'
            f'\t\t\t\t\t<criterion comment="Red Hat Enterprise Linux {major} is installed" test_ref="{sh["is_tst"]}"/>\n'
            '\t\t\t\t\t<criteria operator="OR">\n' + "".join(pkg_crit) +
            "\t\t\t\t\t</criteria>\n\t\t\t\t</criteria>\n\t\t\t</criteria>\n\t\t</definition>\n")
    content_version = int(time.mktime(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%S")))
    text = ('<?xml version="1.0" encoding="utf-8"?>\n'
            f'<oval_definitions xmlns="{NS_DEF}" xmlns:oval="{NS_COMMON}" xmlns:unix-def="{NS_UNIX}" '
            f'xmlns:red-def="{NS_LINUX}" xmlns:ind-def="{NS_IND}" xmlns:xsi="{NS_XSI}" '
            f'xsi:schemaLocation="{REDHAT_SCHEMA_LOCATION}">\n'
            "\t<generator>\n"
            "\t\t<oval:product_name>Red Hat OVAL Patch Definition Merger</oval:product_name>\n"
            "\t\t<oval:product_version>3</oval:product_version>\n"
            "\t\t<oval:schema_version>5.10</oval:schema_version>\n"
            f"\t\t<oval:timestamp>{timestamp}</oval:timestamp>\n"
            f"\t\t<oval:content_version>{content_version}</oval:content_version>\n\t</generator>\n")
    for name, items in (("definitions", defs), ("tests", tests), ("objects", objects), ("states", states)):
        if items:
            text += f"\t<{name}>\n" + "".join(items) + f"\t</{name}>\n"
    return (text + "</oval_definitions>\n").encode()


# ============================================================================ helpers

def compress(data: bytes, kind: str) -> bytes:
    """kind "bz2" (how Debian, Ubuntu and Red Hat publish), "xz", "gz", or "" (identity)."""
    if kind in ("", None, "none"):
        return data
    if kind == "bz2":
        return bz2.compress(data, 9)
    if kind == "xz":
        return lzma.compress(data, preset=6)
    if kind == "gz":
        return gzip.compress(data, 6, mtime=0)
    raise ValueError(f"unknown compression {kind!r}")


def definition_ids(feed: bytes) -> dict[str, list[str]]:
    """title -> [definition ids] of a feed (titles: "CVE-… src" for Debian, "CVE-… on Ubuntu…"
    for Ubuntu CVE, "USN-… -- …", "RHSA-…: …"); also every reference ref_id -> ids."""
    from lxml import etree
    out: dict[str, list[str]] = {}
    root = etree.fromstring(feed, etree.XMLParser(huge_tree=True))
    for d in root.iterfind(f"{{{NS_DEF}}}definitions/{{{NS_DEF}}}definition"):
        keys = {d.findtext(f"{{{NS_DEF}}}metadata/{{{NS_DEF}}}title", "")}
        keys |= {r.get("ref_id") for r in d.iterfind(f"{{{NS_DEF}}}metadata/{{{NS_DEF}}}reference")}
        for k in keys:
            out.setdefault(k, []).append(d.get("id"))
    return out


def tests_by_comment(feed: bytes, comment_regex: str) -> list[str]:
    """Ids of tests whose comment matches (e.g. "zlib is earlier than", "Installed architecture")."""
    from lxml import etree
    root = etree.fromstring(feed, etree.XMLParser(huge_tree=True))
    rx = re.compile(comment_regex)
    return [t.get("id") for t in root.iterfind(f"{{{NS_DEF}}}tests/*") if rx.search(t.get("comment", ""))]


#: The first name of tests_by_comment (tests/scan/test_cve.py uses it). Not a pytest test,
#: even when imported by name into a test module.
test_ids = tests_by_comment
test_ids.__test__ = False


# ---------------------------------------------------------------------------- plain oscap

@dataclass
class OvalRun:
    """Plain ``oscap oval eval`` of a feed: rc, definition id -> result, test id -> result."""
    rc: int
    definitions: dict[str, str]
    tests: dict[str, str]
    stdout: str
    stderr: str
    seconds: float


def oscap_env(work: Path, root: str | os.PathLike, *, rpm_dbpath: str | None = None) -> dict[str, str]:
    """The environment DESIGN.md asks for: OSCAP_PROBE_ROOT, an APT_CONFIG ignoring the host's
    apt.conf.d, HOME = a private dir (its .rpmmacros names the rpmdb when rpm_dbpath is given)."""
    work.mkdir(parents=True, exist_ok=True)
    parts = work / "apt.conf.d"
    parts.mkdir(exist_ok=True)
    apt_conf = work / "apt.conf"
    apt_conf.write_text(f'Dir::Etc::parts "{parts}";\nDir::Etc::main "/dev/null";\n')
    home = work / "home"
    home.mkdir(exist_ok=True)
    if rpm_dbpath:
        (home / ".rpmmacros").write_text(f"%_dbpath {rpm_dbpath}\n")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    env.update(HOME=str(home), OSCAP_PROBE_ROOT=str(root), APT_CONFIG=str(apt_conf))
    return env


def plain_oval_eval(feed: str | os.PathLike, root: str | os.PathLike, work: str | os.PathLike, *,
                    rpm_dbpath: str | None = None, skip_valid: bool = False,
                    timeout: float = 120) -> OvalRun:
    """``oscap oval eval [--skip-valid] --results R.xml FEED`` against root, by hand."""
    from lxml import etree
    work = Path(work)
    results = work / "results.xml"
    cmd = ["oscap", "oval", "eval"] + (["--skip-valid"] if skip_valid else []) + [
        "--results", str(results), str(feed)]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=oscap_env(work, root, rpm_dbpath=rpm_dbpath), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    defs, tests = {}, {}
    if results.exists():
        tree = etree.parse(str(results), etree.XMLParser(huge_tree=True))
        r = f"{{{NS_RES}}}"
        defs = {d.get("definition_id"): d.get("result")
                for d in tree.iterfind(f".//{r}results/{r}system/{r}definitions/{r}definition")}
        tests = {t.get("test_id"): t.get("result")
                 for t in tree.iterfind(f".//{r}results/{r}system/{r}tests/{r}test")}
    return OvalRun(proc.returncode, defs, tests, proc.stdout, proc.stderr, seconds)


def oval_validate(feed: str | os.PathLike, timeout: float = 120) -> subprocess.CompletedProcess:
    """``oscap oval validate FEED`` (schema validation; rc 0 = valid)."""
    return subprocess.run(["oscap", "oval", "validate", str(feed)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------- small roots

#: (binary, version, Source: field or "") of debian_cve_root: libc6/libssl3/liblzma5 carry
#: another source's name (the source-name trap), bash and xz-utils are their own source.
DEBIAN_CVE_ROOT_PACKAGES = (
    ("libc6", "2.36-9+deb12u4", "glibc"),
    ("libssl3", "3.0.11-1~deb12u2", "openssl"),
    ("liblzma5", "5.4.1-0.2", "xz-utils"),
    ("xz-utils", "5.4.1-0.2", ""),
    ("bash", "5.2.15-2+b2", ""),
)
#: ubuntu_cve_root's packages (jammy version strings); the kernel image is installed, but
#: the feed asks the RUNNING kernel (uname), which a root does not have.
UBUNTU_CVE_ROOT_PACKAGES = (
    ("libssl3", "3.0.2-0ubuntu1.10", "openssl"),
    ("openssl", "3.0.2-0ubuntu1.10", ""),
    ("liblzma5", "5.2.5-2ubuntu1", "xz-utils"),
    ("bash", "5.1-6ubuntu1", ""),
    ("linux-image-5.15.0-91-generic", "5.15.0-91.101", "linux-signed"),
)
#: rpm_cve_root's extra packages beside filesystem, setup and the release package.
RPM_CVE_ROOT_PACKAGES = (("zlib", "1.2.11", "39.el9"),)


def _dpkg_root(dest: Path, packages, files: dict[str, str]) -> Path:
    from tests.builders import imagebuild as ib
    dest = Path(dest)
    for d in ("etc", "usr/lib", "usr/share/dpkg", "var/lib/dpkg/info", "var/lib/dpkg/updates"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (dest / rel).write_text(text)
    (dest / "var/lib/dpkg/status").write_text(
        "".join(ib.dpkg_stanza(n, v, source=src) for n, v, src in packages))
    for table in ("cputable", "ostable", "tupletable"):   # libapt (dpkginfo probe) needs them
        shutil.copyfile(f"/usr/share/dpkg/{table}", dest / "usr/share/dpkg" / table)
    return dest


def debian_cve_root(dest: str | os.PathLike, packages=DEBIAN_CVE_ROOT_PACKAGES, *,
                    debian_version: str = "12.8") -> Path:
    """A Debian 12 root for feed evaluation: /etc/debian_version, os-release, a dpkg status of
    ``packages`` (binary, version, source), the dpkg tables, var/lib/dpkg/info."""
    from tests.builders import imagebuild as ib
    root = _dpkg_root(Path(dest), packages, {"etc/debian_version": debian_version + "\n",
                                             "usr/lib/os-release": ib.OS_RELEASE_BOOKWORM})
    if not (root / "etc/os-release").exists():
        (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    return root


def ubuntu_cve_root(dest: str | os.PathLike, packages=UBUNTU_CVE_ROOT_PACKAGES) -> Path:
    """An Ubuntu 22.04 (jammy) root: /etc/lsb-release (what the feeds' release check reads),
    os-release, debian_version "bookworm/sid", dpkg status of ``packages``."""
    from tests.builders import distros
    root = _dpkg_root(Path(dest), packages, {"etc/lsb-release": distros.LSB_RELEASE_JAMMY,
                                             "etc/debian_version": "bookworm/sid\n",
                                             "usr/lib/os-release": distros.OS_RELEASE_JAMMY})
    if not (root / "etc/os-release").exists():
        (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    return root


def rpm_cve_root(dest: str | os.PathLike, *, major: str = "9", release_package: str = "redhat-release",
                 packages: Sequence[tuple[str, str, str]] = RPM_CVE_ROOT_PACKAGES) -> Path:
    """A RHEL-like root built with rpmbuild + ``rpm --root -i`` (unsigned noarch packages,
    rpmdb sqlite at /var/lib/rpm): distros.rhel_specs("good") with the release package renamed
    to ``release_package`` (e.g. "rocky-release": a clone owning /etc/redhat-release) plus
    ``packages`` (name, version, release). Returns dest/root; rpms are built in dest/rpmbuild."""
    from tests.builders import distros
    dest = Path(dest)
    specs = distros.rhel_specs("good", major)
    rel = specs.pop("redhat-release")
    specs[release_package] = rel.replace("Name: redhat-release", f"Name: {release_package}", 1)
    for name, version, release in packages:
        specs[name] = distros.spec_text(name, version, release, [
            distros.RpmFile(f"/usr/share/doc/{name}/README", f"{name} {version}-{release}\n")])
    root = dest / "root"
    distros.rpm_install(root, distros.build_rpms(specs, dest / "rpmbuild"))
    return root


# ============================================================================ large feed

#: Real Debian source package names (bookworm), to mix with synthetic ones.
DEBIAN_SOURCES = (
    "acl adduser apr apr-util apt argon2 attr audit avahi base-files bash bind9 binutils bluez "
    "boost1.74 brotli busybox bzip2 c-ares ca-certificates cairo cjson cpio cron cups curl cyrus-sasl2 "
    "db5.3 dbus debianutils diffutils dnsmasq dpkg e2fsprogs elfutils emacs exim4 expat ffmpeg file "
    "findutils firefox-esr flac fontconfig freetype fribidi gcc-12 gdk-pixbuf ghostscript git glib2.0 "
    "glibc gmp gnupg2 gnutls28 golang-1.19 grub2 gst-plugins-base1.0 gstreamer1.0 gtk+3.0 gzip "
    "harfbuzz heimdal hostname icu imagemagick inetutils intel-microcode iproute2 iptables jackson-databind "
    "jbig2dec jq json-c kerberos-configs keyutils krb5 lcms2 ldb less libarchive libcap2 libde265 "
    "libgcrypt20 libgd2 libgit2 libheif libidn2 libjpeg-turbo libksba libnftnl libpng1.6 libpsl "
    "libraw libseccomp libsndfile libsolv libssh libssh2 libtasn1-6 libtiff libvpx libwebp libx11 "
    "libxml2 libxslt libyaml libzstd linux lldpd login logrotate lua5.3 lxc lz4 mariadb mawk mbedtls "
    "mercurial modsecurity-apache mosquitto mutt mysql-defaults nano ncurses netty nettle nghttp2 nginx "
    "nodejs nss ntp ntpsec opencv openexr openjdk-17 openjpeg2 openldap openssh openssl openvpn p11-kit "
    "pam pango1.0 pcre2 perl php8.2 pillow pixman pjproject poppler postfix postgresql-15 procps "
    "protobuf pypy3 python-cryptography python-urllib3 python3.11 qemu qtbase-opensource-src rails "
    "redis rsync ruby3.1 runc rust-h2 samba sed shadow sqlite3 squid sudo systemd tar tcpdump thunderbird "
    "tiff tomcat10 tzdata unbound unzip util-linux vim webkit2gtk wget wireshark wpa xen xorg-server "
    "xz-utils zlib zsh").split()
_WORDS = ("a an the in of to and or via when with without allows remote local attacker user "
          "crafted malicious input file request packet buffer overflow heap stack out-of-bounds "
          "read write use-after-free double free integer underflow null pointer dereference "
          "denial service code execution privilege escalation information disclosure memory "
          "corruption validation check missing improper handling parsing function component "
          "library server client module before version allows unauthenticated authenticated "
          "network adjacent physical context certificate signature header length field").split()


def large_recipe(definitions: int, codename: str, major: str) -> dict:
    return {"version": RECIPE_VERSION, "kind": "debian-large-feed", "definitions": definitions,
            "codename": codename, "major": major, "seed": 20240601,
            "sources": hashlib.sha256(" ".join(DEBIAN_SOURCES).encode()).hexdigest()}


def _large_advisories(definitions: int, major: str, seed: int):
    """Deterministic (key, title, packages, description, cves) entries, one definition each:
    about 70 % on real source names (several CVEs each, as in the real feed), 30 % synthetic;
    about 20 % unfixed ("0"); descriptions 900-2,600 characters of NVD-like text."""
    rng = random.Random(seed)
    for i in range(definitions):
        year = 1999 + (i * 26) // max(definitions, 1)
        cve = f"CVE-{year}-{10000 + i:05d}"
        src = rng.choice(DEBIAN_SOURCES) if rng.random() < 0.7 else f"synthetic-src-{rng.randrange(4000):04d}"
        if rng.random() < 0.2:
            fixed = "0"
        else:
            fixed = (f"{rng.randrange(1, 12)}.{rng.randrange(40)}.{rng.randrange(20)}-"
                     f"{rng.randrange(1, 9)}+deb{major}u{rng.randrange(1, 9)}")
        words = [rng.choice(_WORDS) for _ in range(rng.randrange(120, 360))]
        descr = " ".join(words).capitalize() + "."
        key = f"{cve} {src}"
        yield key, key, [(src, fixed)], descr, (cve,)


def _write_large(path: Path, definitions: int, codename: str, major: str, seed: int) -> None:
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as out:
        w = _DebianWriter(out, major, DEFAULT_TIMESTAMP)
        for key, title, pkgs, descr, cves in sorted(_large_advisories(definitions, major, seed)):
            w.definition(key, title, pkgs, descr, cves)
        w.close()


def large_debian_feed(dest_dir: str | os.PathLike | None = None, *, definitions: int = 12000,
                      codename: str = "bookworm", major: str = "12") -> Path:
    """A realistic-size Debian-format feed (>= 40 MB, ``definitions`` definitions), written once
    under the test cache ($SCAPGATE_CACHE_DIR, else /var/cache/scapgate-test)/feeds/<recipe
    hash>/ and returned from there; dest_dir given: hard-linked (or copied) into it as
    ``oval-definitions-<codename>.xml``. Deterministic: same recipe, same bytes."""
    recipe = large_recipe(definitions, codename, str(major))
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    feeds = cache_dir() / "feeds"
    feeds.mkdir(parents=True, exist_ok=True)
    final = feeds / key
    name = debian_feed_name(codename)
    if not (final / name).exists():
        with open(feeds / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (final / name).exists():
                staging = Path(tempfile.mkdtemp(prefix=".build-", dir=feeds))
                try:
                    start = time.monotonic()
                    _write_large(staging / name, definitions, codename, str(major), recipe["seed"])
                    (staging / "recipe.json").write_text(json.dumps(
                        {**recipe, "bytes": (staging / name).stat().st_size,
                         "build_seconds": round(time.monotonic() - start, 2)}, indent=1, sort_keys=True))
                    if final.exists():
                        shutil.rmtree(final)
                    os.rename(staging, final)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
    src = final / name
    if dest_dir is None:
        return src
    dest = Path(dest_dir) / name
    Path(dest_dir).mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.unlink()
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
    return dest


# ============================================================================ HTTP server

@dataclass
class _Resource:
    body: bytes
    etag: str | None
    last_modified: float | None
    delay: float = 0.0


class FeedServer:
    """A real HTTP/1.1 server on 127.0.0.1 (ThreadingHTTPServer in a thread) serving feeds the
    way vendor mirrors do: ETag and Last-Modified, 304 on If-None-Match / If-Modified-Since
    (If-None-Match wins when both are sent, RFC 9110), HEAD, 404 for unknown paths, and
    injected failures. ``requests`` records (path, headers, status) of every request."""

    def __init__(self):
        self._lock = threading.Lock()
        self._resources: dict[str, _Resource] = {}
        self._failures: dict[str, list] = {}
        self.requests: list[tuple[str, dict[str, str], int]] = []
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def __enter__(self) -> "FeedServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                server._serve(self, head=True)

            def do_GET(self):
                server._serve(self, head=False)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="feed-server",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + "/" + path.lstrip("/")

    # -- content
    def put(self, path: str, body: bytes, *, etag: bool = True, last_modified: float | None = None,
            delay: float = 0.0) -> None:
        """Serve body at path (replacing what was there and clearing a fail()). ETag = quoted
        sha256 prefix; last_modified = epoch seconds for Last-Modified (None: header absent);
        delay = seconds to wait before answering (for timeout tests)."""
        tag = '"%s"' % hashlib.sha256(body).hexdigest()[:32] if etag else None
        with self._lock:
            self._resources[self._key(path)] = _Resource(body, tag, last_modified, delay)
            self._failures.pop(self._key(path), None)

    def remove(self, path: str) -> None:
        with self._lock:
            self._resources.pop(self._key(path), None)

    def fail(self, path: str, status: int | None, *, times: int | None = None) -> None:
        """The next requests to path answer status (all of them, or only `times` of them);
        status None clears the failure."""
        with self._lock:
            if status is None:
                self._failures.pop(self._key(path), None)
            else:
                self._failures[self._key(path)] = [status, times]

    def etag(self, path: str) -> str | None:
        with self._lock:
            r = self._resources.get(self._key(path))
            return r.etag if r else None

    def requests_for(self, path: str) -> list[tuple[str, dict[str, str], int]]:
        with self._lock:
            return [r for r in self.requests if r[0] == self._key(path)]

    @staticmethod
    def _key(path: str) -> str:
        return "/" + path.split("?", 1)[0].lstrip("/")

    # -- the handler's work
    def _serve(self, h: http.server.BaseHTTPRequestHandler, head: bool) -> None:
        key = self._key(h.path)
        headers = {k: v for k, v in h.headers.items()}
        with self._lock:
            failure = self._failures.get(key)
            status_override = None
            if failure:
                status_override = failure[0]
                if failure[1] is not None:
                    failure[1] -= 1
                    if failure[1] <= 0:
                        del self._failures[key]
            res = self._resources.get(key)
        if res is not None and res.delay:
            time.sleep(res.delay)
        if status_override is not None:
            status, body, extra = status_override, f"injected {status_override}\n".encode(), {}
        elif res is None:
            status, body, extra = 404, b"not found\n", {}
        else:
            extra = {}
            if res.etag:
                extra["ETag"] = res.etag
            if res.last_modified is not None:
                extra["Last-Modified"] = email.utils.formatdate(res.last_modified, usegmt=True)
            status, body = 200, res.body
            inm = headers.get("If-None-Match")
            ims = headers.get("If-Modified-Since")
            if inm is not None:
                if res.etag and (inm.strip() == "*" or res.etag in [t.strip() for t in inm.split(",")]):
                    status = 304
            elif ims is not None and res.last_modified is not None:
                try:
                    since = email.utils.parsedate_to_datetime(ims).timestamp()
                except (TypeError, ValueError):
                    since = None
                if since is not None and int(res.last_modified) <= since:
                    status = 304
        with self._lock:
            self.requests.append((key, headers, status))
        h.send_response(status)
        for k, v in extra.items():
            h.send_header(k, v)
        if status == 304:
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_header("Content-Type", _content_type(key) if status == 200 else "text/plain")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            try:
                h.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass


def _content_type(path: str) -> str:
    return {".bz2": "application/x-bzip2", ".xz": "application/x-xz", ".gz": "application/gzip",
            ".xml": "application/xml"}.get(Path(path).suffix, "application/octet-stream")
