"""Unpack an OCI image into a scratch root exactly as a runtime would, within limits.

umoci (as root) keeps uid, gid and mode exactly, applies whiteouts and refuses to write through
symlinks outside the root. Before it runs, each layer's tar headers are walked in a stream so a
decompression bomb, a flood of tiny files, or device nodes outside /dev are refused early with a
clear error; the check is remembered per layer digest, so shared layers are checked once.
"""
from __future__ import annotations

import json
import os
import subprocess
import tarfile
import threading
from dataclasses import dataclass

from cachetools import LRUCache

STDERR_LIMIT = 600


class UnpackError(Exception):
    """The image cannot be unpacked safely or within limits; permanent for this digest."""


@dataclass(frozen=True)
class UnpackLimits:
    max_bytes: int = 4 << 30        # sum of file sizes over all layers; a bomb stops here
    max_files: int = 300_000        # entries over all layers; a debootstrap root has ~10k
    timeout_s: float = 120.0        # umoci raw unpack of a 200 MB root takes 1-4 s


@dataclass(frozen=True)
class LayerStats:
    files: int
    bytes: int


_checked: LRUCache = LRUCache(maxsize=4096)
_checked_lock = threading.Lock()


def layers_of(layout: str, tag: str) -> list[dict]:
    """Layer descriptors of `tag` in an OCI layout (read from index.json and the manifest)."""
    with open(os.path.join(layout, "index.json")) as fh:
        index = json.load(fh)
    for m in index.get("manifests", []):
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return json.loads(_blob(layout, m["digest"])).get("layers", [])
    raise UnpackError(f"tag {tag} not in layout {layout}")


def _blob(layout: str, digest: str) -> bytes:
    with open(_blob_file(layout, digest), "rb") as fh:
        return fh.read()


def check_layer(path: str, digest: str, limits: UnpackLimits, budget: LayerStats) -> LayerStats:
    """Stream a layer's headers; raise UnpackError past the remaining budget."""
    with _checked_lock:
        hit = _checked.get(digest)
    if hit is not None:
        _within(hit, budget, limits, digest)
        return hit
    files = size = 0
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                files += 1
                size += max(member.size, 0)
                if member.isdev() and not _under_dev(member.name):
                    raise UnpackError(f"layer {digest[:19]} holds a device node outside /dev: "
                                      f"{member.name[:120]!r}")
                _within(LayerStats(files, size), budget, limits, digest)
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise UnpackError(f"layer {digest[:19]} is not a valid tar stream: {e}") from e
    stats = LayerStats(files, size)
    with _checked_lock:
        _checked[digest] = stats
    return stats


def _under_dev(name: str) -> bool:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return len(parts) >= 2 and parts[0] == "dev" and ".." not in parts


def _within(stats: LayerStats, used: LayerStats, limits: UnpackLimits, digest: str) -> None:
    if used.bytes + stats.bytes > limits.max_bytes:
        raise UnpackError(f"image unpacks to more than the limit of {limits.max_bytes} bytes "
                          f"(at layer {digest[:19]})")
    if used.files + stats.files > limits.max_files:
        raise UnpackError(f"image holds more than the limit of {limits.max_files} files "
                          f"(at layer {digest[:19]})")


def check_limits(layout: str, tag: str, limits: UnpackLimits) -> LayerStats:
    used = LayerStats(0, 0)
    for layer in layers_of(layout, tag):
        digest = layer.get("digest", "")
        stats = check_layer(_blob_file(layout, digest), digest, limits, used)
        used = LayerStats(used.files + stats.files, used.bytes + stats.bytes)
    return used


def _blob_file(layout: str, digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise UnpackError(f"invalid layer digest {digest!r:.80}")
    return os.path.join(layout, "blobs", algo, hexd)


def unpack(layout: str, tag: str, rootfs: str, limits: UnpackLimits) -> LayerStats:
    """Check limits, then `umoci raw unpack` into rootfs (which must not exist yet)."""
    stats = check_limits(layout, tag, limits)
    try:
        proc = subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", rootfs],
                              capture_output=True, timeout=limits.timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise UnpackError(f"unpacking took longer than {limits.timeout_s:.0f} s") from e
    except FileNotFoundError as e:
        raise UnpackError("umoci is not installed") from e
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        if "no space left" in err.lower():
            raise UnpackError("scratch space is full while unpacking the image")
        raise UnpackError(f"umoci could not unpack the image: {err[-STDERR_LIMIT:]}")
    return stats
