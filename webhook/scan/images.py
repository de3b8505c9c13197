"""Image references: parse and normalise the way container runtimes do.

Kubernetes nodes resolve `nginx` to `docker.io/library/nginx:latest`; the gate must resolve the
same name to the same image, so `x`, `docker.io/library/x` and `index.docker.io/library/x:latest`
are one image. A digest, when present, wins over a tag (a runtime pulls by digest).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

DEFAULT_REGISTRY = "docker.io"
DAEMON = "docker-daemon"          # pseudo-registry: images read from a Docker daemon
_DOCKER_ALIASES = {"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
# From the distribution reference grammar (github.com/distribution/reference).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_HOST_RE = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
                      r"(?::[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?$")
MAX_REFERENCE = 512


class ReferenceError(ValueError):
    """The image string is not a valid reference; the workload names an image no node can pull."""


@dataclass(frozen=True)
class ImageRef:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        if self.registry == DAEMON:
            return f"{DAEMON}:{self.repository}"
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        try:
            return self.__dict__["_text"]   # kept in the instance: asked several times a review
        except KeyError:
            pass
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        self.__dict__["_text"] = out
        return out

    def pinned(self, digest: str) -> "ImageRef":
        """The same repository at a given manifest digest (what is fetched and scanned)."""
        return _pinned(self, digest)

    def transport(self) -> str:
        """skopeo's name for this image: by digest when known, else by tag."""
        if self.digest:
            return f"docker://{self.name}@{self.digest}"
        return f"docker://{self.name}:{self.tag or 'latest'}"


@functools.lru_cache(maxsize=4096)
def _pinned(ref: ImageRef, digest: str) -> ImageRef:
    return ImageRef(ref.registry, ref.repository, ref.tag, digest)


def parse(reference: str) -> ImageRef:
    """Normalise an image reference; raises ReferenceError for anything a runtime would refuse.
    Answers are remembered (ImageRef is immutable): the same images come in every review."""
    if not isinstance(reference, str) or not reference or len(reference) > MAX_REFERENCE:
        raise ReferenceError(f"invalid image reference {reference!r:.80}")
    return _parse(reference)


@functools.lru_cache(maxsize=4096)
def _parse(reference: str) -> ImageRef:
    ref = reference.strip()
    if ref != reference or any(c.isspace() for c in ref):
        raise ReferenceError(f"invalid image reference {reference!r:.80}: whitespace")
    rest, digest = ref, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise ReferenceError(f"invalid digest in image reference {reference!r:.80}")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.match(tag):
            raise ReferenceError(f"invalid tag in image reference {reference!r:.80}")
    registry, path = _split_registry(rest, reference)
    if not _PATH_RE.match(path):
        raise ReferenceError(f"invalid repository name in image reference {reference!r:.80}"
                             " (must be lowercase)")
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry, path, tag, digest)


def _split_registry(rest: str, reference: str) -> tuple[str, str]:
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _HOST_RE.match(first):
            raise ReferenceError(f"invalid registry host in image reference {reference!r:.80}")
        host = first.lower()
        if host in _DOCKER_ALIASES:
            host = DEFAULT_REGISTRY
        return host, remainder
    return DEFAULT_REGISTRY, rest
