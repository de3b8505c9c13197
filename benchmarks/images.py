"""Test images for the benchmarks, built with the project's own test fixtures.

- synthetic(n): n distinct synthetic Debian 12 roots (13 files, < 1 s to scan): the fast path
  needs scanned images, not big ones.
- debootstrap(): the cached real Debian 12 minbase image (tests.builders.imagebuild, ≈ 60 s cold).
- derived(n): the debootstrap image's layer + one small layer of its own per image: n distinct
  digests that share their base layer, like images built FROM one base.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.builders import imagebuild
from tests.builders.registry import Registry


def synthetic(layout: Path, registry: Registry, n: int, repo: str = "bench/app") -> list[str]:
    """Push n distinct synthetic good images as HOST/bench/appI:1; returns the references."""
    refs = []
    for i in range(n):
        entries = imagebuild.synthetic_debian_entries() + [
            imagebuild.file("etc/bench-image", f"synthetic image {i}\n")]
        imagebuild.write_image(layout, f"app{i}", [imagebuild.layer_from_entries(entries)])
        refs.append(registry.push(layout, f"app{i}", f"{repo}{i}:1"))
    return refs


def debootstrap(kind: str = "good") -> imagebuild.CachedImage:
    return imagebuild.debootstrap_root(kind)


def base_layer(img: imagebuild.CachedImage) -> imagebuild.Layer:
    """The single layer of a cached debootstrap image, as an imagebuild.Layer."""
    layout = Path(img.layout)
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m.get("annotations", {}).get(imagebuild.REF_NAME) == img.tag)
    manifest = json.loads(_blob(layout, desc["digest"]))
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    (layer,) = manifest["layers"]
    blob = _blob(layout, layer["digest"])
    return imagebuild.Layer(blob, layer["digest"], layer["size"], config["rootfs"]["diff_ids"][0],
                            layer["mediaType"])


def _blob(layout: Path, digest: str) -> bytes:
    algo, _, hexd = digest.partition(":")
    return (layout / "blobs" / algo / hexd).read_bytes()


def derived(layout: Path, registry: Registry, base: imagebuild.Layer, names: list[str],
            repo: str = "bench/derived") -> dict[str, tuple[str, str]]:
    """One image per name: base layer + a one-file layer; returns name -> (reference, digest)."""
    out = {}
    for name in names:
        extra = imagebuild.layer_from_entries([
            imagebuild.file("etc/bench-image", f"derived image {name}\n")])
        digest = imagebuild.write_image(layout, name, [base, extra])
        out[name] = digest
    def push(name: str) -> str:
        for attempt in range(3):      # docker-registry answers 500 on some concurrent uploads
            try:
                return registry.push(layout, name, f"{repo}:{name}")
            except RuntimeError:
                if attempt == 2:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    refs = {names[0]: push(names[0])}          # the shared base layer is uploaded once, alone
    with ThreadPoolExecutor(4) as pool:
        refs.update(zip(names[1:], pool.map(push, names[1:])))
    return {n: (refs[n], out[n]) for n in names}
