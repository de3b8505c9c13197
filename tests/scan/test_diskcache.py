"""The state disk stays bounded: OCI layouts and blobs (webhook/scan/diskcache.py), and reports.

Real layouts fetched by skopeo from the test registry; real scans where the wiring matters.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.builders import imagebuild as ib
from webhook.scan import content as content_mod
from webhook.scan.diskcache import OciCache, trim_reports
from webhook.scan.images import parse
from webhook.scan.oscap import OscapSettings
from webhook.scan.pipeline import Pipeline, PipelineSettings
from webhook.scan.registry import Registry as RegistryClient
from webhook.scan.registry import RegistrySettings


@pytest.fixture
def make_pipeline(tmp_path, registry):
    count = iter(range(100))

    def make(budget: int) -> Pipeline:
        """A pipeline with a state dir of its own."""
        settings = PipelineSettings(state_dir=str(tmp_path / f"state{next(count)}"),
                                    scratch_dir=str(tmp_path / "scratch"),
                                    oscap=OscapSettings(timeout_s=300),
                                    oci_cache_bytes=budget, reports_bytes=budget)
        reg = RegistryClient(RegistrySettings(timeout_s=30,
                                              insecure=frozenset({registry.host})))
        return Pipeline(settings, reg)
    return make


def pinned(image):
    return parse(str(image)).pinned(image.digest)


def blob_names(p: Pipeline) -> set[str]:
    return set(os.listdir(p.cache.blobs))


def blob_bytes(p: Pipeline) -> int:
    return sum(os.path.getsize(os.path.join(p.cache.blobs, n)) for n in os.listdir(p.cache.blobs))


def layouts(p: Pipeline) -> set[str]:
    return {n for n in os.listdir(p.cache.layouts) if not n.startswith(".")}


def name(image) -> str:
    return image.digest.replace(":", "-")


def fetch(p: Pipeline, image) -> set[str]:
    """Fetch an image (marking it most recently used); returns the blobs it needs."""
    layout, _ = p.fetch(pinned(image))
    os.utime(layout, (time.time(), time.time() + len(os.listdir(p.cache.layouts))))
    refs = p.cache.references(layout)
    assert refs, "a fetched layout references its manifest, config and layers"
    return refs


def test_least_recently_used_layout_is_evicted_to_fit_the_budget(make_pipeline, images):
    probe = make_pipeline(1 << 40)
    good_refs = fetch(probe, images["good"])
    one_image = blob_bytes(probe)

    p = make_pipeline(one_image + one_image // 2)      # room for one image, not two
    fetch(p, images["good"])
    bad_refs = fetch(p, images["bad"])
    assert not good_refs & bad_refs, "the two images share no blob"
    report = p.cache.trim()
    assert not report.skipped
    assert layouts(p) == {name(images["bad"])}
    assert blob_names(p) == bad_refs                 # good's blobs went with its layout
    assert blob_bytes(p) <= p.cache.max_bytes
    assert report.after == blob_bytes(p) and report.before > report.after

    fetch(p, images["good"])                          # used again: now bad is the oldest
    p.cache.trim()
    assert layouts(p) == {name(images["good"])}
    assert blob_names(p) == good_refs


def test_a_blob_shared_with_a_kept_image_stays(make_pipeline, images):
    """two_layer and whiteout are built on the same lower layer: evicting one keeps it."""
    probe = make_pipeline(1 << 40)
    a = fetch(probe, images["two_layer"])
    b = fetch(probe, images["whiteout"])
    shared = a & b
    assert shared, "the builder gives both images the same lower layer"
    sizes = {n: os.path.getsize(os.path.join(probe.cache.blobs, n)) for n in a | b}

    p = make_pipeline(sum(sizes[n] for n in b))        # exactly one image: the newer
    fetch(p, images["two_layer"])
    fetch(p, images["whiteout"])
    p.cache.trim()
    assert layouts(p) == {name(images["whiteout"])}
    assert blob_names(p) == b and shared <= blob_names(p)


def test_nothing_is_deleted_while_a_scan_uses_the_cache(make_pipeline, images):
    p = make_pipeline(0)
    refs = fetch(p, images["good"])
    with p.cache.in_use():
        assert p.cache.trim().skipped
        assert layouts(p) == {name(images["good"])} and blob_names(p) == refs
    assert not p.cache.trim().skipped
    assert layouts(p) == set() and blob_names(p) == set()


def test_leftovers_and_broken_layouts_are_removed(make_pipeline, images):
    """A fetch that died half-way leaves a .tmp layout and unreferenced blobs; a layout whose
    index is garbage or whose blobs are gone cannot be used: all of it goes at the next trim,
    and the kept image is untouched."""
    p = make_pipeline(1 << 40)
    refs = fetch(p, images["good"])
    (Path(p.cache.layouts) / ".sha256-dead-x1y2").mkdir()
    stray = Path(p.cache.blobs) / ("e" * 64)
    stray.write_bytes(b"half a layer")
    broken = Path(p.cache.layouts) / ("sha256-" + "f" * 64)
    broken.mkdir()
    (broken / "index.json").write_text("{not json")
    missing = Path(p.cache.layouts) / ("sha256-" + "d" * 64)
    missing.mkdir()
    (missing / "index.json").write_text(json.dumps(
        {"manifests": [{"digest": "sha256:" + "c" * 64}]}))

    report = p.cache.trim()
    assert sorted(os.listdir(p.cache.layouts)) == [name(images["good"])]
    assert blob_names(p) == refs
    assert report.blobs_removed == 1
    assert set(report.layouts_removed) == {broken.name, missing.name}


def test_scans_keep_the_cache_in_budget_and_an_evicted_image_scans_again(
        make_pipeline, images, scap_datastream):
    """Wired into Pipeline.scan: after each scan the cache is trimmed; a later scan of an
    evicted image fetches it again and reaches the same verdict."""
    content = content_mod.single(str(scap_datastream), ib.STANDARD_PROFILE)
    probe = make_pipeline(1 << 40)
    fetch(probe, images["good"])
    good = blob_bytes(probe)
    fetch(probe, images["bad"])
    bad = blob_bytes(probe) - good
    p = make_pipeline(max(good, bad))                   # either image, not both
    first = p.scan(pinned(images["good"]), content)
    p.scan(pinned(images["bad"]), content)
    assert layouts(p) == {name(images["bad"])}
    assert blob_bytes(p) <= p.cache.max_bytes
    again = p.scan(pinned(images["good"]), content)
    assert again.error == first.error == ""
    assert [r.id for r in again.failed()] == [r.id for r in first.failed()] == []
    assert layouts(p) == {name(images["good"])}


def test_reports_are_trimmed_oldest_first(tmp_path):
    reports = tmp_path / "reports"
    reports.mkdir()
    for i in range(10):
        f = reports / f"r{i}.arf.xml.gz"
        f.write_bytes(b"x" * 1000)
        os.utime(f, (1_000_000 + i, 1_000_000 + i))
    assert trim_reports(str(reports), 4500) == 6
    assert sorted(os.listdir(reports)) == [f"r{i}.arf.xml.gz" for i in range(6, 10)]
    assert trim_reports(str(reports), 4500) == 0
    assert trim_reports(str(tmp_path / "absent"), 0) == 0


def test_cache_of_a_missing_state_dir_trims_to_nothing(tmp_path):
    cache = OciCache(str(tmp_path / "never-used"), 0)
    report = cache.trim()
    assert report.before == report.after == 0 and not report.layouts_removed
