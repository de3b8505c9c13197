"""Partial unpack gives the verdict a full unpack gives (issue 15, scan/reach.py + partial.py).

Every profile the shipped and example policies use is evaluated on every test image both ways
— a partial unpack written from the content's filter, and a full umoci unpack — through the
real pipeline (umoci, oscap, the container marker, dpkg/rpm fixes); every rule result and every
OVAL definition result in the ARF (and the extra OVAL files' results) must be identical. The
mode each run took is asserted too, so a filter that silently became "everything" (or a pass
that always falls back) fails here instead of only costing time.
"""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile

import pytest
from lxml import etree

from tests.builders import REPO, imagebuild
from tests.builders import distros as d
from webhook import policy as P
from webhook.config import Settings
from webhook.scan import engine, reach
from webhook.scan.images import ImageRef
from webhook.scan.pipeline import Stages

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (umoci raw unpack keeps owners)"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("oscap", "umoci", "rpmbuild")),
                       reason="needs oscap, umoci and rpmbuild (scripts/install-deps.sh)"),
]
POLICIES = {name: REPO / "policies" / path for name, path in {
    "default": "default.yaml", "container-checks": "examples/container-checks.yaml",
    "tailored": "examples/tailored.yaml", "strict-anssi": "examples/strict-anssi.yaml",
    "legacy-waivers": "examples/legacy-waivers.yaml", "cves": "examples/cves.yaml"}.items()}
DEBIAN12_POLICIES = ("default", "container-checks", "tailored", "legacy-waivers")
# (image, policy, mode the partial run must end in)
CASES = [
    *[(f"debootstrap-{k}", p, "partial") for k in ("good", "bad") for p in DEBIAN12_POLICIES],
    *[(f"synthetic-{k}", p, "partial") for k in ("good", "bad", "two_layer", "whiteout", "opaque")
      for p in ("default", "container-checks")],
    ("synthetic-nondebian", "default", "partial"),
    *[(name, "default", "partial") for name in (
        "ubuntu2204-good", "ubuntu2204-bad", "distroless12-good", "distroless12-bad",
        "debian11-good", "debian11-bad", "alpine", "busybox", "scratch")],
    # RHEL 9's CIS profile looks for world-writable programs from /: everything; RHEL 8's
    # reads home directories named in /etc/passwd, which every image has: everything too
    *[(f"rhel9-{k}", "default", "full") for k in ("good", "bad")],
    *[(name, "default", "full") for name in ("rhel8-good", "rhel8-bad", "rhel8-bad-sqlite")],
    # Debian 13's standard profile runs SCE scripts: its filter is everything
    *[(f"debian13-{k}", "default", "full") for k in ("good", "bad")],
    ("debootstrap-bad", "strict-anssi", "full"),
    ("ubuntu2204-bad", "cves", "partial"),
]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """Two pipelines with their own state: partial unpack on and off."""
    out = {}
    for mode in ("partial", "full"):
        state = tmp_path_factory.mktemp(f"state-{mode}")
        out[mode] = engine.build_pipeline(Settings.from_env(
            state_dir=str(state), partial_unpack=(mode == "partial"), cve_feeds=("off",)))
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return imagebuild.build_synthetic_images(tmp_path_factory.mktemp("synthetic-layout"))


def _image(name: str, synthetic):
    if name.startswith("debootstrap-"):
        return imagebuild.debootstrap_root(name.split("-", 1)[1])
    if name.startswith("synthetic-"):
        return synthetic[name.split("-", 1)[1]]
    return d.ALL_IMAGES[name]()


def _scan(pipeline, img, content, name: str):
    """Pipeline.evaluate from the image's OCI layout (as the Docker daemon path does)."""
    work = tempfile.mkdtemp(prefix="partial-test-", dir=pipeline.settings.scratch_dir)
    try:
        ref = ImageRef("registry.invalid", f"test/{name}", "1", img.digest)
        key = pipeline.key(img.digest, content)
        stage = Stages()
        return pipeline.evaluate(str(img.layout), img.tag, work, ref, content, key,
                                 stage.timings, stage)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def oval_results(arf_gz: str) -> dict[tuple[int, str], str]:
    """(results document, definition id) -> result of every OVAL definition in an ARF."""
    out = {}
    with gzip.open(arf_gz) as fh:
        doc = -1
        for event, el in etree.iterparse(fh, events=("start", "end"), huge_tree=True):
            tag = etree.QName(el).localname
            if event == "start" and tag == "oval_results":
                doc += 1
            elif event == "end" and tag == "definition" and el.get("definition_id") \
                    and "oval-results" in el.tag:
                out[(doc, el.get("definition_id"))] = el.get("result")
            elif event == "end" and tag in ("definition", "criteria", "test", "object",
                                            "collected_objects", "system_data"):
                el.clear()
    return out


@pytest.mark.parametrize("name,policy,mode", CASES)
def test_partial_unpack_gives_the_full_unpack_results(pipelines, synthetic, name, policy, mode):
    img = _image(name, synthetic)
    content = P.load(str(POLICIES[policy])).content()
    part = _scan(pipelines["partial"], img, content, name)
    full = _scan(pipelines["full"], img, content, name)
    assert (part.state, part.product, part.error) == (full.state, full.product, full.error)
    assert {r.id: r.result for r in part.rules} == {r.id: r.result for r in full.rules}
    assert {o.id: o.result for o in part.oval} == {o.id: o.result for o in full.oval}
    assert full.unpack.get("mode", "full") == "full"
    if part.state == "done":
        assert part.rules and oval_results(part.arf_path) == oval_results(full.arf_path)
        assert part.unpack["mode"] == mode, part.unpack
        if mode == "partial":
            assert part.unpack["written"] < part.unpack["entries"]
    else:
        assert part.state == "unsupported", part.error


def test_every_shipped_profile_has_a_known_filter():
    """The filter of each profile the shipped and example policies use, as documented in the
    README: which are bounded, which are everything and why (a change in the content or the
    analysis shows here first)."""
    found = {}
    for name, path in POLICIES.items():
        for product, spec in P.load(str(path)).content().entries:
            if not os.path.exists(spec.datastream):
                continue
            r = reach.analyse(spec)
            found[(product, spec.profile.rsplit("_profile_", 1)[-1])] = r
    bounded = {k for k, r in found.items() if not r.everything}
    assert {("debian12", "standard"), ("debian11", "standard"), ("ubuntu2204", "standard"),
            ("rhel8", "cis_server_l1"), ("debian12", "container_baseline")} <= bounded
    assert "SCE" in found[("debian13", "standard")].everything
    assert "whole tree" in found[("debian12", "anssi_bp28_high")].everything
    assert "whole tree" in found[("rhel9", "cis_server_l1")].everything
    assert "rpmverifyfile_object" in found[("fedora", "standard")].everything


def test_registry_scans_stream_the_download_and_fall_back_when_the_check_fails(
        tmp_path, registry):
    """Through a registry (skopeo): the pass reads the layers while they download; an image
    whose product's filter the partial root does not cover is evaluated again in full, and
    both give the plain tools' failures (tests/scan/test_distros_plain.py pins those)."""
    from webhook.scan.images import parse
    content = P.load(str(POLICIES["default"])).content()
    pipeline = engine.build_pipeline(Settings.from_env(
        state_dir=str(tmp_path / "state"), insecure_registries=[registry.host],
        cve_feeds=("off",)))
    for name, mode in (("ubuntu2204-bad", "partial"), ("rhel8-bad", "full")):
        img = d.ALL_IMAGES[name]()
        ref = parse(registry.push(img.layout, img.tag, f"partial/{name}:1")).pinned(img.digest)
        res = pipeline.scan(ref, content)
        assert res.state == "done", res.error
        assert res.unpack["mode"] == mode, res.unpack
        if mode == "full":
            assert "/etc/passwd exists" in res.unpack["reason"]
            assert "unpack-full" in res.timings
        assert frozenset(r.id for r in res.rules if r.result == "fail") == frozenset(img.fails)
