"""Hostile image layers, pushed to a real registry and scanned by the real pipeline.

Each image is built byte by byte (tests/imagebuild.py, tests/hostile_fixtures.py), pushed to the
session's docker-registry and scanned with `scapgate scan` in a subprocess, with its own state
and scratch directories. Every case must end in a clear error (exit 2, the reason, `permanent`
set) or a correct verdict, and:
  * nothing is written outside the scan's scratch directory: a canary directory under /tmp,
    which the attacks aim at, is compared entry by entry before and after;
  * the scratch directory is empty afterwards;
  * memory (peak RSS of the scan's process tree, RUSAGE_CHILDREN of a small launcher) and
    disk (sampled use of the scratch or state directory) stay bounded.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import tracemalloc
import urllib.request
from pathlib import Path

import pytest

from tests.builders import imagebuild as ib
from tests.builders.hostile import (
    Canary,
    FakeRegistry,
    MiB,
    Scanner,
    file_bomb,
    header_bomb,
    hidden_layer,
    sparse_layer,
    split_layer,
    trailing_bomb,
)
from webhook.scan import unpack as unpack_mod
from webhook.scan.images import parse
from webhook.scan.pipeline import Pipeline, PipelineSettings
from webhook.scan.registry import Registry, RegistrySettings
from webhook.scan.rootfs import UnpackLimits, contained_target
from webhook.scan.unpack import check_layer, unpack

BOUNDED_RSS_MB = 150        # a refused image: python + skopeo, never the bomb's size
GOOD = ib.synthetic_debian_entries


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture
def canary():
    c = Canary()
    yield c
    c.remove()


@pytest.fixture(params=["partial", "full"])
def scanner(request, tmp_path, registry, scap_datastream):
    """Both unpack paths: the partial pass (the content's filter is bounded) and the full
    umoci unpack beside the header walk (scan/partial.py, scan/unpack.py)."""
    s = Scanner(tmp_path, [registry.host], scap_datastream.parent)
    s.env["SCAPGATE_PARTIAL_UNPACK"] = "true" if request.param == "partial" else "false"
    yield s
    assert s.scratch_is_empty(), f"scan left files in scratch: {list(s.scratch.iterdir())}"


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile-oci")


@pytest.fixture
def push(registry, layout, request):
    """push(layers) -> reference of a fresh image in the registry, named after the test."""
    def _push(layers, *, name: str | None = None) -> str:
        tag = (name or request.node.name).lower().replace("[", "-").replace("]", "")
        tag = "".join(c if c.isalnum() or c in "-." else "-" for c in tag)[:100]
        ib.write_image(layout, tag, layers)
        return registry.push(layout, tag, f"hostile/{tag}:1")
    return _push


def one_layer(entries) -> list[ib.Layer]:
    return [ib.layer_from_entries(entries)]


def replace(entries, path: str, new: ib.Entry) -> list[ib.Entry]:
    return [new if e.path == path else e for e in entries]


def unpacked(registry, ref: str, state: Path, root: Path, limits=UnpackLimits()) -> Path:
    """Fetch with the pipeline's own code into a layout cache, then unpack() into root."""
    pipeline = Pipeline(PipelineSettings(state_dir=str(state)),
                        Registry(RegistrySettings(insecure=frozenset({registry.host}))))
    image = parse(ref)
    digest, _ = pipeline.registry.resolve(image)
    lay, tag = pipeline.fetch(image.pinned(digest))
    unpack(lay, tag, str(root), limits)
    return root


def assert_error(run, *phrases: str, permanent: bool | None = True) -> None:
    assert run.rc == 2, run
    low = run.error.lower()
    for phrase in phrases:
        assert phrase.lower() in low, run
    if permanent is not None and "result" in run.doc:
        assert run.permanent is permanent, run


# -- paths that try to leave the root -----------------------------------------------------------

def escapes(c: Path) -> dict:
    """Layers that aim at the canary directory; each must be contained (correct verdict)."""
    rel = "../" * 12 + str(c).lstrip("/")
    return {
        "traversal": [GOOD() + [ib.file(f"{rel}/trav", "x")]],
        "traversal-dir": [GOOD() + [ib.directory(f"{rel}/dir/sub"), ib.file(f"{rel}/dir/sub/f")]],
        "absolute": [GOOD() + [ib.file(f"{c}/abs", "x"), ib.file(f"/{c}/dir/abs2", "x")]],
        "symlink-then-write": [GOOD() + [ib.symlink("evil", f"{c}/dir"),
                                         ib.file("evil/pwned", "x")]],
        "relative-symlink-then-write": [GOOD() + [ib.symlink("usr/evil", f"../{rel}/dir"),
                                                  ib.file("usr/evil/pwned", "x")]],
        "symlink-then-write-next-layer": [GOOD() + [ib.symlink("evil", f"{c}/dir")],
                                          [ib.file("evil/pwned", "x"),
                                           ib.symlink("evil2", str(c)),
                                           ib.file("evil2/secret", "overwritten")]],
        "symlink-dir-then-mkdir": [GOOD() + [ib.symlink("evil", str(c)),
                                             ib.directory("evil/dir/new")]],
        "whiteout-traversal": [GOOD(), [ib.whiteout(f"{rel}/victim"),
                                        ib.whiteout(f"{c}/secret")]],
        "opaque-traversal": [GOOD(), [ib.opaque(f"{rel}"), ib.opaque(f"{c}")]],
        "whiteout-through-symlink": [GOOD() + [ib.symlink("evil", str(c))],
                                     [ib.whiteout("evil/victim"), ib.opaque("evil/dir")]],
    }


ESCAPES = list(escapes(Path("/x")))


@pytest.mark.parametrize("case", ESCAPES)
def test_paths_cannot_leave_the_root(case, canary, scanner, push):
    layers = [ib.layer_from_entries(entries) for entries in escapes(canary.path)[case]]
    run = scanner.scan(push(layers))
    assert run.rc == 0, run                         # contained: the good root is judged
    assert run.doc["verdict"]["state"] == "pass"
    assert canary.untouched(), canary.snapshot()


@pytest.mark.parametrize("target", ["abs", "rel"])
def test_hardlink_to_a_host_file_is_refused(target, canary, scanner, push):
    link = (f"{canary.path}/secret" if target == "abs"
            else "../" * 12 + f"{str(canary.path).lstrip('/')}/secret")
    run = scanner.scan(push(one_layer(GOOD() + [ib.hardlink("etc/hl", link)])))
    assert_error(run, "link", permanent=True)
    assert os.stat(canary.path / "secret").st_nlink == 1
    assert canary.untouched()


# -- what the scanner reads must be the image, never the host ---------------------------------

def test_absolute_symlink_is_read_inside_the_image_not_on_the_host(canary, scanner, push):
    """The image's dpkg status is a link to an absolute path. In a container that path is the
    image's own file, listing inetutils-telnetd (a high failure). The host has a clean file at
    the same path: a scanner that follows the link on the host passes a bad image."""
    host_copy = canary.path / "status"
    host_copy.write_text(ib.dpkg_status())                        # clean, on the host
    canary.before = canary.snapshot()
    in_image = str(host_copy).lstrip("/")
    entries = replace(GOOD(), "var/lib/dpkg/status",
                      ib.symlink("var/lib/dpkg/status", str(host_copy)))
    dirs = [ib.directory("/".join(in_image.split("/")[:i]))
            for i in range(1, in_image.count("/") + 1)]
    entries += dirs + [ib.file(in_image, ib.dpkg_status(telnetd=True))]
    run = scanner.scan(push(one_layer(entries)))
    assert run.rc == 1, run
    assert "package_inetutils-telnetd_removed" in {r["id"] for r in run.doc["verdict"]["reasons"]}
    assert canary.untouched()


def test_relative_symlink_climbing_out_is_read_inside_the_image(canary, scanner, push):
    host_copy = canary.path / "status"
    host_copy.write_text(ib.dpkg_status(telnetd=True))            # bad, on the host
    canary.before = canary.snapshot()
    entries = replace(GOOD(), "var/lib/dpkg/status", ib.symlink(
        "var/lib/dpkg/status", "../" * 10 + str(host_copy).lstrip("/")))
    run = scanner.scan(push(one_layer(entries)))
    # inside the image the link dangles: no package database, nothing installed
    assert run.rc == 0, run
    assert canary.untouched()


def test_scanner_cache_through_a_symlink_stays_in_scratch(canary, scanner, push):
    """oscap's dpkginfo probe writes var/cache/apt/*.bin into the root; through an image's
    `var/cache/apt -> /somewhere` it wrote them on the host, as root."""
    entries = GOOD() + [ib.directory("var/cache"),
                        ib.symlink("var/cache/apt", f"{canary.path}/dir")]
    run = scanner.scan(push(one_layer(entries)))
    assert run.rc == 0, run
    assert not any((canary.path / "dir").iterdir())
    assert canary.untouched()


@pytest.mark.parametrize("rel,target,expected", [
    ((), "/etc/shadow", "etc/shadow"),
    (("etc",), "../../../../etc/shadow", "etc/shadow"),
    (("a", "b"), "/../../x/../y", "y"),
    (("usr", "bin"), "../lib/x", "usr/lib/x"),
])
def test_contained_target_resolves_like_a_container(tmp_path, rel, target, expected):
    for d in ("etc", "a/b", "x", "usr/bin", "usr/lib"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    assert contained_target(str(tmp_path), rel, target) == expected


def test_contained_target_keeps_loops_and_dangling_links_broken(tmp_path):
    from webhook.scan.rootfs import DANGLES, LOOP
    (tmp_path / "loop").symlink_to("/loop/x")
    (tmp_path / "file").write_text("")
    assert contained_target(str(tmp_path), (), "/loop/x/y") is LOOP
    assert contained_target(str(tmp_path), (), "/missing/../etc") is DANGLES
    assert contained_target(str(tmp_path), (), "/file/x") is DANGLES


def test_links_are_followed_inside_the_root_when_resolving(tmp_path):
    """`x/../y` where x is a link: a container resolves x first, then `..` (not lexically)."""
    root = ib.materialize([ib.directory("a"), ib.directory("a/b"), ib.directory("a/b/c"),
                           ib.symlink("x", "/a/b/c"), ib.file("a/b/real", "container sees me"),
                           ib.file("real", "lexical sees me"),
                           ib.symlink("etc-link", "/x/../real")], tmp_path / "root")
    from webhook.scan.rootfs import confine
    confine(str(root), UnpackLimits())
    assert (root / "etc-link").read_text() == "container sees me"
    assert not os.readlink(root / "etc-link").startswith("/")


# -- device nodes, FIFOs, setuid ----------------------------------------------------------------

@pytest.mark.parametrize("entry,what", [
    (ib.blockdev("etc/sda", 8, 0), "device node outside /dev"),
    (ib.chardev("usr/mem", 1, 1), "device node outside /dev"),
    (ib.fifo("etc/login.defs"), "fifo outside /dev"),
], ids=["block", "char", "fifo"])
def test_special_files_outside_dev_are_refused(entry, what, scanner, push):
    run = scanner.scan(push(one_layer(replace(GOOD(), entry.path, entry) + [entry])))
    assert_error(run, what, permanent=True)


def test_device_nodes_in_dev_are_dropped_like_a_runtime_does(registry, scanner, push, tmp_path):
    """A runtime mounts its own /dev; the host-side scanner must not open host devices or
    block on a FIFO through the image's, even when a file the scanner reads links to one."""
    entries = replace(GOOD(), "var/lib/dpkg/status",
                      ib.symlink("var/lib/dpkg/status", "/dev/fifo"))
    entries += [ib.directory("dev"), ib.chardev("dev/null", 1, 3), ib.blockdev("dev/sda", 8, 0),
                ib.chardev("dev/zero", 1, 5), ib.fifo("dev/fifo")]
    ref = push(one_layer(entries))
    run = scanner.scan(ref, env={"SCAPGATE_SCAN_TIMEOUT_S": "60"})
    assert run.rc == 0, run
    root = unpacked(registry, ref, tmp_path / "state2", tmp_path / "root")
    assert os.listdir(root / "dev") == []
    shutil.rmtree(tmp_path / "root")


def test_setuid_setgid_sticky_and_ownership_survive(registry, scanner, push, tmp_path):
    """SSG checks suid bits and group owners: modes and ids must be exact after unpack."""
    want = {"usr/bin/su": (0o4755, 0, 0), "usr/bin/wall": (0o2755, 0, 5),
            "tmp": (0o1777, 0, 0), "etc/shadow": (0o640, 0, ib.SHADOW_GID),
            "home/u/secret": (0o600, 1000, 1000)}
    entries = GOOD() + [ib.directory("usr/bin"), ib.directory("home"),
                        ib.directory("home/u", 0o700, 1000, 1000),
                        ib.file("usr/bin/su", b"\x7fELF", 0o4755),
                        ib.file("usr/bin/wall", b"\x7fELF", 0o2755, 0, 5),
                        ib.directory("tmp", 0o1777),
                        ib.file("home/u/secret", "x", 0o600, 1000, 1000)]
    ref = push(one_layer(entries))
    root = unpacked(registry, ref, tmp_path / "state2", tmp_path / "root")
    for path, (mode, uid, gid) in want.items():
        st = os.lstat(root / path)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid), path
    shutil.rmtree(root)
    run = scanner.scan(ref)
    assert run.rc == 0, run


# -- bombs: memory and disk stay bounded ---------------------------------------------------------

def test_decompression_bomb_is_refused_before_it_is_written(scanner, push):
    layer = file_bomb(1 << 30)                                # 1 GiB of zeros in ~1 MB
    assert layer.size < 2 * MiB
    run = scanner.scan(push([layer]), env={"SCAPGATE_MAX_UNPACK_BYTES": str(16 * MiB)})
    assert_error(run, f"limit of {16 * MiB} bytes", permanent=True)
    assert run.maxrss_mb < BOUNDED_RSS_MB, run
    assert run.peak_scratch_bytes < MiB, run
    assert run.seconds < 30, run
    print(f"bomb: 1 GiB in {layer.size} bytes, peak RSS {run.maxrss_mb:.0f} MB, "
          f"scratch peak {run.peak_scratch_bytes} bytes, {run.seconds:.1f} s")


@pytest.mark.parametrize("type_", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME],
                         ids=["pax", "gnu-longname"])
def test_oversized_extended_header_is_refused_without_reading_it(type_, scanner, push):
    """tarfile reads a PAX / long-name header whole: 512 MiB of header cost 1 GB of RSS."""
    run = scanner.scan(push([header_bomb(512 * MiB, type_)]))
    assert_error(run, "extended tar header", permanent=True)
    assert run.maxrss_mb < BOUNDED_RSS_MB, run
    print(f"header bomb {type_!r}: peak RSS {run.maxrss_mb:.0f} MB")


def test_multi_member_gzip_layer_is_read_whole(scanner, push):
    """umoci reads every gzip member; a checker that stopped after the first would judge
    another tar than the one unpacked (before: 'not a valid tar stream', a false error)."""
    run = scanner.scan(push([split_layer(GOOD(), parts=4)]))
    assert run.rc == 0, run


@pytest.mark.parametrize("hidden, bomb, says", [
    ([ib.blockdev("etc/sda", 8, 0)], 0, "device node outside /dev"),
    ([], 1 << 30, f"limit of {16 * MiB} bytes"),
], ids=["device", "bomb"])
def test_entries_in_later_gzip_members_are_checked(hidden, bomb, says, scanner, push):
    """Python's tarfile stream mode silently stopped after the first gzip member: a device
    node or a 1 GiB file in the second member reached umoci unchecked (measured: the node was
    created, the file written to scratch)."""
    layer = hidden_layer(GOOD(), hidden, bomb)
    run = scanner.scan(push([layer]), env={"SCAPGATE_MAX_UNPACK_BYTES": str(16 * MiB)})
    assert_error(run, says, permanent=True)
    assert run.peak_scratch_bytes < MiB, run


def test_data_after_the_archive_end_is_refused(scanner, push):
    """umoci inflates everything after the end marker (1 GiB of zeros: 7 s of CPU each time)."""
    run = scanner.scan(push([trailing_bomb(GOOD(), 1 << 30)]))
    assert_error(run, "after the end of its tar archive", permanent=True)
    assert run.seconds < 30 and run.maxrss_mb < BOUNDED_RSS_MB, run


def test_sparse_entries_are_refused(scanner, push):
    run = scanner.scan(push([sparse_layer()]))
    assert_error(run, "sparse", permanent=True)


def test_many_tiny_files_are_refused_at_the_limit(scanner, push):
    layer = ib.layer_from_entries([ib.directory("d")] + [ib.file(f"d/{i}") for i in range(20_000)])
    run = scanner.scan(push([layer]), env={"SCAPGATE_MAX_UNPACK_FILES": "1000"})
    assert_error(run, "limit of 1000 files", permanent=True)
    assert run.maxrss_mb < BOUNDED_RSS_MB and run.peak_scratch_bytes < MiB, run
    print(f"many files: peak RSS {run.maxrss_mb:.0f} MB, {run.seconds:.1f} s")


def test_header_walk_memory_does_not_grow_with_the_number_of_files(tmp_path):
    """Stream mode kept every TarInfo: 300k entries held 180 MB in the scan worker."""
    layer = ib.layer_from_entries(ib.file(f"d/f{i:06d}" + "x" * 80) for i in range(60_000))
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(layer.blob)
    tracemalloc.start()
    stats = check_layer(str(path), layer.digest, UnpackLimits(), unpack_mod.LayerStats(0, 0))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert stats.files == 60_000
    assert peak < 8 * MiB, peak


def test_too_many_layers_are_refused_before_download(scanner, push):
    tiny = ib.layer_from_entries([ib.file("x")])
    run = scanner.scan(push([ib.layer_from_entries(GOOD())] + [tiny] * 300))
    assert_error(run, "301 layers (limit 256)", permanent=True)


# -- layers that do not match their manifest ------------------------------------------------------

def _registry_blob(registry, digest: str) -> Path:
    hexd = digest.split(":")[1]
    return Path(registry.workdir, "data/docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data")


def test_layer_whose_digest_does_not_match_is_refused(registry, scanner, push):
    """The registry's storage is tampered with: the bytes served are not the digest's."""
    layer = ib.layer_from_entries(GOOD() + [ib.file("etc/unique", os.urandom(8).hex())])
    ref = push([layer])
    _registry_blob(registry, layer.digest).write_bytes(ib.mismatched_layer(layer).blob)
    run = scanner.scan(ref)
    assert_error(run, "does not match its digest", permanent=False)
    assert not (scanner.state / "oci/blobs/sha256" / layer.digest.split(":")[1]).exists()


def _put_manifest(registry, repo: str, manifest: dict, source_repo: str) -> str:
    for d in [manifest["config"]["digest"]] + [x["digest"] for x in manifest["layers"]]:
        req = urllib.request.Request(
            f"{registry.url}/v2/{repo}/blobs/uploads/?mount={d}&from={source_repo}",
            method="POST", data=b"")
        assert urllib.request.urlopen(req).status == 201
    req = urllib.request.Request(f"{registry.url}/v2/{repo}/manifests/1", method="PUT",
                                 data=json.dumps(manifest).encode(),
                                 headers={"Content-Type": ib.MT_MANIFEST})
    assert urllib.request.urlopen(req).status == 201
    return f"{registry.host}/{repo}:1"


@pytest.mark.parametrize("delta", [1, -1], ids=["larger", "smaller"])
def test_layer_whose_size_does_not_match_is_refused(delta, registry, scanner, push, layout):
    layer = ib.layer_from_entries(GOOD() + [ib.file("etc/unique", os.urandom(8).hex())])
    ref = push([layer])
    digest = json.loads((layout / "index.json").read_text())["manifests"][-1]["digest"]
    manifest = json.loads((layout / "blobs/sha256" / digest.split(":")[1]).read_bytes())
    manifest["layers"][0]["size"] += delta
    bad = _put_manifest(registry, f"hostile/size{delta + 1}", manifest,
                        ref.split("/", 1)[1].rsplit(":", 1)[0])
    run = scanner.scan(bad)
    assert_error(run, "manifest", "declares", permanent=True)


def test_registry_sending_an_endless_layer_cannot_fill_the_disk(scanner):
    """skopeo writes whatever a registry sends until the digest check at its end: the fetch
    is capped at the largest size the manifest declares (here 1 byte, so 4 MiB)."""
    fake = FakeRegistry("endless")
    try:
        run = scanner.scan(f"{fake.host}/evil:1", meter=scanner.state,
                           env={"SCAPGATE_INSECURE_REGISTRIES": fake.host})
    finally:
        fake.close()
    assert_error(run, "larger than its manifest declares", permanent=True)
    assert run.peak_scratch_bytes < 8 * MiB, run           # here: the state dir, sampled
    assert fake.served < 256 * MiB, fake.served
