"""The test images and registries are what they claim to be.

Every other test trusts these fixtures to produce a given verdict, so check them against the
tools themselves: tar readers, umoci, skopeo, the registry and oscap run directly (not through
webhook code, which is what they will later test).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.builders import imagebuild as ib
from tests.builders.imagebuild import BAD_ROOT_FAILS, RULE_PREFIX

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, umoci)")


def members(layer: ib.Layer) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(layer.blob), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def skopeo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- layers

HOSTILE = [
    ib.file("../escape", "x"),
    ib.file("/etc/absolute", "x"),
    ib.symlink("etc", "/"),
    ib.file("etc/through-symlink", "x"),
    ib.file("bin/su", "x", mode=0o4755),
    ib.hardlink("bin/su-link", "bin/su"),
    ib.chardev("dev/null", 1, 3),
    ib.blockdev("dev/sda", 8, 0),
    ib.whiteout("var/lib/gone"),
    ib.opaque("opt/app"),
]


def test_hostile_entries_are_written_verbatim():
    """Nothing is cleaned: the pipeline must meet these names exactly as an attacker wrote them."""
    got = members(ib.layer_from_entries(HOSTILE))
    assert list(got) == ["../escape", "/etc/absolute", "etc", "etc/through-symlink", "bin/su",
                         "bin/su-link", "dev/null", "dev/sda", "var/lib/.wh.gone",
                         "opt/app/.wh..wh..opq"]
    assert got["etc"].issym() and got["etc"].linkname == "/"
    assert got["bin/su"].mode == 0o4755
    assert got["bin/su-link"].islnk() and got["bin/su-link"].linkname == "bin/su"
    assert got["dev/null"].ischr() and (got["dev/null"].devmajor, got["dev/null"].devminor) == (1, 3)
    assert got["dev/sda"].isblk()


def test_materialize_refuses_to_escape(tmp_path):
    with pytest.raises(ValueError):
        ib.materialize([ib.file("../escape", "x")], tmp_path / "root")
    assert not (tmp_path / "escape").exists()


def test_layer_digests_are_deterministic_and_true():
    """Same entries, same bytes; digest, size and diff_id describe the blob."""
    a, b = (ib.layer_from_entries(ib.synthetic_debian_entries()) for _ in range(2))
    assert a == b
    assert a.digest == a.actual_digest == "sha256:" + hashlib.sha256(a.blob).hexdigest()
    assert a.size == len(a.blob)
    import gzip
    assert a.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(a.blob)).hexdigest()
    assert all(m.mtime == ib.FIXED_MTIME and m.uname == "" for m in members(a).values())


@ROOT_ONLY
def test_layer_from_dir_keeps_owner_mode_links_devices(tmp_path):
    """Pitfall 5: uid, gid and every mode bit survive (a 0666 shadow must stay 0666)."""
    root = tmp_path / "root"
    ib.materialize([ib.directory("etc"), ib.file("etc/shadow", "s", 0o666, 0, 42),
                    ib.file("bin/tool", "t", 0o4755, 1234, 5678), ib.hardlink("bin/tool2", "bin/tool"),
                    ib.symlink("bin/sh", "dash"), ib.chardev("dev/null", 1, 3), ib.fifo("run/pipe")], root)
    got = members(ib.layer_from_dir(root))
    assert (got["etc/shadow"].mode, got["etc/shadow"].uid, got["etc/shadow"].gid) == (0o666, 0, 42)
    assert (got["bin/tool"].mode, got["bin/tool"].uid, got["bin/tool"].gid) == (0o4755, 1234, 5678)
    assert got["bin/tool2"].islnk() and got["bin/tool2"].linkname == "bin/tool"
    assert got["bin/sh"].issym() and got["bin/sh"].linkname == "dash"
    assert got["dev/null"].ischr() and got["run/pipe"].isfifo()
    assert ib.layer_from_dir(root).digest == ib.layer_from_dir(root).digest
    assert "run/pipe" not in members(ib.layer_from_dir(root, exclude=("run",)))


@ROOT_ONLY
def test_umoci_round_trip_keeps_metadata(tmp_path):
    """What we write is what the pipeline's unpacker restores."""
    layout = tmp_path / "oci"
    ib.write_image(layout, "t", [ib.layer_from_entries(
        [ib.directory("etc"), ib.file("etc/shadow", "s", 0o666, 0, 42), ib.file("bin/x", "x", 0o4755)])])
    root = ib.umoci_unpack(layout, "t", tmp_path / "root")
    shadow, tool = (root / "etc/shadow").stat(), (root / "bin/x").stat()
    assert (stat.S_IMODE(shadow.st_mode), shadow.st_gid) == (0o666, 42)
    assert stat.S_IMODE(tool.st_mode) == 0o4755


@ROOT_ONLY
def test_mismatched_layers_are_caught_by_umoci_and_digest_by_skopeo(tmp_path):
    """A lying manifest: umoci rejects both lies; skopeo 1.9 checks the digest but NOT the
    size (copy succeeds), so the pipeline must not rely on skopeo for size checks.
    Tampered blobs get their own layout: a layout stores one blob per digest, and a genuine
    image written later would silently restore the real bytes."""
    good = ib.layer_from_entries(ib.synthetic_debian_entries())
    for what in ("digest", "size"):
        layout = tmp_path / what
        ib.write_image(layout, what, [ib.mismatched_layer(good, what=what)])
        umoci = subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:{what}",
                                str(tmp_path / f"root-{what}")], capture_output=True, text=True)
        assert umoci.returncode != 0 and "mismatch" in umoci.stderr
        copy = skopeo("copy", f"oci:{layout}:{what}", f"dir:{tmp_path / ('dir-' + what)}")
        if what == "digest":
            assert copy.returncode != 0 and "Digest did not match" in copy.stderr
        else:
            assert copy.returncode == 0, "skopeo now verifies sizes: update the docstring"


def test_layout_is_readable_by_skopeo(synthetic_layout):
    """index.json, manifests and configs form a valid OCI layout; digests match."""
    good = synthetic_layout["good"]
    raw = skopeo("inspect", "--raw", f"oci:{good.layout}:good")
    assert raw.returncode == 0, raw.stderr
    assert "sha256:" + hashlib.sha256(raw.stdout.encode()).hexdigest() == good.digest
    config = json.loads(skopeo("inspect", "--config", f"oci:{good.layout}:good").stdout)
    assert (config["os"], config["architecture"]) == ("linux", "amd64")


# --------------------------------------------------------------------------- oscap verdicts

def test_good_synthetic_root_passes(tmp_path, scap_datastream):
    scan = ib.scan_root(ib.synthetic_debian_root(tmp_path / "root"), scap_datastream)
    assert scan.rc == 0 and scan.failing("medium") == {}
    assert len(scan.with_result("pass")) >= 10


def test_bad_synthetic_root_fails_documented_rules(tmp_path, scap_datastream):
    """Also pins pitfall 2: PermitRootLogin yes is not checked on images (notapplicable)."""
    scan = ib.scan_root(ib.synthetic_debian_root(tmp_path / "root", bad=True), scap_datastream)
    assert scan.rc == 2 and scan.failing("medium") == BAD_ROOT_FAILS
    assert scan.rules[RULE_PREFIX + "sshd_disable_root_login"].result == "notapplicable"


def test_non_debian_root_is_all_notapplicable(tmp_path, scap_datastream):
    """Pitfall 4: wrong target, rc 0, nothing evaluated — must not read as a pass."""
    scan = ib.scan_root(ib.non_debian_root(tmp_path / "root"), scap_datastream)
    assert scan.rc == 0
    assert {r.result for r in scan.rules.values()} == {"notapplicable"}


def test_foreign_arch_packages_need_apt_architecture(tmp_path, scap_datastream):
    """arm64 dpkg entries are invisible to the probe on amd64 unless APT::Architecture says
    arm64: without it the telnetd rule passes falsely (shadow still fails)."""
    root = ib.synthetic_debian_root(tmp_path / "root", bad=True, arch="arm64")
    telnetd = RULE_PREFIX + "package_inetutils-telnetd_removed"
    assert ib.scan_root(root, scap_datastream, arch="arm64").failing() == BAD_ROOT_FAILS
    if ib._host_arch() != "arm64":
        assert ib.scan_root(root, scap_datastream).rules[telnetd].result == "pass"


SCENARIOS = {  # name -> (tag to unpack, arch, expected failing >= medium)
    "good": ("good", None, {}),
    "bad": ("bad", None, BAD_ROOT_FAILS),
    "two_layer": ("two_layer", None, {}),
    "whiteout": ("whiteout", None, {}),
    "opaque": ("opaque", None, {}),
    "multiarch-amd64": ("multiarch-amd64", None, {}),
    "multiarch-arm64": ("multiarch-arm64", "arm64", BAD_ROOT_FAILS),
}


@ROOT_ONLY
@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_image_verdicts(name, synthetic_layout, scap_datastream, tmp_path):
    """Unpack each image as the pipeline will (umoci, all layers) and scan it."""
    tag, arch, fails = SCENARIOS[name]
    root = ib.umoci_unpack(synthetic_layout["good"].layout, tag, tmp_path / "root")
    assert ib.scan_root(root, scap_datastream, arch=arch).failing("medium") == fails


@ROOT_ONLY
@pytest.mark.parametrize("make", [ib.two_layer_fix_layers, ib.whiteout_layers, ib.opaque_layers])
def test_scenario_lower_layer_alone_fails(make, scap_datastream, tmp_path):
    """The upper layer is what makes these pass: a scanner that skips it must see a fail."""
    ib.write_image(tmp_path / "oci", "lower", make()[:1])
    root = ib.umoci_unpack(tmp_path / "oci", "lower", tmp_path / "root")
    assert ib.scan_root(root, scap_datastream).failing("medium")


@ROOT_ONLY
def test_nondebian_image_is_all_notapplicable(synthetic_layout, scap_datastream, tmp_path):
    root = ib.umoci_unpack(synthetic_layout["nondebian"].layout, "nondebian", tmp_path / "root")
    assert {r.result for r in ib.scan_root(root, scap_datastream).rules.values()} == {"notapplicable"}


# --------------------------------------------------------------------------- registries

def test_images_are_pushed_with_their_digests(images, registry):
    """The registry reports the digest write_image returned (digests preserved)."""
    assert set(images) == {"good", "bad", "two_layer", "whiteout", "opaque", "nondebian", "multiarch"}
    for name, ref in images.items():
        assert ref.startswith(f"{registry.host}/synthetic/")
        raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
        assert raw.returncode == 0, raw.stderr
        assert "sha256:" + hashlib.sha256(raw.stdout.encode()).hexdigest() == ref.digest, name


def test_multiarch_index_has_two_platforms(images):
    ref = images["multiarch"]
    index = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}").stdout)
    assert index["mediaType"] == ib.MT_INDEX
    platforms = {(m["platform"]["os"], m["platform"]["architecture"]): m["digest"]
                 for m in index["manifests"]}
    assert set(platforms) == {("linux", "amd64"), ("linux", "arm64")}
    # skopeo inspect picks the platform's manifest for Architecture/Layers, but its "Digest"
    # stays the *index* digest: scan keys must come from the platform manifest, not from it.
    arm = json.loads(skopeo("inspect", "--tls-verify=false", "--override-arch", "arm64",
                            f"docker://{ref}").stdout)
    arm_raw = skopeo("inspect", "--raw", "--tls-verify=false", "--override-arch", "arm64",
                     f"docker://{ref.repository}@{platforms[('linux', 'arm64')]}").stdout
    assert arm["Architecture"] == "arm64" and arm["Digest"] == ref.digest
    assert arm["Layers"] == [layer["digest"] for layer in json.loads(arm_raw)["layers"]]
    by_digest = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref.by_digest}")
    assert by_digest.returncode == 0 and json.loads(by_digest.stdout) == index


@pytest.fixture(scope="module")
def auth_ref(auth_registry, synthetic_layout):
    good = synthetic_layout["good"]
    return auth_registry.push(good.layout, good.tag, "private/good:1")


def test_auth_registry_refuses_anonymous(auth_registry, auth_ref):
    anon = skopeo("inspect", "--no-creds", "--cert-dir", str(auth_registry.cert_dir), f"docker://{auth_ref}")
    assert anon.returncode != 0 and "unauthorized" in anon.stderr.lower()
    wrong = skopeo("inspect", "--cert-dir", str(auth_registry.cert_dir),
                   "--creds", f"{auth_registry.user}:wrong", f"docker://{auth_ref}")
    assert wrong.returncode != 0 and "unauthorized" in wrong.stderr.lower()


def test_auth_registry_requires_its_ca(auth_registry, auth_ref):
    """TLS is real: without our CA the certificate is rejected."""
    untrusted = skopeo("inspect", "--creds", f"{auth_registry.user}:{auth_registry.password}",
                       f"docker://{auth_ref}")
    assert untrusted.returncode != 0 and "x509" in untrusted.stderr


def test_auth_registry_accepts_credentials(auth_registry, auth_ref, synthetic_layout):
    ok = skopeo("inspect", "--raw", *auth_registry.src_args(), f"docker://{auth_ref}")
    assert ok.returncode == 0, ok.stderr
    assert "sha256:" + hashlib.sha256(ok.stdout.encode()).hexdigest() == synthetic_layout["good"].digest
    via_file = skopeo("inspect", "--authfile", str(auth_registry.auth_json),
                      "--cert-dir", str(auth_registry.cert_dir), f"docker://{auth_ref}")
    assert via_file.returncode == 0, via_file.stderr
    assert (auth_registry.certs_d / auth_registry.host / "ca.crt").read_bytes() == auth_registry.ca_path.read_bytes()


# --------------------------------------------------------------------------- debootstrap images

def _fake_debootstrap(target: Path) -> None:
    ib.synthetic_debian_root(target)


@ROOT_ONLY
def test_debian_cache_is_atomic(tmp_path, monkeypatch):
    """A failed build leaves neither a cache entry nor a work dir; a good one has both files."""
    monkeypatch.setattr(ib, "_debootstrap", _fake_debootstrap)
    with pytest.raises(RuntimeError):
        ib.debootstrap_roots(("good", "bad"), cache=tmp_path)  # bad script needs a real chroot
    entries = sorted(p.name for p in (tmp_path / "images").iterdir())
    good_hash, bad_hash = (ib.recipe_hash(ib.debian_recipe(k)) for k in ("good", "bad"))
    assert entries == sorted([".debootstrap.lock", good_hash])
    assert {p.name for p in (tmp_path / "images" / good_hash).iterdir()} >= {"index.json", "image.json", "recipe.json"}
    assert bad_hash != good_hash


def test_recipe_hash_covers_script(monkeypatch):
    before = ib.recipe_hash(ib.debian_recipe("bad"))
    monkeypatch.setattr(ib, "BAD_SCRIPT", ib.BAD_SCRIPT + "\ntrue\n")
    assert ib.recipe_hash(ib.debian_recipe("bad")) != before
    assert ib.debian_mirror().startswith(("http://", "https://", "file:/"))


@ROOT_ONLY
def test_debian_images_cached_and_pushed(debian_images):
    """Second lookup is a cache hit (< 1 s); pushed digests equal the cached layouts'."""
    start = time.monotonic()
    cached = ib.debootstrap_roots(("good", "bad"))
    assert time.monotonic() - start < 1.0
    for kind, ref in debian_images.items():
        assert ref.digest == cached[kind].digest
        inspect = skopeo("inspect", "--tls-verify=false", f"docker://{ref}")
        assert json.loads(inspect.stdout)["Digest"] == ref.digest


@ROOT_ONLY
@pytest.mark.parametrize("kind", ["good", "bad"])
def test_debian_image_verdicts(kind, debian_images, scap_datastream, tmp_path):
    """The real roots: good has no failure >= medium; bad fails exactly BAD_ROOT_FAILS."""
    ref = debian_images[kind]
    root = ib.umoci_unpack(ref.layout, ref.tag, tmp_path / "root")
    scan = ib.scan_root(root, scap_datastream)
    assert scan.failing("medium") == ref.fails
    assert len(scan.with_result("pass")) >= 10
    shutil.rmtree(root)
