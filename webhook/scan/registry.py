"""Registry access through skopeo, honouring the containers-image conventions users already keep.

skopeo reads /etc/containers/registries.conf, certs.d and auth.json by itself; we add only what
the gate needs on top: credentials handed over in a private 0600 file, a per-registry switch to
turn TLS verification off (test registries), a certs.d root of our own, and timeouts with errors
a developer can act on.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from .images import ImageRef

MANIFEST_LIST_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
STDERR_LIMIT = 600


class RegistryError(Exception):
    """The registry could not give us the image; `permanent` says whether a retry can help."""

    permanent = False


class AuthError(RegistryError):
    """401/403: the credentials we have do not open this repository."""

    permanent = True


class NotFound(RegistryError):
    """404: the repository, tag or digest does not exist."""

    permanent = True


class Unreachable(RegistryError):
    """Connection refused, DNS, TLS handshake, timeout: worth retrying later."""


class DigestMismatch(RegistryError):
    """The registry sent bytes that do not match the digest the manifest names: its storage is
    corrupt or something in between tampers with it. Nothing is kept; a retry may succeed."""


class TooLarge(RegistryError):
    """A blob, as declared by the manifest or as sent, is past the unpack byte limit."""

    permanent = True


class PlatformMissing(RegistryError):
    """An image index without a manifest for the platform the nodes run."""

    permanent = True


@dataclass(frozen=True)
class RegistrySettings:
    """How to reach registries. Defaults follow skopeo's own conventions."""

    timeout_s: float = 30.0           # per skopeo call; a slow registry must not wedge a worker
    insecure: frozenset[str] = frozenset()  # host[:port] whose TLS is not verified (tests only)
    certs_dir: str | None = None      # a certs.d root; None = skopeo's defaults (/etc/containers/certs.d)
    auth_file: str | None = None      # docker config.json / auth.json; None = skopeo's defaults
    platform: str = "linux/amd64"     # what the nodes run; picks from image indexes


def _cut(text: str) -> str:
    text = text.strip()
    return text if len(text) <= STDERR_LIMIT else text[:STDERR_LIMIT] + "…"


# Status codes are matched as words: ports and hex digests in skopeo's messages hold "401" too.
_AUTH_RE = re.compile(r"unauthorized|authentication required|invalid username/password|"
                      r"access to the resource is denied|\bdenied:|\b(?:401|403)\b")
_LOCAL_RE = re.compile(r"(?:open|mkdir|rename|remove|write) /\S*: (?:permission denied|"
                       r"read-only file system)")
_NOT_FOUND_RE = re.compile(r"manifest unknown|name unknown|blob unknown|not found|\b404\b")


def classify(ref: ImageRef, stderr: str) -> RegistryError:
    """Turn skopeo's stderr into the error a developer can act on."""
    low = stderr.lower()
    if "digest did not match" in low or "digest mismatch" in low:
        return DigestMismatch(f"registry {ref.registry} sent data for {ref} that does not match "
                              f"its digest (corrupt storage or tampering): {_cut(stderr)}")
    if "file too large" in low:
        return TooLarge(f"registry {ref.registry} sent a blob of {ref} larger than its manifest "
                        "declares or than the unpack limit")
    if "no space left on device" in low:
        return RegistryError(f"the state directory is full while fetching {ref}: {_cut(stderr)}")
    if _LOCAL_RE.search(low):
        return RegistryError(f"cannot write the image cache while fetching {ref}: {_cut(stderr)}")
    if _AUTH_RE.search(low):
        return AuthError(f"no valid credentials for registry {ref.registry} "
                         f"(repository {ref.repository}): {_cut(stderr)}")
    if _NOT_FOUND_RE.search(low):
        return NotFound(f"image {ref} not found: {_cut(stderr)}")
    return Unreachable(f"registry {ref.registry} unreachable: {_cut(stderr)}")


@contextmanager
def auth_file(docker_config: dict | None, fallback: str | None) -> Iterator[str | None]:
    """Hand credentials to skopeo in a private 0600 file that is removed afterwards."""
    if not docker_config:
        yield fallback
        return
    fd, path = tempfile.mkstemp(prefix="scapgate-auth-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(docker_config, fh)
        yield path
    finally:
        os.unlink(path)


@dataclass
class Registry:
    settings: RegistrySettings = field(default_factory=RegistrySettings)
    # Manifests verified against their digest by resolve(), so a scan of the same image in
    # this process does not ask skopeo again (a process start, ~40 ms). Keyed with the
    # credentials' fingerprint: other credentials must show the registry lets them read it.
    _manifests: dict = field(default_factory=dict, repr=False, compare=False)

    def _tls_args(self, ref: ImageRef, prefix: str = "") -> list[str]:
        args = []
        if ref.registry in self.settings.insecure:
            args.append(f"--{prefix}tls-verify=false")
        if self.settings.certs_dir:
            d = os.path.join(self.settings.certs_dir, ref.registry)
            if os.path.isdir(d):
                args.append(f"--{prefix}cert-dir={d}")
        return args

    def _run(self, ref: ImageRef, args: list[str], timeout: float | None = None,
             max_file_bytes: int | None = None) -> bytes:
        timeout = timeout or self.settings.timeout_s
        if shutil.which("skopeo") is None:
            raise RegistryError("skopeo is not installed")
        cmd = ["skopeo", *args]
        prlimit = shutil.which("prlimit") if max_file_bytes else None
        if prlimit:
            cmd = [prlimit, f"--fsize={max_file_bytes}", "--", *cmd]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise Unreachable(f"registry {ref.registry} did not answer within {timeout:g} s") from e
        if proc.returncode != 0:
            raise classify(ref, proc.stderr.decode(errors="replace"))
        return proc.stdout

    def raw_manifest(self, ref: ImageRef, *, docker_config: dict | None = None) -> bytes:
        if ref.digest:
            kept = self._manifests.get(_manifest_key(ref, ref.digest, docker_config))
            if kept is not None:
                return kept
        with auth_file(docker_config, self.settings.auth_file) as af:
            args = ["inspect", "--raw", "--retry-times=0", *self._tls_args(ref)]
            if af:
                args.append(f"--authfile={af}")
            return self._run(ref, [*args, ref.transport()])

    def resolve(self, ref: ImageRef, *, docker_config: dict | None = None,
                platform: str | None = None) -> tuple[str, str]:
        """Return (platform manifest digest, digest of what the reference names).

        For an image index the platform manifest is picked; for a plain manifest both are equal.
        A reference that carries a digest is verified against the bytes the registry returns.
        """
        doc, top = self._top(ref, docker_config)
        if doc is None:
            return top, top
        return pick_platform(doc, platform or self.settings.platform, ref), top

    def resolve_all(self, ref: ImageRef, platforms: tuple[str, ...], *,
                    docker_config: dict | None = None) -> tuple[tuple[tuple[str, str], ...], str]:
        """((platform, manifest digest) for each listed platform the image offers, top digest).
        A plain manifest is its own only platform (""); an index offering none of the listed
        platforms is PlatformMissing naming what it offers."""
        doc, top = self._top(ref, docker_config)
        if doc is None:
            return (("", top),), top
        found: dict[str, str] = {}
        for platform in platforms:
            try:
                digest = pick_platform(doc, platform, ref)
            except PlatformMissing:
                continue
            if digest not in found.values():
                found[platform] = digest
        if not found:
            offers = [_platform_name(m) for m in doc.get("manifests", [])]
            raise PlatformMissing(f"image {ref} offers none of the platforms the nodes run "
                                  f"({', '.join(platforms)}); it has: "
                                  f"{', '.join(offers) or 'none'}")
        return tuple(found.items()), top

    def _top(self, ref: ImageRef, docker_config: dict | None) -> tuple[dict | None, str]:
        """(the index document, or None for a plain manifest; the digest of what the
        reference names), verified against a digest the reference carries."""
        raw = self.raw_manifest(ref, docker_config=docker_config)
        top = "sha256:" + hashlib.sha256(raw).hexdigest()
        if ref.digest and ref.digest != top:
            raise RegistryError(f"registry returned a manifest for {ref} whose digest is {top}")
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise RegistryError(f"registry returned a manifest for {ref} that is not JSON") from e
        media = doc.get("mediaType") or ("application/vnd.oci.image.index.v1+json"
                                         if "manifests" in doc else "")
        if len(raw) <= 1 << 20:
            if len(self._manifests) >= 256:
                self._manifests.clear()
            self._manifests[_manifest_key(ref, top, docker_config)] = raw
        return (doc if media in MANIFEST_LIST_TYPES else None), top

    def copy(self, ref: ImageRef, layout: str, tag: str, blob_dir: str, *,
             docker_config: dict | None = None, max_blob_bytes: int | None = None) -> None:
        """Fetch one platform manifest into an OCI layout whose blobs live in a shared,
        content-addressed directory, so a layer shared by two images is fetched once.

        skopeo does not hold a registry to the sizes its manifest declares (an endless blob is
        written until the digest check at its end), so max_blob_bytes caps every file it
        writes (RLIMIT_FSIZE)."""
        with auth_file(docker_config, self.settings.auth_file) as af:
            args = ["copy", "--quiet", "--retry-times=1", *self._tls_args(ref, "src-"),
                    f"--dest-shared-blob-dir={blob_dir}"]
            if af:
                args.append(f"--src-authfile={af}")
            self._run(ref, [*args, ref.transport(), f"oci:{layout}:{tag}"],
                      timeout=self.settings.timeout_s * 4, max_file_bytes=max_blob_bytes)


def _manifest_key(ref: ImageRef, digest: str, docker_config: dict | None) -> tuple:
    fingerprint = (hashlib.sha256(json.dumps(docker_config, sort_keys=True).encode()).hexdigest()
                   if docker_config else "")
    return ref.registry, ref.repository, digest, fingerprint


def _platform_name(m: dict) -> str:
    p = m.get("platform") if isinstance(m.get("platform"), dict) else {}
    have = [p.get("os", ""), p.get("architecture", "")] + ([p["variant"]] if p.get("variant") else [])
    return "/".join(str(x) for x in have)


def pick_platform(index: dict, platform: str, ref: ImageRef) -> str:
    """Choose the manifest for os/arch[/variant] from an image index."""
    want = platform.split("/")
    found = []
    for m in index.get("manifests", []):
        p = m.get("platform") or {}
        have = [p.get("os", ""), p.get("architecture", "")] + ([p["variant"]] if p.get("variant") else [])
        found.append("/".join(have))
        if have[:2] == want[:2] and (len(want) < 3 or have[2:3] == want[2:3]):
            digest = m.get("digest", "")
            if digest.startswith("sha256:"):
                return digest
    raise PlatformMissing(f"image {ref} has no manifest for platform {platform} "
                          f"(it has: {', '.join(found) or 'none'})")
