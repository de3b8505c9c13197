"""SCAP content on disk: where the datastream is, its sha256, which profiles it has.

The sha256 of every input file is part of the scan key, so a changed datastream or tailoring
file forces a rescan. Hashes are cached by (path, size, mtime) because a 10 MB datastream takes
~30 ms to hash and admission needs the key on every request.
"""
from __future__ import annotations

import hashlib
import os
import threading
from functools import lru_cache

from lxml import etree

from ..config import REPO
from .results import ContentSpec

DEFAULT_CONTENT_DIR = os.environ.get("SCAPGATE_CONTENT_DIR", os.path.join(REPO, ".state", "content"))
DEFAULT_DATASTREAM = "ssg-debian12-ds.xml"
# Content scapgate ships itself (e.g. its OVAL checks for containers), looked up after the
# policy's own directory and before the installed SCAP Security Guide content.
SHIPPED_CONTENT_DIR = os.path.join(REPO, "content")
_lock = threading.Lock()


class ContentError(Exception):
    """A configured content file is missing, unreadable or not SCAP: no verdict can be trusted."""


def resolve_path(path: str, base: str | None = None) -> str:
    """Relative content paths are looked up next to the policy, then in scapgate's shipped
    content, then in the installed content dir."""
    if os.path.isabs(path):
        return path
    for root in (base, SHIPPED_CONTENT_DIR, DEFAULT_CONTENT_DIR):
        if root and os.path.exists(os.path.join(root, path)):
            return os.path.abspath(os.path.join(root, path))
    return os.path.abspath(os.path.join(base or DEFAULT_CONTENT_DIR, path))


def sha256_file(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        raise ContentError(f"SCAP content {path} is missing: {e.strerror}") from e
    return _sha256_cached(path, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def spec(datastream: str, profile: str, tailoring: str | None = None,
         oval: tuple[str, ...] = ()) -> ContentSpec:
    """Build the ContentSpec (with hashes) for a policy's content section."""
    return ContentSpec(
        datastream=datastream, datastream_sha256=sha256_file(datastream), profile=profile,
        tailoring=tailoring, tailoring_sha256=sha256_file(tailoring) if tailoring else "",
        oval=tuple(oval), oval_sha256=tuple(sha256_file(o) for o in oval))


def profiles(path: str) -> dict[str, str]:
    """Profile id -> title in a datastream or XCCDF/tailoring file (for lint and show)."""
    st = os.stat(path)
    return dict(_profiles_cached(path, st.st_size, st.st_mtime_ns))


@lru_cache(maxsize=16)
def _profiles_cached(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    out = []
    for _, el in etree.iterparse(path, events=("end",), tag="{*}Profile", huge_tree=True):
        title = el.find("{*}title")
        out.append((el.get("id"), (title.text or "").strip() if title is not None else ""))
        el.clear()
    return tuple(out)


def rule_ids(path: str) -> frozenset[str]:
    """All XCCDF rule ids in a datastream (for waiver lint)."""
    st = os.stat(path)
    return _rules_cached(path, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _rules_cached(path: str, size: int, mtime_ns: int) -> frozenset[str]:
    ids = set()
    for _, el in etree.iterparse(path, events=("end",), tag="{*}Rule", huge_tree=True):
        ids.add(el.get("id"))
        el.clear()
    return frozenset(ids)
