"""CVE verdicts: spec.cves applied by policy.evaluate to scan results carrying CVE findings of a
distribution feed — thresholds, fixedOnly, waivers by CVE id / package / both, a stale or
missing feed, a newer feed's evaluation overriding the scan's own, and the schema of spec.cves.

Policies are written as YAML text and read by the loader's own YAML reader (line numbers and
all); results are built by hand (tests/builders/policies.result) with CveFinding lists and the
feed summary a scan records (webhook/scan/feeds.feed_summary's shape).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import textwrap

import pytest

from tests.builders.policies import STANDARD, TODAY, datastream, result
from webhook import policy as P
from webhook.policy.file import read_document
from webhook.policy.model import CvePolicy
from webhook.policy.verdict import STALE_FEED, cve_enforced
from webhook.scan.results import CveFinding, ScanKey, ScanResult, cve_key

IMG = "registry.example.com/team/app:1.0"
NS = "team-a"
DAY = 86400.0
FRESH = 3600.0                       # a feed refreshed an hour ago
FEED = {"product": "debian12", "feed": "debian12", "sha256": "ab" * 32,
        "source": "https://www.debian.org/security/oval/oval-definitions-bookworm.xml.bz2",
        "as_of": 1_780_000_000.0, "definitions": 41234, "kind": "debian",
        "evaluated": 812, "unevaluated": {}}

OPENSSL = CveFinding(id="CVE-2024-0727", package="openssl", installed="3.0.11-1~deb12u2",
                     fixed="3.0.13-1~deb12u1", severity="high", title="openssl: PKCS12 NULL",
                     definition="oval:org.debian:def:1", binary="libssl3")
OPENSSL_2 = CveFinding(id="CVE-2023-5678", package="openssl", installed="3.0.11-1~deb12u2",
                       fixed="3.0.13-1~deb12u1", severity="medium", title="openssl: DH",
                       definition="oval:org.debian:def:2", binary="libssl3")
GLIBC = CveFinding(id="CVE-2023-4911", package="glibc", installed="2.36-9",
                   fixed="2.36-9+deb12u3", severity="high", title="glibc: Looney Tunables",
                   definition="oval:org.debian:def:3", binary="libc6")
XZ = CveFinding(id="CVE-2024-3094", package="xz-utils", installed="5.6.0-0.2",
                fixed="5.6.1+really5.4.5-1", severity="critical", title="xz backdoor",
                definition="oval:org.debian:def:4")
CURL = CveFinding(id="CVE-2024-2398", package="curl", installed="7.88.1-10+deb12u5",
                  fixed="", severity="high", title="curl: HTTP/2 push leak",
                  definition="oval:org.debian:def:5")


def finding(severity: str, *, fixed: str = "1.2-2", id: str = "CVE-2024-1000",
            package: str = "zlib", binary: str = "") -> CveFinding:
    return CveFinding(id=id, package=package, installed="1.2-1", fixed=fixed,
                      severity=severity, title=f"{package} bug", binary=binary)


def scan(*findings: CveFinding, feed: dict | None = None, rules=()) -> ScanResult:
    res = result(*rules)
    res.cves = list(findings)
    res.feed = dict(FEED) if feed is None else feed
    return res


def policy(cves: str | None = "denySeverity: high", *, waivers: str = "",
           enforcement: str = "") -> P.Policy:
    """An ImagePolicy from YAML text; cves is the body of spec.cves (None: no section)."""
    text = textwrap.dedent(f"""\
        apiVersion: scapgate.io/v1
        kind: ImagePolicy
        metadata:
          name: cve-gate
          owner: team-sec
          description: CVEs of the distribution feed
        spec:
          content:
            datastream: {datastream()}
            profile: {STANDARD}
          rules:
            denySeverity: medium
        """)
    if enforcement:
        text += f"  enforcement: {enforcement}\n"
    if cves is not None:
        text += "  cves:\n" + (textwrap.indent(textwrap.dedent(cves).strip("\n"), "    ") + "\n"
                               if cves.strip() else "    {}\n")
    if waivers:
        text += "  waivers:\n" + textwrap.indent(textwrap.dedent(waivers).strip("\n"), "    ") + "\n"
    doc, node = read_document(text.encode(), "cve-gate.yaml")
    return P.from_document(doc, path="cve-gate.yaml", node=node)


def judge(res: ScanResult, pol: P.Policy, *, feed_age_s: float | None = FRESH,
          cves: ScanResult | None = None, today: dt.date = TODAY, image: str = IMG,
          namespace: str = NS) -> P.Verdict:
    return P.evaluate(res, pol, image=image, namespace=namespace, today=today, cves=cves,
                      feed_age_s=feed_age_s)


# -- the section as loaded ----------------------------------------------------------------------

def test_spec_cves_is_parsed_with_its_defaults():
    assert policy("{}").cves == CvePolicy("high", True, 2 * 86400, "warn")
    p = policy("""
        denySeverity: critical
        fixedOnly: false
        maxFeedAge: 36h
        staleFeed: deny
    """)
    assert p.cves == CvePolicy("critical", False, 36 * 3600, "deny")
    assert policy(None).cves is None


# -- denySeverity -------------------------------------------------------------------------------

@pytest.mark.parametrize("deny,severity,denied", [
    ("high", "high", True), ("high", "medium", False), ("high", "critical", True),
    ("high", "unknown", False), ("critical", "high", False), ("critical", "critical", True),
    ("medium", "medium", True), ("medium", "low", False), ("low", "negligible", False),
    ("negligible", "negligible", True), ("negligible", "unknown", False),
    ("unknown", "unknown", True), ("unknown", "negligible", True), ("unknown", "critical", True),
    ("none", "critical", False), ("none", "unknown", False),
])
def test_deny_severity(deny, severity, denied):
    f = finding(severity)
    v = judge(scan(f), policy(f"denySeverity: {deny}"))
    assert (v.state, v.allowed) == (("fail", False) if denied else ("pass", True))
    if denied:
        (r,) = v.reasons
        assert (r.kind, r.id, r.severity, r.title) == ("cve", f.id, severity, f.line())
        assert r.title == f"CVE-2024-1000 {severity} zlib 1.2-1 → 1.2-2"
    else:
        assert v.reasons == [] and v.waived == []


def test_denial_reason_is_the_findings_line_with_refs_and_packages():
    v = judge(scan(OPENSSL, OPENSSL_2), policy("denySeverity: high"))
    assert v.state == "fail" and not v.allowed
    (r,) = v.reasons                                      # the medium one does not deny
    assert r.title == "CVE-2024-0727 high openssl (libssl3) 3.0.11-1~deb12u2 → 3.0.13-1~deb12u1"
    assert r.title == OPENSSL.line()
    assert r.kind == "cve" and r.refs[0] == "CVE-2024-0727"
    assert r.packages == ("openssl", "libssl3")


def test_reasons_are_worst_first_and_an_advisory_carries_its_cves():
    rhsa = CveFinding(id="RHSA-2024:1234", package="openssl", installed="3.0.7-25.el9",
                      fixed="3.0.7-27.el9", severity="high", title="openssl security update",
                      cves=("CVE-2023-5678", "CVE-2024-0727"))
    v = judge(scan(GLIBC, rhsa, XZ, OPENSSL), policy("denySeverity: high"))
    assert [r.id for r in v.reasons] == ["CVE-2024-3094", "CVE-2023-4911", "CVE-2024-0727",
                                         "RHSA-2024:1234"]
    assert v.reasons[0].severity == "critical"
    assert v.reasons[-1].refs == ("RHSA-2024:1234", "CVE-2023-5678", "CVE-2024-0727")


def test_debian_unknown_severity_is_reported_not_denied_by_default():
    """Debian's feed states no severity: only denySeverity unknown denies its CVEs."""
    debian = finding("unknown", id="CVE-2024-3094", package="xz-utils")
    assert judge(scan(debian), policy("{}")).state == "pass"
    assert judge(scan(debian), policy("denySeverity: unknown")).state == "fail"


def test_cve_enforced_says_why():
    cp = policy("denySeverity: high").cves
    assert cve_enforced(OPENSSL, cp) == (True, "severity high >= cves.denySeverity high")
    assert cve_enforced(OPENSSL_2, cp) == (False, "severity medium is below cves.denySeverity high")
    assert cve_enforced(CURL, cp) == (False, "no fix released (cves.fixedOnly)")
    assert cve_enforced(XZ, policy("denySeverity: none").cves) == (False, "cves.denySeverity is none")


# -- fixedOnly ----------------------------------------------------------------------------------

def test_fixed_only_true_ignores_findings_without_a_fix():
    for cves in ("denySeverity: high", "denySeverity: high\nfixedOnly: true"):
        v = judge(scan(CURL), policy(cves))
        assert v.state == "pass" and v.reasons == []


def test_fixed_only_false_denies_findings_without_a_fix():
    v = judge(scan(CURL), policy("denySeverity: high\nfixedOnly: false"))
    assert v.state == "fail" and not v.allowed
    assert v.reasons[0].title == "CVE-2024-2398 high curl 7.88.1-10+deb12u5 → no fix yet"


def test_fixed_only_still_denies_the_fixed_ones():
    v = judge(scan(CURL, OPENSSL), policy("denySeverity: high"))
    assert [r.id for r in v.reasons] == ["CVE-2024-0727"]


# -- waivers ------------------------------------------------------------------------------------

def waiver(*, rule: str = "", package: str = "", expires: str = "2026-12-31", extra: str = "") -> str:
    """One spec.waivers entry as YAML (a list item)."""
    fields = ([f"rule: {rule}"] if rule else []) + [
        "reason: accepted risk, fix tracked", "owner: team-a", "ticket: SEC-7",
        f"expires: {expires}"] + ([f"package: {package}"] if package else [])
    text = "- " + "\n  ".join(fields) + "\n"
    return text + (extra + "\n" if extra else "")


def test_waiver_by_cve_id():
    p = policy("denySeverity: high", waivers=waiver(rule="CVE-2024-0727"))
    v = judge(scan(OPENSSL), p)
    assert (v.state, v.allowed, v.reasons) == ("pass", True, [])
    ((r, w),) = v.waived
    assert r.id == "CVE-2024-0727" and r.kind == "cve" and r.title == OPENSSL.line()
    assert w.rule == "CVE-2024-0727" and w.kind == "ref" and w.ticket == "SEC-7"
    # the same waiver leaves another CVE denied
    v = judge(scan(OPENSSL, GLIBC), p)
    assert [r.id for r in v.reasons] == ["CVE-2023-4911"]
    assert [r.id for r, _ in v.waived] == ["CVE-2024-0727"]


def test_waiver_by_a_cve_an_advisory_fixes():
    rhsa = CveFinding(id="RHSA-2024:1234", package="openssl", installed="3.0.7-25.el9",
                      fixed="3.0.7-27.el9", severity="high", title="openssl update",
                      cves=("CVE-2023-5678", "CVE-2024-0727"))
    for rule in ("RHSA-2024:1234", "CVE-2024-0727"):
        v = judge(scan(rhsa), policy("denySeverity: high", waivers=waiver(rule=rule)))
        assert v.state == "pass" and [r.id for r, _ in v.waived] == ["RHSA-2024:1234"], rule
    v = judge(scan(rhsa), policy("denySeverity: high", waivers=waiver(rule="CVE-2024-9999")))
    assert v.state == "fail"


def test_waiver_by_package_covers_every_cve_of_that_package():
    p = policy("denySeverity: medium", waivers=waiver(package="openssl"))
    v = judge(scan(OPENSSL, OPENSSL_2, GLIBC), p)
    assert v.state == "fail"
    assert [r.id for r in v.reasons] == ["CVE-2023-4911"]
    assert sorted(r.id for r, _ in v.waived) == ["CVE-2023-5678", "CVE-2024-0727"]
    w = v.waived[0][1]
    assert w.kind == "package" and w.rule == "" and w.names == "every CVE of openssl"
    assert judge(scan(OPENSSL, OPENSSL_2), p).state == "pass"


@pytest.mark.parametrize("package,waived", [
    ("openssl", True),       # the feed's (source) name
    ("libssl3", True),       # the installed binary built from it
    ("libc6", False),        # another binary
    ("openssl3", False),     # never a prefix or a substring
    ("ssl", False),
])
def test_waiver_by_package_matches_source_or_binary_name(package, waived):
    v = judge(scan(OPENSSL), policy("denySeverity: high", waivers=waiver(package=package)))
    assert (v.state == "pass") is waived
    assert bool(v.waived) is waived


def test_waiver_by_rule_and_package_covers_only_that_cve_in_that_package():
    same_cve_in_glibc = dataclasses.replace(GLIBC, id="CVE-2024-0727")
    other_openssl_cve = dataclasses.replace(OPENSSL_2, severity="high")
    p = policy("denySeverity: high", waivers=waiver(rule="CVE-2024-0727", package="openssl"))
    v = judge(scan(OPENSSL, same_cve_in_glibc, other_openssl_cve), p)
    assert v.state == "fail"
    assert [(r.id, r.packages) for r, _ in v.waived] == [("CVE-2024-0727", ("openssl", "libssl3"))]
    assert sorted((r.id, r.packages[0]) for r in v.reasons) == [
        ("CVE-2023-5678", "openssl"), ("CVE-2024-0727", "glibc")]
    assert v.waived[0][1].names == "CVE-2024-0727 in openssl"
    # by the binary's name too
    p = policy("denySeverity: high", waivers=waiver(rule="CVE-2024-0727", package="libssl3"))
    assert judge(scan(OPENSSL), p).state == "pass"


def test_package_waiver_never_covers_an_xccdf_rule():
    p = policy("denySeverity: high", waivers=waiver(package="openssl"))
    v = judge(scan(OPENSSL, rules=[("package_telnetd_removed", "high", "fail")]), p)
    assert [r.id for r in v.reasons] == ["package_telnetd_removed"]
    assert [r.id for r, _ in v.waived] == ["CVE-2024-0727"]


@pytest.mark.parametrize("kw,names", [
    ({"rule": "CVE-2024-0727"}, "CVE-2024-0727"),
    ({"package": "openssl"}, "every CVE of openssl"),
    ({"rule": "CVE-2024-0727", "package": "libssl3"}, "CVE-2024-0727 in libssl3"),
], ids=["cve", "package", "cve-in-package"])
def test_expired_waiver_does_not_apply_and_warns(kw, names):
    p = policy("denySeverity: high", waivers=waiver(expires="2026-05-31", **kw))
    v = judge(scan(OPENSSL), p)                     # TODAY is 2026-06-01
    assert (v.state, v.allowed, v.waived) == ("fail", False, [])
    assert [r.id for r in v.reasons] == ["CVE-2024-0727"]
    assert v.warnings == [f"waiver for {names} (SEC-7) expired 2026-05-31 and no longer applies"]
    # on its last day it still applies, and says it is about to end
    v = judge(scan(OPENSSL), p, today=dt.date(2026, 5, 31))
    assert v.state == "pass" and len(v.waived) == 1
    assert v.warnings == ["waiver for CVE-2024-0727 (SEC-7) expires 2026-05-31, in 0 days"]


def test_cve_waiver_respects_image_and_namespace_scope():
    p = policy("denySeverity: high", waivers=waiver(
        package="openssl", extra="  namespaces: [team-*]\n  images: ['registry.example.com/team/*']"))
    assert judge(scan(OPENSSL), p).state == "pass"
    assert judge(scan(OPENSSL), p, namespace="payments").state == "fail"
    assert judge(scan(OPENSSL), p, image="docker.io/library/debian:12").state == "fail"


def test_a_finding_below_the_threshold_needs_no_waiver():
    v = judge(scan(OPENSSL_2), policy("denySeverity: high", waivers=waiver(package="openssl")))
    assert v.state == "pass" and v.waived == []


# -- stale or missing feed ----------------------------------------------------------------------

@pytest.mark.parametrize("action,allowed", [("deny", False), ("warn", True), ("allow", True)])
def test_feed_older_than_max_feed_age_is_stale_feed(action, allowed):
    p = policy(f"maxFeedAge: 2d\nstaleFeed: {action}")
    v = judge(scan(), p, feed_age_s=3 * DAY)
    assert (v.state, v.allowed) == (STALE_FEED, allowed) == ("stale-feed", allowed)
    assert v.detail == "the CVE feed for debian12 is 3d old, older than cves.maxFeedAge 2d"
    assert v.reasons == []
    assert P.action_of(STALE_FEED, p) == action


def test_feed_age_at_the_limit_is_not_stale():
    p = policy("maxFeedAge: 36h\nstaleFeed: deny")
    assert judge(scan(), p, feed_age_s=36 * 3600).state == "pass"
    assert judge(scan(), p, feed_age_s=36 * 3600 + 1).state == "stale-feed"


def test_stale_feed_deny_is_admitted_when_not_enforcing():
    for mode in ("warn", "audit"):
        v = judge(scan(), policy("staleFeed: deny", enforcement=mode), feed_age_s=10 * DAY)
        assert (v.state, v.allowed) == ("stale-feed", True)


def test_no_feed_in_force_is_stale_feed():
    p = policy("staleFeed: deny")
    v = judge(scan(), p, feed_age_s=None)                 # the kept feed was removed
    assert (v.state, v.allowed) == ("stale-feed", False)
    assert v.detail == "no CVE feed for debian12 is kept any more: CVEs not judged"
    v = judge(scan(feed={}), p, feed_age_s=None)          # no feed ever judged this image
    assert (v.state, v.allowed) == ("stale-feed", False)
    assert v.detail == "no CVE feed for debian12: CVEs not judged"


def test_feed_error_is_stale_feed_with_the_error():
    err = {"product": "debian12", "error": "CVE evaluation failed: oscap exited 1",
           "source": FEED["source"]}
    v = judge(scan(feed=err), policy("staleFeed: deny"), feed_age_s=FRESH)
    assert (v.state, v.allowed, v.detail) == ("stale-feed", False,
                                               "CVE evaluation failed: oscap exited 1")
    v = judge(scan(feed=err), policy("staleFeed: warn"), feed_age_s=FRESH)
    assert (v.state, v.allowed) == ("stale-feed", True)


def test_a_failing_finding_wins_over_a_stale_feed():
    p = policy("denySeverity: high\nstaleFeed: allow")
    v = judge(scan(OPENSSL), p, feed_age_s=30 * DAY)
    assert (v.state, v.allowed) == ("fail", False)
    assert [r.id for r in v.reasons] == ["CVE-2024-0727"]
    v = judge(scan(rules=[("package_telnetd_removed", "high", "fail")]), p, feed_age_s=None)
    assert (v.state, v.allowed) == ("fail", False)


def test_waived_findings_with_a_stale_feed_stay_listed():
    p = policy("denySeverity: high\nstaleFeed: deny", waivers=waiver(package="openssl"))
    v = judge(scan(OPENSSL), p, feed_age_s=5 * DAY)
    assert (v.state, v.allowed) == ("stale-feed", False)
    assert [r.id for r, _ in v.waived] == ["CVE-2024-0727"]


def test_stale_feed_action_without_a_cves_section_is_allow():
    assert P.action_of(STALE_FEED, policy(None)) == "allow"


# -- a newer feed's evaluation ------------------------------------------------------------------

def newer(*findings: CveFinding, state: str = "done", feed: dict | None = None) -> ScanResult:
    key = cve_key("sha256:" + "a" * 64, "debian12", "cd" * 32, "test")
    return ScanResult(key=key, image=IMG, state=state, product="debian12", cves=list(findings),
                      feed={**FEED, "sha256": "cd" * 32} if feed is None else feed)


def test_newer_feed_evaluation_overrides_the_scans_findings():
    p = policy("denySeverity: high")
    res = scan(OPENSSL)                                   # judged with the old feed
    assert judge(res, p).state == "fail"
    v = judge(res, p, cves=newer())                       # the new feed: fixed upstream rating
    assert (v.state, v.reasons) == ("pass", [])
    v = judge(scan(), p, cves=newer(GLIBC))               # the new feed knows a new CVE
    assert v.state == "fail" and [r.id for r in v.reasons] == ["CVE-2023-4911"]


def test_newer_feed_evaluation_decides_staleness_too():
    p = policy("staleFeed: deny")
    err = {"product": "debian12", "error": "CVE feed for debian12 unusable: no feed index"}
    v = judge(scan(), p, cves=newer(feed=err))
    assert (v.state, v.detail) == ("stale-feed", err["error"])


def test_a_failed_cve_evaluation_falls_back_to_the_scans_findings():
    p = policy("denySeverity: high")
    v = judge(scan(OPENSSL), p, cves=newer(state="error", feed={}))
    assert v.state == "fail" and [r.id for r in v.reasons] == ["CVE-2024-0727"]


# -- no spec.cves -------------------------------------------------------------------------------

def test_policy_without_cves_ignores_findings_and_feeds():
    p = policy(None)
    assert p.cves is None
    for res, age in [(scan(XZ, OPENSSL, CURL), FRESH), (scan(XZ, feed={}), None),
                     (scan(XZ, feed={"product": "debian12", "error": "boom"}), None)]:
        v = judge(res, p, feed_age_s=age, cves=newer(GLIBC))
        assert (v.state, v.allowed, v.reasons, v.detail) == ("pass", True, [], "")


def test_trail_records_the_feed_judged_with():
    res = scan(OPENSSL)
    v = judge(res, policy("denySeverity: high"))
    t = P.verdict_trail(res.key.digest, v, res)
    assert t["cve_feed_sha256"] == "ab" * 32 and t["denied_by"] == ["CVE-2024-0727"]
    assert "cve_feed_sha256" not in P.verdict_trail(res.key.digest, v, scan(feed={}))


# -- schema -------------------------------------------------------------------------------------

def test_waiver_needs_a_rule_or_a_package():
    bad = "- reason: r\n  owner: o\n  ticket: T-1\n  expires: 2026-12-31\n"
    with pytest.raises(P.PolicyError, match=r"spec\.waivers\.0"):
        policy("{}", waivers=bad)
    assert policy("{}", waivers=bad + "  package: openssl\n").waivers[0].package == "openssl"
    assert policy("{}", waivers=bad + "  rule: CVE-2024-0727\n").waivers[0].rule == "CVE-2024-0727"


def test_waiver_package_must_be_one_word():
    with pytest.raises(P.PolicyError, match=r"spec\.waivers\.0\.package"):
        policy("{}", waivers=waiver(package="'open ssl'"))
    with pytest.raises(P.PolicyError, match=r"spec\.waivers\.0\.package"):
        policy("{}", waivers=waiver(package="''"))


@pytest.mark.parametrize("cves,where", [
    ("denySeverity: severe", "spec.cves.denySeverity: 'severe' is not one of"),
    ("denySeverity: important", "spec.cves.denySeverity: 'important' is not one of"),
    ("staleFeed: block", "spec.cves.staleFeed: 'block' is not one of"),
    ("maxFeedAge: 2 days", "spec.cves.maxFeedAge: '2 days' does not match"),
    ("fixedOnly: maybe", "spec.cves.fixedOnly: 'maybe' is not of type 'boolean'"),
    ("denySeverities: high", "spec.cves: Additional properties are not allowed"),
])
def test_cves_section_schema(cves, where):
    with pytest.raises(P.PolicyError) as e:
        policy(cves)
    assert where in str(e.value)
    assert str(e.value).startswith("cve-gate.yaml:")
