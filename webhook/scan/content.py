"""SCAP content on disk: where the datastream is, its sha256, which profiles it has.

The sha256 of every input file is part of the scan key, so a changed datastream or tailoring
file forces a rescan. Hashes are cached by (path, size, mtime) because a 10 MB datastream takes
~30 ms to hash and admission needs the key on every request. scripts/install-content.sh
records each installed datastream's sha256, size and mtime in manifest.json beside it: a file
that still has that size and mtime is not hashed again at every process start (the ~350 MB of
every distribution's content would take about a second).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from functools import lru_cache

from lxml import etree

from ..config import REPO
from .identify import FAMILIES
from .results import ANY_PRODUCT, ContentSet, ContentSpec

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
    entry = manifest(os.path.dirname(path)).get(os.path.basename(path)) or {}
    if entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return entry["sha256"]
    return _sha256_cached(path, st.st_size, st.st_mtime_ns)


def manifest(directory: str) -> dict[str, dict]:
    """manifest.json of a content directory (file → package, version, size, mtime_ns, sha256),
    {} when there is none or it cannot be read."""
    path = os.path.join(directory, "manifest.json")
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return _manifest_cached(path, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _manifest_cached(path: str, size: int, mtime_ns: int) -> dict[str, dict]:
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: v for k, v in doc.items()
            if isinstance(v, dict) and isinstance(v.get("sha256"), str)}


def product_of_datastream(path: str) -> str:
    """debian12 for .../ssg-debian12-ds.xml; "" for a datastream not named after a product."""
    m = re.fullmatch(r"ssg-([a-z0-9]+)-ds(?:-1\.[23])?\.xml", os.path.basename(path))
    return m.group(1) if m and any(m.group(1) in ps for ps in FAMILIES.values()) else ""


def single(datastream: str, profile: str, tailoring: str | None = None,
           oval: tuple[str, ...] = ()) -> ContentSet:
    """One datastream as a content set: it judges the product it is named for (ssg-debian12-
    ds.xml: Debian 12 images), or any identified product when its name says none."""
    product = product_of_datastream(datastream) or ANY_PRODUCT
    return ContentSet.of({product: spec(datastream, profile, tailoring, oval)})


def datastream_for(product: str) -> str:
    """The installed datastream of an SSG product (ssg-<product>-ds.xml), found like any
    relative content path."""
    return resolve_path(f"ssg-{product}-ds.xml")


def profile_id(name: str) -> str:
    """`standard` → xccdf_org.ssgproject.content_profile_standard; full ids unchanged."""
    return name if name.startswith("xccdf_") else f"xccdf_org.ssgproject.content_profile_{name}"


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
    """Profile id -> title in a datastream or XCCDF/tailoring file (for lint and show). An
    installed datastream's ids come from manifest.json (titles ""): parsing the two dozen
    installed datastreams would hold ~1 GB in every process that lints the policies."""
    st = os.stat(path)
    entry = manifest(os.path.dirname(path)).get(os.path.basename(path)) or {}
    if (entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns
            and isinstance(entry.get("profiles"), list)):
        return {p: "" for p in entry["profiles"] if isinstance(p, str)}
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
