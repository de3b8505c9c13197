"""scapgate's verdict on every distribution equals what the plain tools give with the right
content (tests/scan/test_distros_plain.py pins those).

Each image goes through a real registry, skopeo, umoci and oscap, judged with the shipped
default policy's content set: the scan identifies the image, picks its product's datastream and
profile, and must find exactly the failing rules the plain tools find with that content — for
RPM roots only with the rpmdb fix, for distroless only with status.d merged and dpkg's tables.
Images no SCAP content exists for are "unsupported", never passed.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest

from tests.builders import REPO
from tests.builders import distros as d
from webhook import policy as P
from webhook.config import Settings
from webhook.scan import engine
from webhook.scan.images import parse

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (umoci raw unpack keeps owners)"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("oscap", "umoci", "rpmbuild")),
                       reason="needs oscap, umoci and rpmbuild (scripts/install-deps.sh)"),
]
TODAY = dt.date(2026, 12, 3)
R = "xccdf_org.ssgproject.content_rule_"


@pytest.fixture(scope="module")
def default_policy() -> P.Policy:
    return P.load(str(REPO / "policies" / "default.yaml"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, registry):
    state = tmp_path_factory.mktemp("distro-state")
    return engine.build_pipeline(Settings.from_env(state_dir=str(state),
                                                   insecure_registries=[registry.host]))


@pytest.fixture(scope="module")
def scan(registry, pipeline, default_policy):
    """scan(name) -> (DistroImage, ScanResult) under the default policy's content set."""
    done = {}

    def run(name: str):
        if name not in done:
            img = d.ALL_IMAGES[name]()
            ref = registry.push(img.layout, img.tag, f"distros/{name}:1")
            pinned = parse(ref).pinned(img.digest)
            done[name] = (img, pipeline.scan(pinned, default_policy.content()))
        return done[name]
    return run


def fails(result) -> frozenset:
    return frozenset(r.id for r in result.rules if r.result == "fail")


@pytest.mark.parametrize("name,product,profile", [
    ("rhel9-good", "rhel9", "cis_server_l1"), ("rhel9-bad", "rhel9", "cis_server_l1"),
    ("rhel8-bad", "rhel8", "cis_server_l1"),
    ("ubuntu2204-good", "ubuntu2204", "standard"), ("ubuntu2204-bad", "ubuntu2204", "standard"),
    ("distroless12-good", "debian12", "standard"), ("distroless12-bad", "debian12", "standard"),
])
def test_each_image_is_judged_with_its_own_content_as_the_plain_tools_judge_it(
        scan, name, product, profile):
    img, res = scan(name)
    assert res.state == "done", res.error
    assert res.product == product and res.profile.endswith("_" + profile)
    assert res.tools["content"] == f"ssg-{product}-ds.xml"
    assert fails(res) == frozenset(img.fails), sorted(fails(res) ^ frozenset(img.fails))


@pytest.mark.slow
@pytest.mark.parametrize("suite,product", [("bullseye", "debian11"), ("trixie", "debian13")])
def test_debian_11_and_13_are_judged_with_their_own_content(scan, suite, product):
    """Real debootstrap roots: the bad variant fails the telnet server and /etc/shadow rules
    with its own release's content, exactly as the plain tools find."""
    for kind in ("good", "bad"):
        img, res = scan(f"{product}-{kind}")
        assert (res.state, res.product) == ("done", product), res.error
        assert fails(res) == frozenset(img.fails), (kind, sorted(fails(res) ^ set(img.fails)))
    assert {R + "package_inetutils-telnetd_removed", R + "file_permissions_etc_shadow"} <= \
        fails(scan(f"{product}-bad")[1])


def test_every_rule_result_equals_the_plain_run(scan, tmp_path):
    """Not only the failures: every rule's result on the bad RHEL 9 root, rule by rule."""
    img, res = scan("rhel9-bad")
    plain = d.scan_image(img, tmp_path / "root")
    assert {r.id: r.result for r in res.rules} == plain.rules


@pytest.mark.parametrize("name,rules", [
    ("rhel9-bad", {"package_telnet-server_removed", "file_permissions_etc_shadow"}),
    ("ubuntu2204-bad", {"package_inetutils-telnetd_removed", "file_permissions_etc_shadow"}),
    ("distroless12-bad", {"package_inetutils-telnetd_removed"}),
])
def test_failing_variants_are_denied_naming_the_rule(scan, default_policy, name, rules):
    img, res = scan(name)
    v = P.evaluate(res, default_policy, image=name, namespace="team-a", today=TODAY)
    assert (v.state, v.allowed) == ("fail", False)
    assert rules <= {r.id for r in v.reasons}


@pytest.mark.parametrize("name,found", [
    ("alpine", "no SCAP content for alpine 3.20.3 (ID=alpine VERSION_ID=3.20.3): not judged"),
    ("busybox", "no SCAP content for busybox"),
    ("scratch", "no SCAP content for none"),
])
def test_images_without_scap_content_are_unsupported_never_passed(scan, default_policy, name,
                                                                   found):
    img, res = scan(name)
    assert (res.state, res.product, res.rules) == ("unsupported", "", [])
    assert res.error.startswith(found) and res.error.endswith(": not judged")
    v = P.evaluate(res, default_policy, image=name, namespace="team-a", today=TODAY)
    assert (v.state, v.allowed) == ("unsupported", True)        # the shipped action: warn
    strict = P.from_document({**_doc(default_policy), "spec": {
        **_doc(default_policy)["spec"], "actions": {"unsupported": "deny"}}})
    assert not P.evaluate(res, strict, image=name, namespace="team-a", today=TODAY).allowed


def test_a_product_the_policy_names_no_content_for_is_unsupported(scan, pipeline, registry):
    """A policy written for Debian 12 only: a RHEL image is not judged with Debian's content."""
    img = d.rpm_root("bad")
    ref = parse(registry.push(img.layout, img.tag, "distros/rhel9-bad:1")).pinned(img.digest)
    debian_only = P.from_document(_debian_only())
    res = pipeline.scan(ref, debian_only.content())
    assert (res.state, res.product) == ("unsupported", "rhel9")
    assert "names no SCAP content for rhel9" in res.error and "debian12" in res.error


def _doc(pol: P.Policy) -> dict:
    import yaml
    return yaml.safe_load(Path(pol.path).read_text())


def _debian_only() -> dict:
    import yaml
    doc = yaml.safe_load((REPO / "policies" / "default.yaml").read_text())
    doc["spec"]["content"] = {"products": {"debian12": {"profile": "standard"}}}
    return doc
