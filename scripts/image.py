"""Build the scapgate container image in a private Docker engine.

    .venv/bin/python -m scripts.image [--tag scapgate:dev]

Public base images cannot be pulled here, so the base is the debootstrap'd Debian 12 minbase
root the tests already build and cache (tests/imagebuild.py), imported into the engine once and
tagged by its digest: a second run finds it and skips the import. apt inside the build uses
the mirror this machine's apt uses (read from its sources, never written down here), and the
scanner packages are pinned to the versions installed on this machine, which are the versions
the tests run against.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
PINNED = {"OPENSCAP_VERSION": "openscap-scanner", "SKOPEO_VERSION": "skopeo",
          "UMOCI_VERSION": "umoci"}
BASE_REPO = "scapgate-base"
BUILD_TIMEOUT_S = 1800


class BuildError(Exception):
    """docker build failed; the message ends with the build's last output lines."""


def engine(timeout: int = BUILD_TIMEOUT_S):
    """A docker SDK client for the private engine of scripts/dockerd.sh (started if needed)."""
    import docker
    host = subprocess.run(["bash", str(REPO / "scripts" / "dockerd.sh"), "start"], check=True,
                          capture_output=True, text=True, timeout=300).stdout.strip()
    return docker.DockerClient(base_url=host, timeout=timeout)


def _sources_paragraphs() -> list[dict[str, str]]:
    """apt sources as deb822 paragraphs (legacy one-line sources.list converted)."""
    out: list[dict[str, str]] = []
    for src in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for para in src.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):[ \t]*(.*)$", para, re.M))
            if fields.get("URIs") and fields.get("Suites"):
                out.append(fields)
    legacy = Path("/etc/apt/sources.list")
    for line in legacy.read_text().splitlines() if legacy.exists() else []:
        m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
        if m:
            out.append({"URIs": m.group(1), "Suites": m.group(2)})
    return out


def debian_mirrors() -> tuple[str, str]:
    """(archive URI, security URI or "") for bookworm from this machine's apt sources."""
    main = security = ""
    for para in _sources_paragraphs():
        suites, uri = para["Suites"].split(), para["URIs"].split()[0]
        if not security and "bookworm-security" in suites:
            security = uri
        elif not main and "bookworm" in suites:
            main = uri
    if not main:
        raise BuildError("no Debian bookworm mirror in /etc/apt/sources.list(.d)")
    return main, security


def installed_version(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], check=True,
                          capture_output=True, text=True).stdout.strip()


def build_args(base: str) -> dict[str, str]:
    """--build-arg values: the base, this machine's mirrors, its scanner versions and the CA
    certificates it adds to the system store (so pip in the build trusts what the host does)."""
    main, security = debian_mirrors()
    args = {"BASE_IMAGE": base, "DEBIAN_MIRROR": main, "DEBIAN_SECURITY_MIRROR": security}
    args.update({arg: installed_version(pkg) for arg, pkg in PINNED.items()})
    local_cas = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    if local_cas:
        args["EXTRA_CA_CERTS"] = "\n".join(p.read_text().strip() for p in local_cas)
    return args


def base_image(client, log: Callable[[str], None] = print) -> str:
    """Import the cached debootstrap bookworm root as scapgate-base:<digest prefix>; reuse it
    when the engine already has that tag. Returns the image reference."""
    sys.path.insert(0, str(REPO))
    import docker.errors

    from tests.builders import imagebuild

    cached = imagebuild.debootstrap_root("good")
    ref = f"{BASE_REPO}:bookworm-{cached.digest.split(':')[1][:16]}"
    try:
        client.images.get(ref)
        return ref
    except docker.errors.ImageNotFound:
        pass
    index = json.loads((cached.layout / "index.json").read_text())
    manifest_digest = next(m["digest"] for m in index["manifests"]
                           if m.get("annotations", {}).get(imagebuild.REF_NAME) == cached.tag)
    manifest = json.loads(_blob(cached.layout, manifest_digest).read_text())
    (layer,) = manifest["layers"]
    t0 = time.monotonic()
    repo, tag = ref.split(":")
    client.api.import_image_from_file(str(_blob(cached.layout, layer["digest"])),
                                      repository=repo, tag=tag)
    log(f"image: imported {ref} in {time.monotonic() - t0:.1f} s")
    return ref


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def build(client, tag: str, args: dict[str, str], *, target: str | None = None,
          nocache: bool = False, log: Callable[[str], None] = print) -> str:
    """docker build of ./Dockerfile with the classic builder and host networking (the engine
    has no bridge). Returns the image id; raises BuildError with the last output lines."""
    lines: list[str] = []
    t0 = time.monotonic()
    for chunk in client.api.build(path=str(REPO), dockerfile="Dockerfile", tag=tag,
                                  buildargs=args, network_mode="host", rm=True, forcerm=True,
                                  target=target, nocache=nocache, decode=True,
                                  timeout=BUILD_TIMEOUT_S):
        text = chunk.get("stream") or chunk.get("status") or ""
        lines += [ln for ln in text.splitlines() if ln.strip()]
        if "error" in chunk:
            raise BuildError(f"docker build failed: {chunk['error']}\n" + "\n".join(lines[-40:]))
    image = client.images.get(tag)
    log(f"image: built {tag} ({image.short_id}) in {time.monotonic() - t0:.1f} s")
    return image.id


def ensure_image(client, tag: str, *, nocache: bool = False,
                 log: Callable[[str], None] = print) -> str:
    """Base, build stage and final image; quick when nothing changed (layer cache).

    The engine stores layers with vfs (full copies), so superseded builds are pruned. The build
    stage is tagged <repo>:build-cache first so pruning keeps its layers for the next build."""
    args = build_args(base_image(client, log=log))
    build(client, f"{tag.rsplit(':', 1)[0]}:build-cache", args, target="build", nocache=nocache,
          log=log)
    image_id = build(client, tag, args, log=log)
    client.images.prune(filters={"dangling": True})
    return image_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tag", default="scapgate:dev")
    p.add_argument("--no-cache", action="store_true")
    a = p.parse_args(argv)
    client = engine()
    ensure_image(client, a.tag, nocache=a.no_cache)
    host = subprocess.run(["bash", str(REPO / "scripts" / "dockerd.sh"), "host"],
                          capture_output=True, text=True, check=True).stdout.strip()
    print(f"image {a.tag} is in the engine at DOCKER_HOST={host}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
