"""A Docker daemon as an image source (`scapgate scan --source docker` / `docker-daemon:`).

Against a real dockerd that the tests start (scripts/dockerd.sh): the image is created and
exported, never started, and goes through the same unpack and evaluate stages as registry
images, keyed by the daemon's image id.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

from tests import builders
from tests.builders import imagebuild

REPO = str(builders.REPO)
POLICY = os.path.join(REPO, "policies", "default.yaml")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """(DOCKER_HOST, client) of the private engine; the engine is stopped afterwards if this
    module started it."""
    script = os.path.join(REPO, "scripts", "dockerd.sh")
    started = subprocess.run(["bash", script, "status"], capture_output=True).returncode != 0
    from scripts import image
    client = image.engine(timeout=120)
    host = subprocess.run(["bash", script, "host"], capture_output=True, text=True,
                          check=True).stdout.strip()
    for kind in ("good", "bad"):
        root = tmp_path_factory.mktemp(f"root-{kind}")
        imagebuild.synthetic_debian_root(root, bad=kind == "bad")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:   # as root: owners and modes kept
            tar.add(str(root), arcname=".")
        client.api.import_image_from_data(buf.getvalue(), repository="scapgate-test/daemon",
                                          tag=kind)
    yield host, client
    for kind in ("good", "bad"):
        client.images.remove(f"scapgate-test/daemon:{kind}", force=True)
    client.close()
    if started:
        subprocess.run(["bash", script, "stop"], capture_output=True, timeout=60)


def scan(host, tmp_path, image, *args):
    env = {**os.environ, "DOCKER_HOST": host, "SCAPGATE_STATE_DIR": str(tmp_path / "state"),
           "SCAPGATE_CONTENT_DIR": str(imagebuild.content_dir())}
    return subprocess.run([sys.executable, "-m", "webhook", "scan", image, "--policy", POLICY,
                           *args], capture_output=True, text=True, env=env, timeout=300,
                          cwd=REPO)


@pytest.mark.parametrize("spelling", ["--source", "prefix"])
@pytest.mark.parametrize("kind,rc", [("good", 0), ("bad", 1)])
def test_daemon_image_verdicts(daemon, tmp_path, spelling, kind, rc):
    host, client = daemon
    name = f"scapgate-test/daemon:{kind}"
    args = (name, "--source", "docker") if spelling == "--source" else (f"docker-daemon:{name}",)
    before = {c.id for c in client.containers.list(all=True)}
    proc = scan(host, tmp_path, *args, "--json")
    assert proc.returncode == rc, proc.stderr
    doc = json.loads(proc.stdout)
    image_id = client.images.get(name).id
    assert doc["digest"] == image_id and doc["result"]["key"]["digest"] == image_id
    assert "export" in doc["result"]["timings"]
    if kind == "bad":
        assert "file_permissions_etc_shadow" in {r["id"] for r in doc["verdict"]["reasons"]}
    after = client.containers.list(all=True)
    assert {c.id for c in after} == before, "the export container is removed"
    assert all(c.status != "running" for c in after)


def test_missing_daemon_image(daemon, tmp_path):
    host, _ = daemon
    proc = scan(host, tmp_path, "docker-daemon:scapgate-test/nothing:1")
    assert proc.returncode == 2 and "not found in the Docker daemon" in proc.stderr


def test_unreachable_daemon(tmp_path):
    proc = scan(f"unix://{tmp_path}/no.sock", tmp_path, "docker-daemon:x:1")
    assert proc.returncode == 2 and "Docker daemon unreachable" in proc.stderr
