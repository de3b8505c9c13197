"""Loading policies and judging scan results: thresholds, waivers under a controlled clock,
pending/error actions and precedence between several policies."""
from __future__ import annotations

import datetime as dt

import pytest

from tests.builders.policies import TODAY, doc, result, waiver, write
from webhook import policy as P
from webhook.scan.results import OvalResult


def pol(**spec) -> P.Policy:
    return P.from_document(doc(**spec))


# -- loader ---------------------------------------------------------------------------------

def test_shipped_default_policy_loads():
    pset = P.load_set(str(P.SCHEMA_PATH).rsplit("/schema/", 1)[0])
    assert [p.name for p in pset.policies] == ["default"]
    assert pset.policies[0].default and pset.policies[0].deny_severity == "medium"
    assert len(pset.policies[0].sha256) == 64


def test_schema_error_names_the_line(tmp_path):
    d = doc()
    d["spec"]["enforcement"] = "block"
    path = write(tmp_path / "p.yaml", d)
    with pytest.raises(P.PolicyError) as e:
        P.load(path)
    line = next(i for i, l in enumerate(open(path), 1) if l.startswith("  enforcement:"))
    assert f"p.yaml:{line}: spec.enforcement: 'block' is not one of" in str(e.value)
    assert e.value.line == line


def test_duplicate_key_is_refused(tmp_path):
    text = open(write(tmp_path / "a.yaml", doc())).read() + "  rules:\n    denySeverity: high\n"
    path = write(tmp_path / "b.yaml", text)
    with pytest.raises(P.PolicyError, match=r"b.yaml:\d+: key 'rules' is written twice"):
        P.load(path)


def test_unquoted_yaml_dates_are_accepted_and_bad_dates_refused(tmp_path):
    text = open(write(tmp_path / "a.yaml", doc(waivers=[waiver()]))).read()
    path = write(tmp_path / "b.yaml", text.replace("'2026-12-31'", "2026-12-31"))
    assert P.load(path).waivers[0].expires == dt.date(2026, 12, 31)
    with pytest.raises(P.PolicyError, match="expires"):
        P.from_document(doc(waivers=[waiver(expires="2026-02-30")]))


def test_waiver_requires_expiry_owner_and_ticket():
    for field in ("expires", "owner", "ticket", "reason"):
        w = waiver()
        del w[field]
        with pytest.raises(P.PolicyError, match=f"'{field}' is a required property"):
            P.from_document(doc(waivers=[w]))


def test_waiver_line_is_recorded(tmp_path):
    path = write(tmp_path / "p.yaml", doc(waivers=[waiver(), waiver("x")]))
    lines = open(path).read().splitlines()
    w = P.load(path).waivers[1]
    assert lines[w.line - 1].lstrip().startswith("- rule: x")


@pytest.mark.parametrize("rule,kind", [
    ("package_telnetd_removed", "rule"),
    ("xccdf_org.ssgproject.content_rule_package_telnetd_removed", "rule"),
    ("oval:org.debian:def:20245535", "oval"),
    ("CVE-2024-3094", "ref"),
    ("DSA-5555-1", "ref"),
], ids=["short", "full", "oval", "cve", "dsa"])
def test_waiver_kind(rule, kind):
    assert P.Waiver(rule, "r", "o", "t", TODAY).kind == kind


# -- evaluate -------------------------------------------------------------------------------

FAILS = (("package_telnetd_removed", "high", "fail"),
         ("file_permissions_etc_shadow", "medium", "fail"),
         ("package_nis_removed", "low", "fail"),
         ("file_owner_etc_passwd", "medium", "pass"))


@pytest.mark.parametrize("rules,expected", [
    ({"denySeverity": "medium"}, ["package_telnetd_removed", "file_permissions_etc_shadow"]),
    ({"denySeverity": "high"}, ["package_telnetd_removed"]),
    ({"denySeverity": "low"}, ["package_telnetd_removed", "file_permissions_etc_shadow",
                               "package_nis_removed"]),
    ({"denySeverity": "none"}, []),
    ({"denySeverity": "high", "alwaysEnforce": ["package_nis_removed"]},
     ["package_telnetd_removed", "package_nis_removed"]),
    ({"denySeverity": "medium", "neverEnforce": ["package_telnetd_removed"]},
     ["file_permissions_etc_shadow"]),
], ids=["medium", "high", "low", "none", "always", "never"])
def test_thresholds(rules, expected):
    v = P.evaluate(result(*FAILS), pol(rules=rules), image="docker.io/library/x:1",
                   namespace="ns", today=TODAY)
    assert [r.id for r in v.reasons] == expected
    assert v.state == ("fail" if expected else "pass")
    assert v.allowed == (not expected)


@pytest.mark.parametrize("mode,allowed", [("enforce", False), ("warn", True), ("audit", True)])
def test_enforcement_mode_decides_allowed(mode, allowed):
    v = P.evaluate(result(*FAILS), pol(enforcement=mode), image="i", namespace="n", today=TODAY)
    assert v.state == "fail" and v.allowed is allowed


def test_min_score():
    p = pol(rules={"denySeverity": "none", "minScore": 90})
    assert P.evaluate(result(score=85.0), p, image="i", namespace="n", today=TODAY).reasons[0].kind == "score"
    assert P.evaluate(result(score=95.0), p, image="i", namespace="n", today=TODAY).state == "pass"


@pytest.mark.parametrize("state,action,allowed", [
    ("pending", "deny", False), ("pending", "allow", True), ("pending", "warn", True),
    ("error", "deny", False), ("error", "allow", True), ("error", "warn", True),
])
def test_pending_and_error_actions(state, action, allowed):
    p = pol(actions={state: action})
    v = P.on_state(state, p, detail="why")
    assert (v.state, v.allowed, v.detail) == (state, allowed, "why")


def test_scan_error_result_uses_error_action():
    v = P.evaluate(result(state="error", error="oscap died"), pol(), image="i", namespace="n",
                   today=TODAY)
    assert (v.state, v.allowed, v.detail) == ("error", False, "oscap died")


# -- waivers under a controlled clock -------------------------------------------------------

IMG = "registry.example.com/team/app:1.0"


def _judge(p, today, image=IMG, namespace="team-a"):
    return P.evaluate(result(("package_telnetd_removed", "high", "fail")), p, image=image,
                      namespace=namespace, today=today)


def test_waiver_applies_until_its_last_day_then_stops_by_itself():
    p = pol(waivers=[waiver(expires="2026-06-30")])
    for day, waived in [(dt.date(2026, 6, 1), True), (dt.date(2026, 6, 30), True),
                        (dt.date(2026, 7, 1), False)]:
        v = _judge(p, day)
        assert (v.state == "pass") is waived, day
        assert bool(v.waived) is waived


def test_waiver_expiring_within_warning_days_warns():
    p = pol(waivers=[waiver(expires="2026-06-30")], waiverWarningDays=14)
    assert _judge(p, dt.date(2026, 6, 15)).warnings == []
    near = _judge(p, dt.date(2026, 6, 16))
    assert near.allowed and near.warnings == [
        "waiver for package_telnetd_removed (SEC-1) expires 2026-06-30, in 14 days"]


def test_expired_waiver_is_named_in_a_warning():
    v = _judge(pol(waivers=[waiver(expires="2026-05-31")]), TODAY)
    assert not v.allowed
    assert v.warnings == ["waiver for package_telnetd_removed (SEC-1) expired 2026-05-31 and "
                          "no longer applies"]


def test_warnings_stay_short():
    p = pol(waivers=[waiver(ticket="T" * 200, expires="2026-06-02")])
    assert all(len(w) <= P.WARNING_LIMIT for w in _judge(p, TODAY).warnings)


@pytest.mark.parametrize("scope,image,namespace,waived", [
    ({}, IMG, "team-a", True),
    ({"namespaces": ["team-*"]}, IMG, "team-b", True),
    ({"namespaces": ["team-a"]}, IMG, "team-b", False),
    ({"images": ["registry.example.com/team/*"]}, IMG, "x", True),
    ({"images": ["registry.example.com/other/*"]}, IMG, "x", False),
    ({"rule": "xccdf_org.ssgproject.content_rule_package_telnetd_removed"}, IMG, "x", True),
    ({"rule": "package_telnetd"}, IMG, "x", False),
], ids=["everywhere", "ns-glob", "other-ns", "image-glob", "other-image", "full-id", "prefix"])
def test_waiver_scope(scope, image, namespace, waived):
    p = pol(waivers=[waiver(**scope)])
    assert (_judge(p, TODAY, image, namespace).state == "pass") is waived


def test_waiver_by_cve_or_oval_id():
    oval = OvalResult(id="oval:org.debian:def:1", title="xz-utils", klass="vulnerability",
                      result="true", references=("CVE-2024-3094",))
    res = result(oval=(oval,))
    for rule in ("CVE-2024-3094", "oval:org.debian:def:1"):
        v = P.evaluate(res, pol(waivers=[waiver(rule)]), image=IMG, namespace="n", today=TODAY)
        assert v.state == "pass" and v.waived[0][0].refs == ("CVE-2024-3094",)
    v = P.evaluate(res, pol(waivers=[waiver("CVE-2024-0001")]), image=IMG, namespace="n",
                   today=TODAY)
    assert v.state == "fail" and v.reasons[0].kind == "oval"


def test_a_below_threshold_rule_needs_no_waiver():
    p = pol(rules={"denySeverity": "high"}, waivers=[waiver("package_nis_removed")])
    v = P.evaluate(result(("package_nis_removed", "low", "fail")), p, image=IMG,
                   namespace="n", today=TODAY)
    assert v.state == "pass" and v.waived == []


# -- several policies -----------------------------------------------------------------------

def _set(*docs) -> P.PolicySet:
    return P.PolicySet(tuple(P.from_document(d) for d in docs))


PSET = _set(
    doc("default", default=True, match={"excludeNamespaces": ["kube-system"]}),
    doc("teams", priority=10, match={"namespaces": ["team-*"]}),
    doc("team-a", priority=20, match={"namespaces": ["team-a"]}),
    doc("team-a-vendor", priority=30, match={"namespaces": ["team-a"],
                                             "images": ["vendor.example.com/*"]}),
    doc("zz-tie", priority=10, match={"namespaces": ["team-b"]}),
    doc("aa-tie", priority=10, match={"namespaces": ["team-b"]}),
    doc("pci", priority=5, match={"namespaces": ["pci-*"], "excludeNamespaces": ["pci-sandbox"]}),
)


@pytest.mark.parametrize("namespace,image,expected", [
    ("team-a", "docker.io/library/nginx:1", "team-a"),              # higher priority wins
    ("team-a", "vendor.example.com/x:1", "team-a-vendor"),          # image narrows the match
    ("team-a", "", "team-a-vendor"),                                # no image: ignore image filters
    ("team-c", "docker.io/library/nginx:1", "teams"),
    ("team-b", "docker.io/library/nginx:1", "aa-tie"),              # equal priority: name order
    ("pci-prod", "docker.io/library/nginx:1", "pci"),
    ("pci-sandbox", "docker.io/library/nginx:1", "default"),        # excluded: falls to default
    ("web", "docker.io/library/nginx:1", "default"),                # nothing matches: default
    ("kube-system", "docker.io/library/nginx:1", None),             # default excludes it: none
    ("team-a-evil", "docker.io/library/nginx:1", "teams"),          # globs match whole names
], ids=lambda v: str(v))
def test_precedence(namespace, image, expected):
    chosen = PSET.select(namespace, image)
    assert (chosen.name if chosen else None) == expected


def test_default_with_lower_priority_never_beats_a_matching_policy():
    pset = _set(doc("d", default=True, priority=1000), doc("low", priority=-5))
    assert pset.select("anything").name == "low"


def test_without_default_unmatched_namespaces_get_no_policy():
    assert _set(doc("only", match={"namespaces": ["a"]})).select("b") is None


def test_load_set_refuses_duplicate_names_and_any_invalid_file(tmp_path):
    write(tmp_path / "a.yaml", doc("same"))
    write(tmp_path / "b.yaml", doc("same"))
    with pytest.raises(P.PolicyError, match="duplicate policy names: same"):
        P.load_set(str(tmp_path))
    write(tmp_path / "b.yaml", doc("other", enforcement="nope"))
    with pytest.raises(P.PolicyError, match="b.yaml"):
        P.load_set(str(tmp_path))


def test_load_set_ignores_subdirectories(tmp_path):
    write(tmp_path / "a.yaml", doc("a"))
    write(tmp_path / "examples" / "b.yaml", doc("b", enforcement="nope"))
    assert [p.name for p in P.load_set(str(tmp_path)).policies] == ["a"]
