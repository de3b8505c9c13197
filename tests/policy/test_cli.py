"""`scapgate policy show` (the auditor's summary) and `scapgate policy explain`."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from tests.builders.policies import REPO, doc, result, waiver, write
from webhook import policy as P
from webhook.cli import main
from webhook.policy.cli import explain_selection, selection_trace

pytestmark = pytest.mark.usefixtures("scap_datastream")


@pytest.fixture
def policies(tmp_path):
    d = tmp_path / "policies"
    write(d / "default.yaml", doc("default", default=True,
                                  match={"excludeNamespaces": ["kube-system"]}))
    write(d / "payments.yaml", doc(
        "payments", priority=50, match={"namespaces": ["payments"]},
        breakGlass={"groups": ["sre"]},
        waivers=[waiver("package_telnetd_removed", expires="2026-06-10", ticket="SEC-7",
                        approvedBy="ciso"),
                 waiver("file_owner_etc_passwd", expires="2026-09-30", ticket="SEC-8"),
                 waiver("file_owner_etc_group", expires="2026-05-01", ticket="SEC-9")]))
    write(d / "examples" / "strict.yaml", doc(
        "strict", priority=90, match={"namespaces": ["pci-*"]},
        rules={"denySeverity": "low"}))
    return d


def show(capsys, *args) -> str:
    capsys.readouterr()
    rc = main(["policy", "show", *args, "--today", "2026-06-01"])
    out = capsys.readouterr().out
    assert rc == 0
    return out


def test_show_text_summary(policies, capsys):
    out = show(capsys, str(policies))
    flat = " ".join(out.split())                     # wrapped lines read as one text
    assert f"{policies}: IN FORCE" in out and "examples, NOT in force" in out
    assert out.index("  payments\n") < out.index("  default\n")     # precedence order
    assert 'standard "Standard System Security Profile for Debian 12"' in flat
    assert "44 rules; 26 of them cannot be evaluated in a container image" in flat
    assert "denies on: a failing rule of severity medium or higher" in flat
    assert "no result yet: deny:" in flat and "scan error: deny: denied with the scan error" in flat
    assert "break-glass: group sre" in flat
    # every waiver with owner, ticket, expiry and status
    assert "payments / package_telnetd_removed: EXPIRES SOON: in 9 days" in out
    assert "owner: team-a; approved by ciso; ticket SEC-7" in flat
    assert "payments / file_owner_etc_passwd: in force, 121 days left" in out
    assert "payments / file_owner_etc_group: EXPIRED 31 days ago (no longer applies)" in out
    soon = out.split("Expiring soon or expired")[1]
    assert "SEC-7" in soon and "SEC-9" in soon and "SEC-8" not in soon


def test_show_days_option_widens_expiring_soon(policies, capsys):
    soon = show(capsys, str(policies), "--days", "200").split("Expiring soon or expired")[1]
    assert "SEC-8" in soon


def test_show_markdown(policies, capsys):
    out = show(capsys, str(policies), "--markdown")
    assert out.startswith("# scapgate policies (2026-06-01)")
    assert "| policy | waived | images | namespaces | owner | approved by | ticket | expires |" in out
    assert "| payments | `package_telnetd_removed` | `*` | `*` | team-a | ciso | SEC-7 | 2026-06-10 |" in out
    assert "### strict" in out


def test_show_reports_invalid_files(tmp_path, capsys):
    write(tmp_path / "bad.yaml", doc("bad", enforcement="block"))
    capsys.readouterr()
    assert main(["policy", "show", str(tmp_path)]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_show_shipped_policies(capsys):
    out = show(capsys, str(REPO / "policies"))
    for name in ("default", "strict-anssi-bp28", "legacy-billing", "container-baseline"):
        assert name in out
    assert "SEC-1042" in out


# -- explain --------------------------------------------------------------------------------

def _pset(policies):
    return P.load_set(str(policies))


@pytest.mark.parametrize("namespace", ["payments", "web", "kube-system", "pci-a"])
def test_selection_trace_agrees_with_select(policies, namespace):
    pset = _pset(policies)
    chosen, lines = explain_selection(pset, namespace, "docker.io/library/debian:12")
    assert chosen is pset.select(namespace, "docker.io/library/debian:12")
    matching = [p for p, why in selection_trace(pset, namespace, "docker.io/library/debian:12")
                if why == "matches"]
    assert (chosen is None) == (not matching)
    if chosen is None:
        assert lines[-1] == "No policy applies: the image is admitted without a scan."


def test_selection_trace_says_why_not(policies):
    trace = dict((p.name, why) for p, why in selection_trace(_pset(policies), "kube-system", "i"))
    assert trace == {"payments": "namespace kube-system is not in payments",
                     "default": "namespace kube-system is excluded (kube-system)"}


def _result_file(tmp_path, res) -> str:
    path = tmp_path / "scan.json"
    path.write_text(json.dumps({"image": "docker.io/library/debian:12",
                                "digest": "sha256:" + "d" * 64,
                                "result": dataclasses.asdict(res)}, default=str))
    return str(path)


def explain(capsys, *args):
    capsys.readouterr()
    rc = main(["policy", "explain", *args, "--today", "2026-06-01"])
    return rc, capsys.readouterr().out


def test_explain_rule_by_rule(policies, tmp_path, capsys):
    res = result(("package_telnetd_removed", "high", "fail"),
                 ("file_owner_etc_group", "medium", "fail"),
                 ("package_nis_removed", "low", "fail"),
                 ("file_owner_etc_passwd", "medium", "pass"),
                 ("sshd_disable_root_login", "medium", "notapplicable"))
    rc, out = explain(capsys, "debian:12", "--namespace", "payments", "--policy", str(policies),
                      "--result", _result_file(tmp_path, res))
    assert rc == 1
    assert "image:     docker.io/library/debian:12  (normalised from debian:12)" in out
    assert " -> 1. payments" in out and "Selected: payments" in out
    lines = {l.split()[2]: l for l in out.splitlines() if l.startswith("  ") and
             l.split()[:1] and l.split()[0] in ("DENY", "WAIVED", "ignore")}
    assert lines["package_telnetd_removed"].split()[0] == "WAIVED"
    assert "waiver SEC-7 by team-a until 2026-06-10" in lines["package_telnetd_removed"]
    assert lines["file_owner_etc_group"].split()[0] == "DENY"
    assert "waiver SEC-9 expired 2026-05-01" in lines["file_owner_etc_group"]
    assert lines["package_nis_removed"].split()[0] == "ignore"
    assert "below denySeverity medium" in lines["package_nis_removed"]
    assert "passed 1; notapplicable 1" in out
    assert "warning: waiver for package_telnetd_removed (SEC-7) expires 2026-06-10" in out
    assert out.rstrip().endswith("verdict: DENY (state fail, enforcement enforce, 1 enforced finding(s))")


def test_explain_allows_and_exits_zero(policies, tmp_path, capsys):
    res = result(("file_owner_etc_passwd", "medium", "pass"))
    rc, out = explain(capsys, "docker.io/library/debian:12", "--namespace", "web",
                      "--policy", str(policies), "--result", _result_file(tmp_path, res))
    assert rc == 0 and "Selected: default, the default policy" in out and "verdict: ALLOW" in out


def test_explain_without_policy(policies, capsys):
    rc, out = explain(capsys, "debian:12", "--namespace", "kube-system", "--policy", str(policies))
    assert rc == 0 and "admitted without a scan" in out


def test_explain_scan_error_uses_error_action(policies, tmp_path, capsys):
    res = result(state="error", error="oscap died")
    rc, out = explain(capsys, "debian:12", "--namespace", "web", "--policy", str(policies),
                      "--result", _result_file(tmp_path, res))
    assert rc == 1 and "Scan error: oscap died" in out and "verdict: DENY (state error" in out


def test_explain_says_what_was_detected_and_which_content_judged_it(policies, tmp_path,
                                                                   capsys):
    res = result(("file_owner_etc_passwd", "medium", "pass"))
    res.identity = {"distro": "debian", "version": "12", "package_db": "dpkg",
                    "pretty": "Debian GNU/Linux 12 (bookworm)",
                    "evidence": [["etc/os-release", "ID=debian\nVERSION_ID=\"12\""],
                                 ["var/lib/dpkg/status", "package database"]]}
    rc, out = explain(capsys, "debian:12", "--namespace", "web", "--policy", str(policies),
                      "--result", _result_file(tmp_path, res))
    assert rc == 0
    assert ("Detected: Debian GNU/Linux 12 (bookworm) (package database: dpkg) → debian12"
            in out)
    assert "  etc/os-release: ID=debian" in out and "  var/lib/dpkg/status: package database" in out
    assert "Judged with ssg-debian12-ds.xml, profile standard" in out


def test_explain_an_unsupported_image_names_the_action(policies, tmp_path, capsys):
    res = result(state="unsupported",
                 error="no SCAP content for alpine 3.20.3 (ID=alpine VERSION_ID=3.20.3): "
                       "not judged")
    res.product, res.identity = "", {"distro": "alpine", "version": "3.20.3", "evidence": [],
                                     "reason": "no SCAP content exists for Alpine Linux"}
    rc, out = explain(capsys, "alpine:3.20", "--namespace", "web", "--policy", str(policies),
                      "--result", _result_file(tmp_path, res))
    assert "→ no SCAP product" in out and "Why unsupported: no SCAP content exists for Alpine" in out
    assert "Not judged: no SCAP content for alpine 3.20.3" in out
    assert "The policy's action for unsupported images is 'deny'." in out
    assert rc == 1 and "verdict: DENY (state unsupported" in out


def test_explain_bad_reference(policies, capsys):
    rc, _out = explain(capsys, "Not A Ref", "--namespace", "web", "--policy", str(policies))
    assert rc == 2


def test_explain_scans_a_real_image(tmp_path, registry, images, scap_datastream):
    """End to end: registry, skopeo, umoci, oscap; then `scan --json` output judged again
    with --result gives the same verdict without scanning."""
    pdir = tmp_path / "policies"
    write(pdir / "default.yaml", doc("default", default=True, waivers=[
        waiver("package_inetutils-telnetd_removed", expires="2099-12-31", ticket="SEC-42")]))
    env = {**os.environ, "SCAPGATE_STATE_DIR": str(tmp_path / "state"),
           "SCAPGATE_CONTENT_DIR": str(scap_datastream.parent),
           "SCAPGATE_INSECURE_REGISTRIES": registry.host}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "webhook", *args], capture_output=True,
                              text=True, env=env, timeout=300, cwd=str(REPO))

    proc = run("policy", "explain", images["bad"], "--namespace", "web", "--policy", str(pdir))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("  ")]
    assert any(l.split()[:3] == ["WAIVED", "high", "package_inetutils-telnetd_removed"]
               for l in lines), proc.stdout
    assert any(l.split()[:3] == ["DENY", "medium", "file_permissions_etc_shadow"]
               for l in lines), proc.stdout
    assert images["bad"].digest in proc.stdout
    scanned = run("scan", images["bad"], "--policy", str(pdir), "--json")
    (tmp_path / "scan.json").write_text(scanned.stdout)
    again = run("policy", "explain", images["bad"], "--namespace", "web", "--policy", str(pdir),
                "--result", str(tmp_path / "scan.json"))
    assert again.returncode == 1
    assert again.stdout.split("Rule by rule")[1] == proc.stdout.split("Rule by rule")[1]
