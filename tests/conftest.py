"""Shared pytest fixtures: SCAP content, registries and test images.

Fixtures (all session-scoped, built once per run):
  scap_datastream  Path of ssg-debian12-ds.xml ($SCAPGATE_CONTENT_DIR, else .state/content;
                   installed with scripts/install-content.sh when missing).
  registry         tests.builders.registry.Registry: plain HTTP, anonymous; .host, .push(layout, tag,
                   "repo:tag"), .src_args() for skopeo.
  auth_registry    Registry with TLS (own CA: .ca_path, .cert_dir, .certs_d) and htpasswd
                   basic auth (.user, .password, .auth_json).
  synthetic_layout name -> imagebuild.BuiltImage in one local OCI layout (no registry).
  images           name -> registry.ImageRef pushed to `registry`: good, bad, two_layer,
                   whiteout, opaque, nondebian, multiarch (index: amd64 good, arm64 bad).
  debian_images    "good"/"bad" -> ImageRef of the real debootstrap images (cached build);
                   tests using it are marked slow automatically.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# No test reaches the vendors' feed servers (scan workers fetch feeds by default): the CVE
# tests name their own feeds, served on 127.0.0.1.
os.environ.setdefault("SCAPGATE_CVE_FEEDS", "off")

from tests.builders import imagebuild
from tests.builders.registry import ImageRef, Registry, start_auth_registry, start_registry

SLOW_FIXTURES = {"debian_images"}


def pytest_collection_modifyitems(config, items):
    """Tests that pull in the debootstrap images are slow, whatever their author wrote."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture(scope="session")
def scap_datastream() -> Path:
    """The Debian 12 datastream, installed on first use so a fresh checkout can test."""
    path = imagebuild.datastream_path()
    script = imagebuild.REPO_ROOT / "scripts" / "install-content.sh"
    if not path.exists() and script.exists():
        subprocess.run(["bash", str(script), str(path.parent)], capture_output=True, timeout=600)
    if not path.exists():
        pytest.skip(f"{path} missing: run scripts/install-content.sh or set SCAPGATE_CONTENT_DIR")
    return path


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Registry:
    """Anonymous HTTP registry on 127.0.0.1 for the whole session."""
    _require("docker-registry", "skopeo")
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory) -> Registry:
    """HTTPS + htpasswd registry: what a private production registry looks like."""
    _require("docker-registry", "skopeo", "htpasswd")
    reg = start_auth_registry(tmp_path_factory.mktemp("auth-registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def synthetic_layout(tmp_path_factory) -> dict[str, imagebuild.BuiltImage]:
    """All synthetic images in one OCI layout (tags = names); built in well under a second."""
    return imagebuild.build_synthetic_images(tmp_path_factory.mktemp("oci") / "synthetic")


def _push(reg: Registry, built, repo_ref: str) -> ImageRef:
    ref = reg.push(built.layout, built.tag, repo_ref)
    return ImageRef(ref, digest=built.digest, expect=built.expect, fails=built.fails,
                    layout=built.layout, tag=built.tag)


@pytest.fixture(scope="session")
def images(registry, synthetic_layout) -> dict[str, ImageRef]:
    """Synthetic images pushed as 127.0.0.1:PORT/synthetic/<name>:1."""
    return {name: _push(registry, built, f"synthetic/{name.replace('_', '-')}:1")
            for name, built in synthetic_layout.items()}


@pytest.fixture(scope="session")
def debian_images(registry) -> dict[str, ImageRef]:
    """Real debootstrap Debian 12 images (good, bad) as 127.0.0.1:PORT/debian/<kind>:12.

    First build ≈ 1 min, cached in $SCAPGATE_CACHE_DIR (default /var/cache/scapgate-test)."""
    _require("debootstrap")
    if os.geteuid() != 0:
        pytest.skip("debootstrap images need root")
    built = imagebuild.debootstrap_roots(("good", "bad"))
    return {kind: _push(registry, img, f"debian/{kind}:12") for kind, img in built.items()}
