"""A Docker daemon as an image source: for images that live in a daemon, not a registry.

The container is created and exported, never started; the exported filesystem becomes a
one-layer OCI layout so it goes through the very same unpack and evaluate stages as registry
images. The key is the daemon's image id (the config digest): content-addressed, never a tag.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Callable

import docker
from docker.errors import APIError, DockerException, ImageNotFound

from .engine import Outcome
from .images import DAEMON, ImageRef
from .pipeline import Pipeline, Stages
from .registry import NotFound, Unreachable
from .results import ContentSpec, error_result

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def client(base_url: str | None = None, timeout_s: float = 60.0) -> docker.DockerClient:
    """DOCKER_HOST and friends are honoured, as the docker CLI does."""
    if base_url:
        return docker.DockerClient(base_url=base_url, timeout=int(timeout_s))
    return docker.from_env(timeout=int(timeout_s))


def export_to_layout(cli: docker.DockerClient, name: str, layout: str) -> str:
    """Write the image's filesystem as a one-layer OCI layout tagged 'image'; returns image id."""
    try:
        image = cli.images.get(name)
    except ImageNotFound as e:
        raise NotFound(f"image {name} not found in the Docker daemon") from e
    except (APIError, DockerException) as e:
        raise Unreachable(f"Docker daemon unreachable: {e}") from e
    container = cli.containers.create(image.id, command=["/scapgate-never-started"],
                                      network_disabled=True)
    try:
        blobs = os.path.join(layout, "blobs", "sha256")
        os.makedirs(blobs)
        tmp = os.path.join(layout, "layer.tmp")
        h, size = hashlib.sha256(), 0
        with open(tmp, "wb") as fh:
            for chunk in container.export():
                h.update(chunk)
                size += len(chunk)
                fh.write(chunk)
        layer = "sha256:" + h.hexdigest()
        os.rename(tmp, os.path.join(blobs, h.hexdigest()))
    finally:
        container.remove(force=True)
    config = _put(blobs, {"architecture": image.attrs.get("Architecture", "amd64"),
                          "os": image.attrs.get("Os", "linux"),
                          "rootfs": {"type": "layers", "diff_ids": [layer]}})
    manifest = _put(blobs, {"schemaVersion": 2,
                            "mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                       "digest": config[0], "size": config[1]},
                            "layers": [{"mediaType": LAYER_TAR, "digest": layer, "size": size}]})
    with open(os.path.join(layout, "oci-layout"), "w") as fh:
        json.dump({"imageLayoutVersion": "1.0.0"}, fh)
    with open(os.path.join(layout, "index.json"), "w") as fh:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest[0],
            "size": manifest[1],
            "annotations": {"org.opencontainers.image.ref.name": "image"}}]}, fh)
    return image.id


def _put(blobs: str, doc: dict) -> tuple[str, int]:
    raw = json.dumps(doc, separators=(",", ":")).encode()
    hexd = hashlib.sha256(raw).hexdigest()
    with open(os.path.join(blobs, hexd), "wb") as fh:
        fh.write(raw)
    return "sha256:" + hexd, len(raw)


def scan_daemon_image(name: str, content: ContentSpec, pipeline: Pipeline, *,
                      base_url: str | None = None,
                      progress: Callable[[str, float], None] | None = None) -> Outcome:
    """Scan an image held by a Docker daemon (create + export, never start)."""
    stage = Stages(progress)
    timings = stage.timings

    os.makedirs(pipeline.settings.scratch_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="scapgate-daemon-", dir=pipeline.settings.scratch_dir)
    ref = ImageRef(DAEMON, name)
    try:
        layout = os.path.join(work, "layout")
        try:
            image_id = stage("export", export_to_layout, client(base_url), name, layout)
        except DockerException as e:
            raise Unreachable(f"Docker daemon unreachable: {e}") from e
        key = pipeline.key(image_id, content)
        ref = ImageRef(DAEMON, name, digest=image_id)
        try:
            result = pipeline.evaluate(layout, "image", work, ref, content, key, timings, stage)
        except Exception as e:  # the same error values as registry scans
            from .oscap import ScanError
            from .rootfs import UnpackError
            if not isinstance(e, (ScanError, UnpackError)):
                raise
            result = error_result(key, str(ref), str(e),
                                  permanent=getattr(e, "permanent", True), now=time.time())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Outcome(ref=ref, digest=ref.digest or "", result=result)
