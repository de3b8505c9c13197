"""`scapgate scan` end to end: real registry, real images, real skopeo, umoci and oscap.

The answer must be the gate's answer: exit 0 allow, 1 deny (naming the failing rules),
2 could not scan (with the reason).
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import builders

REPO = str(builders.REPO)
SCAPGATE = [sys.executable, "-m", "webhook"]
POLICY = os.path.join(REPO, "policies", "default.yaml")


@pytest.fixture
def scan(tmp_path, registry, scap_datastream):
    """Run `scapgate scan` as a user would, with its own state dir."""
    def run(image, *args, env=None, timeout=300):
        e = {**os.environ, "SCAPGATE_STATE_DIR": str(tmp_path / "state"),
             "SCAPGATE_CONTENT_DIR": str(scap_datastream.parent),
             "SCAPGATE_INSECURE_REGISTRIES": registry.host, **(env or {})}
        return subprocess.run([*SCAPGATE, "scan", image, "--policy", POLICY, *args],
                              capture_output=True, text=True, env=e, timeout=timeout, cwd=REPO)
    return run


@pytest.mark.parametrize("name,rc", [
    ("good", 0), ("bad", 1), ("two_layer", 0), ("whiteout", 0), ("opaque", 0), ("multiarch", 0),
])
def test_verdicts(scan, images, name, rc):
    proc = scan(images[name])
    assert proc.returncode == rc, proc.stdout + proc.stderr
    assert images[name].digest in proc.stdout or name == "multiarch"


def test_bad_names_failing_rule_with_severity_and_title(scan, images):
    proc = scan(images["bad"])
    assert proc.returncode == 1
    assert "medium  file_permissions_etc_shadow  Verify Permissions on shadow File" in proc.stdout
    assert proc.stdout.index("high    package_inetutils") < proc.stdout.index("medium  file_perm")
    assert "verdict: DENY" in proc.stdout


def test_progress_of_each_stage_on_stderr(scan, images):
    proc = scan(images["good"])
    for stage in ("resolve", "fetch", "unpack", "check", "evaluate"):
        assert f"scapgate: {stage}" in proc.stderr
    # which unpack ran, and how much of the image it wrote (scan/partial.py)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("unpack:"))
    assert line.startswith("unpack:  partial, ") and "entries and" in line


def test_json_for_machines(scan, images):
    proc = scan(images["bad"], "--json")
    doc = json.loads(proc.stdout)
    assert doc["digest"] == images["bad"].digest
    assert doc["verdict"]["state"] == "fail" and not doc["verdict"]["allowed"]
    # worst first: the high telnetd rule, then the medium shadow permissions
    assert [r["id"] for r in doc["verdict"]["reasons"]] == [
        "package_inetutils-telnetd_removed", "file_permissions_etc_shadow"]
    assert doc["result"]["key"]["digest"] == images["bad"].digest
    assert doc["result"]["os_release"]["VERSION_ID"] == "12"
    assert all(r["result"] != "notselected" for r in doc["result"]["rules"])
    u = doc["result"]["unpack"]
    assert u["mode"] == "partial" and 0 < u["written"] <= u["entries"]


def test_multiarch_keys_by_platform_manifest(scan, images):
    """An index is judged per platform: amd64 passes, arm64 fails, each under its own digest."""
    amd = json.loads(scan(images["multiarch"], "--json").stdout)
    proc = scan(images["multiarch"], "--json", "--platform", "linux/arm64")
    arm = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert amd["verdict"]["state"] == "pass" and arm["verdict"]["state"] == "fail"
    assert amd["digest"] != arm["digest"] != images["multiarch"].digest
    assert "package_inetutils-telnetd_removed" in {r["id"] for r in arm["verdict"]["reasons"]}


def test_missing_platform(scan, images):
    proc = scan(images["multiarch"], "--platform", "linux/s390x")
    assert proc.returncode == 2 and "no manifest for platform linux/s390x" in proc.stderr


def test_alpine_is_unsupported_never_a_pass(scan, images, tmp_path):
    """No SCAP content exists for Alpine: the shipped policy admits it with a warning naming
    what was found (exit 0), a policy whose unsupported action is deny denies it (exit 1);
    either way the state is unsupported, never pass."""
    proc = scan(images["nondebian"], "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert (doc["verdict"]["state"], doc["verdict"]["allowed"], doc["product"]) == \
        ("unsupported", True, "")
    assert doc["verdict"]["detail"] == \
        "no SCAP content for alpine 3.20.3 (ID=alpine VERSION_ID=3.20.3): not judged"
    assert doc["identity"]["distro"] == "alpine" and doc["identity"]["evidence"]
    strict = yaml.safe_load(Path(POLICY).read_text())
    strict["spec"]["actions"]["unsupported"] = "deny"
    (tmp_path / "strict.yaml").write_text(yaml.safe_dump(strict))
    proc = scan(images["nondebian"], "--policy", str(tmp_path / "strict.yaml"))
    assert proc.returncode == 1 and "UNSUPPORTED (denied" in proc.stdout, proc.stdout
    assert "no SCAP content for alpine 3.20.3" in proc.stderr


def test_debian_12_is_judged_with_its_own_content(scan, images):
    doc = json.loads(scan(images["bad"], "--json").stdout)
    assert (doc["product"], doc["result"]["tools"]["content"]) == \
        ("debian12", "ssg-debian12-ds.xml")
    assert doc["profile"] == "xccdf_org.ssgproject.content_profile_standard"
    assert any(p.endswith("os-release") for p, _ in doc["identity"]["evidence"])


def test_missing_image(scan, registry):
    proc = scan(f"{registry.host}/nothing/here:1")
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_unreachable_registry(scan):
    proc = scan("127.0.0.1:9/x/y:1", env={"SCAPGATE_REGISTRY_TIMEOUT_S": "5"})
    assert proc.returncode == 2 and "unreachable" in proc.stderr


def test_invalid_reference(scan):
    proc = scan("Not/A:Valid::Ref")
    assert proc.returncode == 2 and "invalid" in proc.stderr


def test_html_report_on_demand(scan, images, tmp_path):
    out = tmp_path / "report.html"
    proc = scan(images["bad"], "--report", str(out))
    assert proc.returncode == 1
    html = out.read_text()
    assert "file_permissions_etc_shadow" in html and "<html" in html.lower()


def test_compressed_arf_kept(scan, images, tmp_path):
    doc = json.loads(scan(images["good"], "--json").stdout)
    with gzip.open(doc["result"]["arf_path"]) as fh:
        assert b"asset-report-collection" in fh.read(4096)


def test_shared_layer_fetched_once(scan, images, tmp_path):
    """The content-addressed cache keeps one copy of each blob across images."""
    scan(images["good"])
    scan(images["two_layer"])
    blobs = tmp_path / "state" / "oci" / "blobs" / "sha256"
    names = sorted(os.listdir(blobs))
    assert len(names) == len(set(names)) and len(names) >= 4


@pytest.fixture(scope="module")
def private_good(auth_registry, synthetic_layout):
    built = synthetic_layout["good"]
    return auth_registry.push(built.layout, built.tag, "private/good:1")


class TestAuthRegistry:
    def _env(self, auth_registry):
        return {"SCAPGATE_INSECURE_REGISTRIES": "",
                "SCAPGATE_CERTS_DIR": str(auth_registry.certs_d)}

    def test_without_credentials(self, scan, auth_registry, private_good):
        proc = scan(private_good, env=self._env(auth_registry))
        assert proc.returncode == 2
        assert f"no valid credentials for registry {auth_registry.host}" in proc.stderr

    def test_with_credentials(self, scan, auth_registry, private_good):
        proc = scan(private_good, "--auth", str(auth_registry.auth_json),
                    env=self._env(auth_registry))
        assert proc.returncode == 0, proc.stderr

    def test_untrusted_ca_is_refused(self, scan, auth_registry, private_good):
        proc = scan(private_good, "--auth", str(auth_registry.auth_json),
                    env={"SCAPGATE_INSECURE_REGISTRIES": ""})
        assert proc.returncode == 2 and "x509" in proc.stderr


class TestDebootstrap:
    """The truth: real Debian 12 roots made by debootstrap."""

    def test_clean_debian_is_allowed(self, scan, debian_images):
        proc = scan(debian_images["good"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Debian GNU/Linux 12" in proc.stdout

    def test_broken_debian_is_denied_naming_rules(self, scan, debian_images):
        proc = scan(debian_images["bad"])
        assert proc.returncode == 1
        assert "high    package_inetutils-telnetd_removed" in proc.stdout
        assert "medium  file_permissions_etc_shadow" in proc.stdout


def test_own_oval_checks_catch_what_kernel_rules_cannot(scan, debian_images):
    """PermitRootLogin yes passes the stock standard profile in an image (its sshd rules are
    notapplicable); scapgate's container OVAL definitions catch it."""
    policy = os.path.join(REPO, "policies", "examples", "container-checks.yaml")
    proc = scan(debian_images["bad"], "--json", "--policy", policy)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    true_ids = {r["id"] for r in doc["verdict"]["reasons"] if r["kind"] == "oval"}
    assert true_ids == {"oval:io.scapgate:def:1", "oval:io.scapgate:def:2", "oval:io.scapgate:def:3"}
    clean = json.loads(scan(debian_images["good"], "--json", "--policy", policy).stdout)
    assert clean["verdict"]["state"] == "pass"
    assert {o["result"] for o in clean["result"]["oval"]} == {"false"}
