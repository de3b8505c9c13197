"""`scapgate policy lint`: one test per class of mistake, each checking the file:line it names."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.builders.policies import REPO, STANDARD, TODAY, doc, waiver, write
from webhook.cli import main
from webhook.policy import lint as L
from webhook.policy import patterns as policy_patterns

pytestmark = pytest.mark.usefixtures("scap_datastream")
TAILORED = "xccdf_io.scapgate_profile_t"


def lint(*paths, today=TODAY):
    return L.lint_paths([str(p) for p in paths], today=today)


def line_of(path, needle: str, nth: int = 0) -> int:
    hits = [i for i, l in enumerate(open(path), 1) if needle in l]
    return hits[nth]


def only(findings, code):
    hits = [f for f in findings if f.code == code]
    assert hits, f"no {code} in {[str(f) for f in findings]}"
    return hits


def test_shipped_policies_are_clean():
    findings = lint(REPO / "policies")
    assert findings == [], "\n".join(map(str, findings))


def test_clean_policy_has_no_findings(tmp_path):
    assert lint(write(tmp_path / "p.yaml", doc(default=True))) == []


# -- format ---------------------------------------------------------------------------------

def test_every_schema_error_is_reported_at_its_line(tmp_path):
    d = doc(enforcement="block", waivers=[waiver(expires="soon")], colour="blue")
    path = write(tmp_path / "p.yaml", d)
    found = {(f.line, f.message.split(":")[0]) for f in only(lint(path), "schema")}
    assert (line_of(path, "enforcement:"), "spec.enforcement") in found
    assert (line_of(path, "expires:"), "spec.waivers.0.expires") in found
    assert (line_of(path, "colour:"), "spec") in found                  # the unexpected key


def test_missing_required_field_points_at_its_parent(tmp_path):
    d = doc()
    del d["metadata"]["owner"]
    path = write(tmp_path / "p.yaml", d)
    f = only(lint(path), "schema")[0]
    assert f.line == line_of(path, "metadata:") and "'owner' is a required property" in f.message


@pytest.mark.parametrize("text,needle", [
    ("apiVersion: scapgate.io/v1\nkind: [unclosed\n", "kind"),
    ("a: 1\nb: 2\na: 3\n", "a: 3"),
], ids=["yaml-syntax", "duplicate-key"])
def test_unreadable_yaml(tmp_path, text, needle):
    path = write(tmp_path / "p.yaml", text)
    f = only(lint(path), "yaml")[0]
    assert f.path == path and f.line >= line_of(path, needle.split(":")[0])


# -- content --------------------------------------------------------------------------------

def test_profile_missing_from_the_datastream(tmp_path):
    d = doc()
    d["spec"]["content"]["profile"] = "xccdf_org.ssgproject.content_profile_stig"
    path = write(tmp_path / "p.yaml", d)
    f = only(lint(path), "profile-missing")[0]
    assert f.line == line_of(path, "profile:") and "anssi_bp28_high" in f.message


def test_datastream_missing(tmp_path):
    d = doc()
    d["spec"]["content"]["datastream"] = str(tmp_path / "nope.xml")
    path = write(tmp_path / "p.yaml", d)
    assert only(lint(path), "content-missing")[0].line == line_of(path, "datastream:")


TAILORING = """<?xml version="1.0" encoding="UTF-8"?>
<xccdf:Tailoring xmlns:xccdf="http://checklists.nist.gov/xccdf/1.2" id="xccdf_io.scapgate_tailoring_t">
  <xccdf:version time="2026-01-01T00:00:00">1</xccdf:version>
  <xccdf:Profile id="{pid}" extends="{extends}">
    <xccdf:title>t</xccdf:title>
{selects}
  </xccdf:Profile>
</xccdf:Tailoring>
"""


def _tailored(tmp_path, selects="", extends=STANDARD, text=None):
    t = tmp_path / "t.xml"
    t.write_text(text if text is not None else TAILORING.format(
        pid=TAILORED, extends=extends, selects=selects))
    d = doc()
    d["spec"]["content"].update(tailoring="t.xml", profile=TAILORED)
    return write(tmp_path / "p.yaml", d), str(t)


def _select(rule, on=True):
    return (f'    <xccdf:select idref="xccdf_org.ssgproject.content_{rule}" '
            f'selected="{"true" if on else "false"}"/>')


def test_valid_tailoring_is_clean(tmp_path):
    path, _t = _tailored(tmp_path, "\n".join([
        _select("group_accounts"), _select("group_accounts-restrictions"),
        _select("group_root_logins"), _select("rule_accounts_no_uid_except_zero")]))
    assert lint(path) == []


def test_tailoring_that_is_not_xml(tmp_path):
    path, t = _tailored(tmp_path, text="<xccdf:Tailoring oops")
    found = only(lint(path), "tailoring-invalid")
    assert {f.path for f in found} == {path, t}
    assert found[0].line == line_of(path, "tailoring:") or found[1].line == line_of(path, "tailoring:")


def test_tailoring_that_breaks_the_xccdf_schema(tmp_path):
    text = TAILORING.format(pid=TAILORED, extends=STANDARD, selects="    <xccdf:bogus/>")
    path, t = _tailored(tmp_path, text=text)
    hit = [f for f in only(lint(path), "tailoring-invalid") if f.path == t][0]
    assert hit.line == line_of(t, "bogus") and "not valid XCCDF 1.2" in hit.message


def test_tailoring_extending_a_profile_the_datastream_lacks(tmp_path):
    path, t = _tailored(tmp_path, extends="xccdf_org.ssgproject.content_profile_cis")
    f = only(lint(path), "tailoring-extends")[0]
    assert f.path == t and f.line == line_of(t, "<xccdf:Profile")
    assert "not a profile of ssg-debian12-ds.xml" in f.message


def test_tailoring_profile_extending_nothing_is_a_warning(tmp_path):
    text = TAILORING.format(pid=TAILORED, extends=STANDARD, selects=_select("rule_file_owner_etc_passwd"))
    path, t = _tailored(tmp_path, text=text.replace(f' extends="{STANDARD}"', ""))
    f = only(lint(path), "tailoring-extends")[0]
    assert (f.path, f.level) == (t, "warning") and "extends no profile" in f.message


def test_tailoring_selecting_unknown_ids(tmp_path):
    path, t = _tailored(tmp_path, _select("rule_no_such_rule"))
    f = only(lint(path), "tailoring-invalid")[0]
    assert (f.path, f.line) == (t, line_of(t, "no_such_rule"))


def test_tailoring_selection_without_its_groups_has_no_effect(tmp_path):
    path, t = _tailored(tmp_path, _select("rule_accounts_no_uid_except_zero"))
    f = only(lint(path), "tailoring-no-effect")[0]
    assert (f.path, f.line, f.level) == (t, line_of(t, "accounts_no_uid"), "warning")


def test_profile_missing_from_the_tailoring(tmp_path):
    path, _t = _tailored(tmp_path)
    text = open(path).read().replace(TAILORED, TAILORED + "_typo")
    write(path, text)
    assert only(lint(path), "profile-missing")


# -- waivers --------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["package_telnetd_removd", "xccdf_org.ssgproject.content_rule_nope"])
def test_waived_rule_not_in_the_content(tmp_path, rule):
    path = write(tmp_path / "p.yaml", doc(waivers=[waiver(), waiver(rule)]))
    f = only(lint(path), "rule-unknown")[0]
    assert f.line == line_of(path, f"rule: {rule}") and "no such rule" in f.message


def test_cve_waiver_without_oval_content(tmp_path):
    path = write(tmp_path / "p.yaml", doc(waivers=[waiver("CVE-2024-3094")]))
    assert "evaluates no OVAL files" in only(lint(path), "rule-unknown")[0].message


def test_cve_and_oval_waivers_checked_against_the_oval_file(tmp_path):
    oval = tmp_path / "feed.xml"
    oval.write_text(
        '<oval_definitions xmlns="http://oval.mitre.org/XMLSchema/oval-definitions-5">'
        '<definitions><definition id="oval:org.debian:def:1" class="vulnerability"><metadata>'
        '<title>xz</title><reference source="CVE" ref_id="CVE-2024-3094"/></metadata>'
        '</definition></definitions></oval_definitions>')
    d = doc(waivers=[waiver("CVE-2024-3094"), waiver("oval:org.debian:def:1"),
                     waiver("CVE-2000-0001")])
    d["spec"]["content"]["oval"] = ["feed.xml"]
    path = write(tmp_path / "p.yaml", d)
    found = only(lint(path), "rule-unknown")
    assert [f.line for f in found] == [line_of(path, "CVE-2000-0001")]


def test_always_and_never_enforce_ids_must_exist(tmp_path):
    path = write(tmp_path / "p.yaml", doc(rules={"alwaysEnforce": ["nope_rule"]}))
    assert only(lint(path), "rule-unknown")[0].line == line_of(path, "alwaysEnforce")


def test_expiry_in_the_past_is_an_error_and_soon_a_warning(tmp_path):
    path = write(tmp_path / "p.yaml", doc(waiverWarningDays=14, waivers=[
        waiver(expires="2026-05-31"), waiver("file_owner_etc_passwd", expires="2026-06-10"),
        waiver("file_owner_etc_group", expires="2026-12-31")]))
    found = lint(path)
    expired = only(found, "waiver-expired")
    assert [(f.line, f.level) for f in expired] == [(line_of(path, "expires:", 0), "error")]
    soon = only(found, "waiver-expiring")
    assert [(f.line, f.level) for f in soon] == [(line_of(path, "expires:", 1), "warning")]
    assert "in 9 days" in soon[0].message
    assert not [f for f in lint(path, today=TODAY.replace(month=5)) if f.code.startswith("waiver-exp")]


def test_waiver_that_can_never_take_effect_is_a_warning(tmp_path):
    path = write(tmp_path / "p.yaml", doc(rules={"denySeverity": "high"}, waivers=[
        waiver("file_owner_etc_passwd"),          # medium: not denied at high anyway
        waiver("sshd_disable_root_login"),        # notapplicable in containers
        waiver("accounts_no_uid_except_zero")]))  # not in the standard profile
    found = only(lint(path), "waiver-no-effect")
    assert {f.level for f in found} == {"warning"} and len(found) == 3


# -- names and patterns ---------------------------------------------------------------------

def test_duplicate_policy_names_across_files(tmp_path):
    a = write(tmp_path / "a.yaml", doc("same", default=True))
    b = write(tmp_path / "sub" / "b.yaml", doc("same"))
    found = only(lint(tmp_path), "duplicate-name")
    assert {(f.path, f.line) for f in found} == {(a, line_of(a, "name:")), (b, line_of(b, "name:"))}


@pytest.mark.parametrize("pattern,ok", [
    ("*", True), ("team-*", True), ("kube-system", True), ("team-?", True), ("[a-c]*", True),
    ("Team-*", False), ("team_a", False), ("team.a", False), ("-team*", False),
    ("team-*-", False), ("a" * 64, False), ("x" * 64 + "*", False), ("a" * 63 + "*", True),
], ids=lambda v: str(v)[:20])
def test_namespace_patterns(pattern, ok):
    assert (policy_patterns.namespace_pattern_problem(pattern) == "") is ok


@pytest.mark.parametrize("pattern,ok", [
    ("*", True), ("docker.io/library/nginx:*", True), ("registry.example.com/team/*", True),
    ("*/team/*", True), ("localhost:5000/x", True), ("127.0.0.1:5000/x:*", True),
    ("registry.example.com/app:V1.0", True),          # tags may be uppercase
    ("docker-daemon:app:*", True), ("nginx*", True),
    ("Registry.example.com/app", False), ("registry.example.com/App:*", False),
    ("nginx", False), ("nginx:1.25", False), ("library/nginx:*", False),
    ("index.docker.io/library/nginx", False), ("docker.io/nginx:*", False),
    ("registry.example.com/app *", False),
], ids=lambda v: str(v))
def test_image_patterns(pattern, ok):
    assert (policy_patterns.image_pattern_problem(pattern) == "") is ok


def test_patterns_that_never_match_are_errors_at_their_line(tmp_path):
    path = write(tmp_path / "p.yaml", doc(
        match={"namespaces": ["Team-A"], "images": ["nginx"]},
        waivers=[waiver(namespaces=["team_b"], images=["docker.io/library/App:*"])]))
    found = only(lint(path), "pattern-never-matches")
    assert sorted(f.line for f in found) == sorted(
        [line_of(path, "Team-A"), line_of(path, "- nginx"), line_of(path, "team_b"),
         line_of(path, "App:")])


def test_policy_whose_namespaces_are_all_excluded(tmp_path):
    path = write(tmp_path / "p.yaml", doc(match={"namespaces": ["kube-system"],
                                                  "excludeNamespaces": ["kube-*"]}))
    assert "never applies" in only(lint(path), "pattern-never-matches")[0].message


# -- precedence inside one directory --------------------------------------------------------

def test_precedence_tie_shadowing_and_missing_default(tmp_path):
    write(tmp_path / "a.yaml", doc("a", priority=5, match={"namespaces": ["team-*"]}))
    b = write(tmp_path / "b.yaml", doc("b", priority=5, match={"namespaces": ["team-a"]}))
    write(tmp_path / "c.yaml", doc("c", priority=9))
    found = lint(tmp_path)
    assert {f.level for f in found} == {"warning"}
    tie = only(found, "precedence-tie")
    assert [f.path for f in tie] == [b]
    assert {f.path for f in only(found, "policy-shadowed")} == {str(tmp_path / "a.yaml"), b}
    assert only(found, "no-default")[0].path == str(tmp_path)


def test_disjoint_globs_are_not_a_tie(tmp_path):
    write(tmp_path / "a.yaml", doc("a", default=True, match={"namespaces": ["x"]}))
    write(tmp_path / "b.yaml", doc("b", match={"namespaces": ["team-a-*"]}))
    write(tmp_path / "c.yaml", doc("c", match={"namespaces": ["team-b-*"]}))
    assert lint(tmp_path) == []


def test_broad_break_glass_group_is_a_warning(tmp_path):
    path = write(tmp_path / "p.yaml", doc(breakGlass={"groups": ["system:authenticated"],
                                                      "users": ["ops-*"]}))
    assert len(only(lint(path), "break-glass")) == 2


# -- the command ----------------------------------------------------------------------------

def test_cli_exit_codes_and_file_line_output(tmp_path, capsys):
    good = write(tmp_path / "good" / "p.yaml", doc(default=True))
    assert main(["policy", "lint", good, "--today", "2026-06-01"]) == 0
    bad = write(tmp_path / "bad" / "p.yaml", doc(enforcement="block"))
    capsys.readouterr()
    assert main(["policy", "lint", str(tmp_path / "bad")]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{bad}:{line_of(bad, 'enforcement')}: error: spec.enforcement")
    write(tmp_path / "warn" / "p.yaml", doc())                     # no default: a warning
    assert main(["policy", "lint", str(tmp_path / "warn")]) == 0
    assert main(["policy", "lint", "--strict", str(tmp_path / "warn")]) == 1


def test_cli_lints_configmap_mount_once(tmp_path):
    """A ConfigMap volume holds ..data/ and ..2026_x/ with the real files: not linted twice."""
    real = tmp_path / "..2026_01_01"
    write(real / "p.yaml", doc(default=True))
    os.symlink(real.name, tmp_path / "..data")
    os.symlink("..data/p.yaml", tmp_path / "p.yaml")
    assert L.discover([str(tmp_path)]) == [(str(tmp_path), [str(tmp_path / "p.yaml")])]
    assert lint(tmp_path) == []


@pytest.mark.skipif(shutil.which("oscap") is None, reason="needs oscap")
def test_shipped_tailoring_is_accepted_by_oscap(tmp_path):
    """The example tailoring really changes what oscap evaluates: a second UID 0 account fails
    a rule that the plain standard profile does not select."""
    from webhook.scan import oscap
    from webhook.scan.results import ContentSpec
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
    (root / "etc/debian_version").write_text("12.5\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\ntoor:x:0:0::/:/bin/sh\n")
    ex = REPO / "policies" / "examples"
    from webhook import policy as P
    pol = P.load(str(ex / "tailored.yaml"))
    spec = ContentSpec(datastream=pol.datastream, datastream_sha256="", profile=pol.profile,
                       tailoring=pol.tailoring)
    work = tmp_path / "work"
    work.mkdir()
    arf = oscap.xccdf_eval(str(root), str(work), spec, oscap.OscapSettings(timeout_s=120))
    rules, _score = oscap.parse_arf(arf)
    by_id = {r.id.rsplit("content_rule_", 1)[-1]: r.result for r in rules}
    assert by_id["accounts_no_uid_except_zero"] == "fail"
    assert by_id["accounts_root_gid_zero"] == "pass"
    assert by_id.get("file_permissions_systemmap", "notselected") == "notselected"
    assert subprocess.run(["oscap", "info", pol.tailoring], capture_output=True).returncode == 0
