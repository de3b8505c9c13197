"""CVE feeds: the distributions' own OVAL vulnerability definitions, fetched and kept.

One feed per SSG product (debian12 → Debian's bookworm feed, ubuntu2204 → Ubuntu's jammy
feed, rhel9 → Red Hat's OVAL v2 rhel-9 feed, …). The vendor's official URL is the default; any
URL or local file overrides it (`SCAPGATE_CVE_FEEDS=debian12=/feeds/bookworm.xml.bz2,…`), so
air-gapped clusters mount feeds from a ConfigMap or volume.

An update asks with the last ETag / Last-Modified (a 304 costs nothing), reads at most
`max_bytes` compressed and decompressed (bz2, xz, gzip or plain, by magic), refuses what is
not a well-formed OVAL definitions document, and only then replaces the kept copy: a truncated
download, an HTML error page or a gigantic file never replaces the last good feed. The kept
form is the index cve.py evaluates from (state/feeds/<product>/index-<sha12>.sqlite), with
meta.json saying where it came from, its sha256, when it was fetched and last confirmed, its
definition count and the failures since the last success.
"""
from __future__ import annotations

import bz2
import fcntl
import hashlib
import http.client
import json
import lzma
import os
import re
import shutil
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import asdict, dataclass

from .cve import FeedError, FeedIndex, build_index

DEBIAN = "https://www.debian.org/security/oval/oval-definitions-{codename}.xml.bz2"
UBUNTU = "https://security-metadata.canonical.com/oval/com.ubuntu.{codename}.cve.oval.xml.bz2"
REDHAT = "https://security.access.redhat.com/data/oval/v2/RHEL{major}/rhel-{major}.oval.xml.bz2"
DEFAULT_FEEDS = {
    "debian11": DEBIAN.format(codename="bullseye"),
    "debian12": DEBIAN.format(codename="bookworm"),
    "debian13": DEBIAN.format(codename="trixie"),
    **{f"ubuntu{v}": UBUNTU.format(codename=c) for v, c in (
        ("1604", "xenial"), ("1804", "bionic"), ("2004", "focal"), ("2204", "jammy"),
        ("2404", "noble"))},
    **{f"rhel{m}": REDHAT.format(major=m) for m in ("8", "9", "10")},
}
# How a product's feed names packages and which traps its evaluation must close.
KIND = {**{p: "debian" for p in DEFAULT_FEEDS if p.startswith("debian")},
        **{p: "ubuntu" for p in DEFAULT_FEEDS if p.startswith("ubuntu")},
        **{p: "redhat" for p in DEFAULT_FEEDS if p.startswith("rhel")}}
KIND_NOTES = {
    "debian": "Debian's feed states no severity (every CVE is 'unknown') and marks CVEs without "
              "a fix as never true, so only CVEs with a released fix are reported",
    "ubuntu": "severity is Ubuntu's priority; CVEs without a fix are reported with no fixed "
              "version",
    "redhat": "severity is the advisory's; a package whose signature key oscap cannot read is "
              "judged as Red Hat's",
}
MAGIC = ((b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b", "gzip"))
CHUNK = 1 << 20
_PRODUCT = re.compile(r"^[a-z][a-z0-9]{1,31}$")
ANY = "any"          # a feed given without a product (`scapgate scan --cve-feed FILE`)


def kind_of(product: str) -> str:
    """How a product's feed names packages: debian (source names), ubuntu, redhat (rpm)."""
    if product in KIND:
        return KIND[product]
    return next((k for k in ("debian", "ubuntu") if product.startswith(k)), "redhat")


@dataclass
class FeedStatus:
    """What meta.json keeps about one product's feed."""

    product: str
    source: str = ""
    sha256: str = ""
    index: str = ""              # file name of the index under the product's directory
    definitions: int = 0
    bytes: int = 0
    fetched_at: float = 0.0      # when this content was first fetched
    checked_at: float = 0.0      # last success (200 or 304, or a file read)
    as_of: float = 0.0           # what the age is measured from (see FeedStore.update)
    etag: str = ""
    last_modified: str = ""
    failures: int = 0            # consecutive failed updates
    last_error: str = ""
    last_attempt: float = 0.0

    def age_s(self, now: float | None = None) -> float | None:
        return None if not self.sha256 else max(0.0, (now or time.time()) - self.as_of)

    @property
    def kind(self) -> str:
        return kind_of(self.product)


@dataclass
class UpdateResult:
    product: str
    outcome: str                 # updated | unchanged | failed | skipped
    detail: str = ""
    status: FeedStatus | None = None
    seconds: float = 0.0
    changed_from: str = ""       # the previous sha256 when updated


def age_text(seconds: float, digits: int = 0) -> str:
    """3d, 5.5h, 12m, 40s: a feed's age as messages and `feeds status` say it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.{digits}f}{unit}"
    return f"{seconds:.0f}s"


def sources(overrides: tuple | list | str = ()) -> dict[str, str]:
    """product → URL or path: the vendors' defaults, overridden by `product=source` entries;
    `off` (alone) disables every feed, `product=off` one."""
    if isinstance(overrides, str):
        overrides = [x.strip() for x in overrides.split(",") if x.strip()]
    out = dict(DEFAULT_FEEDS)
    for entry in overrides:
        if entry == "off":
            out = {}
            continue
        product, sep, src = entry.partition("=")
        product, src = product.strip(), src.strip()
        if not sep or not _PRODUCT.match(product) or not src:
            raise ValueError(f"CVE feed setting {entry!r}: expected product=URL-or-path")
        if src == "off":
            out.pop(product, None)
        else:
            out[product] = src
    return out


class FeedStore:
    """state/feeds: the kept feed of every product and its status."""

    def __init__(self, state_dir: str, *, max_bytes: int = 1 << 30, timeout_s: float = 300.0):
        self.dir = os.path.join(state_dir, "feeds")
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._cache: dict[str, tuple[float, FeedStatus | None]] = {}   # product → (read at, status)

    def _pdir(self, product: str) -> str:
        if not _PRODUCT.match(product):
            raise ValueError(f"not a product name: {product!r}")
        return os.path.join(self.dir, product)

    # -- reading ------------------------------------------------------------------------
    def status(self, product: str) -> FeedStatus:
        try:
            with open(os.path.join(self._pdir(product), "meta.json")) as fh:
                d = json.load(fh)
            return FeedStatus(**{k: v for k, v in d.items()
                                 if k in FeedStatus.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return FeedStatus(product)

    def current(self, product: str, *, recheck_s: float = 1.0) -> FeedStatus | None:
        """The feed in force for a product (None when there is none), re-read at most every
        recheck_s: asked for every image of every admission."""
        now = time.monotonic()
        hit = self._cache.get(product)
        if hit is not None and now < hit[0] + recheck_s:
            return hit[1]
        st = self.status(product) if _PRODUCT.match(product or "") else None
        st = st if st is not None and st.sha256 else None
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[product] = (now, st)
        return st

    def current_for(self, product: str) -> FeedStatus | None:
        """The product's feed, else a feed kept for any product."""
        if not product:
            return None
        return self.current(product) or self.current(ANY)

    def index(self, status: FeedStatus) -> FeedIndex:
        return FeedIndex(os.path.join(self._pdir(status.product), status.index))

    def products(self) -> list[str]:
        try:
            return sorted(p for p in os.listdir(self.dir) if _PRODUCT.match(p))
        except FileNotFoundError:
            return []

    # -- updating -----------------------------------------------------------------------
    def update(self, product: str, source: str, *, force: bool = False,
               min_interval_s: float = 0.0) -> UpdateResult:
        """Fetch a product's feed if it changed; keep the last good copy whatever happens.
        Several processes may call this: one fetches, the others wait for it and then skip
        (attempted less than min_interval_s ago)."""
        t0 = time.monotonic()
        pdir = self._pdir(product)
        os.makedirs(pdir, exist_ok=True)
        with open(os.path.join(pdir, ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            st = self.status(product)
            if (not force and min_interval_s and st.source == source
                    and time.time() - st.last_attempt < min_interval_s):
                return UpdateResult(product, "skipped", "asked recently", st)
            st.last_attempt = time.time()
            try:
                result = self._update(pdir, st, source, force)
            except (FeedError, OSError, ValueError, urllib.error.URLError, EOFError,
                    lzma.LZMAError, zlib.error, http.client.HTTPException,
                    sqlite3.Error) as e:
                st.failures += 1
                st.last_error = f"{type(e).__name__}: {e}"[:500] if not isinstance(
                    e, FeedError) else str(e)[:500]
                self._write_meta(pdir, st)
                result = UpdateResult(product, "failed", st.last_error, st)
            self._cache.pop(product, None)
        result.seconds = time.monotonic() - t0
        return result

    def _update(self, pdir: str, st: FeedStatus, source: str, force: bool) -> UpdateResult:
        same_source = st.source == source and st.sha256 and not force
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=pdir) as tmp:
            raw = os.path.join(tmp, "download")
            fetched = self._fetch(source, raw, st if same_source else None)
            now = time.time()
            if fetched is None or fetched[0] is None:   # 304 Not Modified / same file
                as_of = fetched[2] if fetched is not None else now
                st.checked_at, st.as_of, st.failures, st.last_error = now, as_of, 0, ""
                self._write_meta(pdir, st)
                return UpdateResult(st.product, "unchanged", "not modified", st)
            etag, last_modified, as_of = fetched
            plain = os.path.join(tmp, "feed.xml")
            sha, size = decompress(raw, plain, self.max_bytes)
            if sha == st.sha256 and not force:
                st.checked_at, st.as_of, st.failures, st.last_error = now, as_of or now, 0, ""
                st.etag, st.last_modified, st.source = etag, last_modified, source
                self._write_meta(pdir, st)
                return UpdateResult(st.product, "unchanged", "same content", st)
            index_name = f"index-{sha[:12]}.sqlite"
            meta = build_index(plain, os.path.join(tmp, index_name))
            os.replace(os.path.join(tmp, index_name), os.path.join(pdir, index_name))
        previous = st.sha256
        old_index = st.index
        st = FeedStatus(product=st.product, source=source, sha256=sha, index=index_name,
                        definitions=meta["definitions"], bytes=size, fetched_at=now,
                        checked_at=now, as_of=as_of or now, etag=etag,
                        last_modified=last_modified, last_attempt=st.last_attempt)
        self._write_meta(pdir, st)
        self._prune(pdir, keep={index_name, old_index})
        return UpdateResult(st.product, "updated", f"{meta['definitions']} definitions", st,
                            changed_from=previous)

    def _fetch(self, source: str, dest: str, known: FeedStatus | None):
        """Copy the source to dest; None when the server says it has not changed. Returns
        (etag, last_modified, as_of): a local file's age is its mtime (the mounted copy's)."""
        if re.match(r"^https?://", source):
            req = urllib.request.Request(source, headers={"User-Agent": "scapgate"})
            if known is not None and known.etag:
                req.add_header("If-None-Match", known.etag)
            if known is not None and known.last_modified:
                req.add_header("If-Modified-Since", known.last_modified)
            try:
                resp = urllib.request.urlopen(req, timeout=min(60.0, self.timeout_s))
            except urllib.error.HTTPError as e:
                if e.code == 304:
                    return None
                raise FeedError(f"{source}: HTTP {e.code} {e.reason}") from e
            deadline = time.monotonic() + self.timeout_s
            sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
            with resp, open(dest, "wb") as out:
                total = 0
                while True:
                    if sock is not None:     # a trickling server cannot hold us past deadline
                        sock.settimeout(max(0.1, deadline - time.monotonic()))
                    chunk = resp.read1(64 << 10)
                    if not chunk:
                        break
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise FeedError(f"{source}: larger than {self.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise FeedError(f"{source}: download took longer than "
                                        f"{self.timeout_s:g} s")
                    out.write(chunk)
                declared = resp.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) != total:
                    raise FeedError(f"{source}: truncated ({total} of {declared} bytes)")
                return resp.headers.get("ETag", ""), resp.headers.get("Last-Modified", ""), 0.0
        path = source.removeprefix("file://")
        size = os.path.getsize(path)
        if size > self.max_bytes:
            raise FeedError(f"{path}: larger than {self.max_bytes} bytes")
        mtime = os.path.getmtime(path)
        if known is not None and known.etag == f"file:{size}:{mtime}":
            return None, "", mtime               # unchanged: its age is still the file's
        shutil.copyfile(path, dest)
        return f"file:{size}:{mtime}", "", mtime

    def _write_meta(self, pdir: str, st: FeedStatus) -> None:
        tmp = os.path.join(pdir, f".meta.{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump(asdict(st), fh, indent=1)
        os.replace(tmp, os.path.join(pdir, "meta.json"))

    @staticmethod
    def _prune(pdir: str, keep: set[str]) -> None:
        """Keep the index in force and the one before it (an evaluation may still read it)."""
        for name in os.listdir(pdir):
            if name.startswith("index-") and name not in keep:
                try:
                    os.unlink(os.path.join(pdir, name))
                except OSError:
                    pass


def decompress(src: str, dest: str, limit: int) -> tuple[str, int]:
    """Decompress src (bz2, xz, gzip or plain, told by its first bytes) into dest, refusing
    more than limit bytes of output. Returns (sha256 of the output, its size)."""
    with open(src, "rb") as fh:
        head = fh.read(8)
    kind = next((k for magic, k in MAGIC if head.startswith(magic)), "plain")
    h, total = hashlib.sha256(), 0
    with open(src, "rb") as fh, open(dest, "wb") as out:
        if kind == "plain":
            pieces = iter(lambda: fh.read(CHUNK), b"")
        else:
            pieces = _stream(fh, kind)
        for piece in pieces:
            total += len(piece)
            if total > limit:
                raise FeedError(f"the feed decompresses to more than {limit} bytes")
            h.update(piece)
            out.write(piece)
    if total == 0:
        raise FeedError("the feed is empty")
    return h.hexdigest(), total


def _stream(fh, kind: str):
    """Decompressed pieces of at most CHUNK bytes each (a bomb is stopped by the caller's
    count, never held whole); a truncated stream raises."""
    def new():
        return {"bz2": bz2.BZ2Decompressor, "xz": lzma.LZMADecompressor,
                "gzip": lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)}[kind]()
    d = new()
    while True:
        data = fh.read(CHUNK)
        if not data:
            break
        while data:
            if kind == "gzip":
                piece = d.decompress(data, CHUNK)
                data = d.unconsumed_tail
                if d.eof:
                    data = d.unused_data + data
                    if data:
                        d = new()
            else:
                piece = d.decompress(data, CHUNK)
                data = b""
                while not d.eof and not d.needs_input:
                    yield piece
                    piece = d.decompress(b"", CHUNK)
                if d.eof and d.unused_data:
                    data = d.unused_data        # concatenated streams (pbzip2, xz -T)
                    yield piece
                    d = new()
                    continue
            yield piece
    if not d.eof:
        raise FeedError(f"truncated {kind} stream")


def feed_summary(st: FeedStatus, evaluation=None, error: str = "", product: str = "") -> dict:
    """What a result records of the feed it was judged with (ScanResult.feed)."""
    kind = kind_of(product or st.product)
    out = {"product": product or st.product, "feed": st.product, "sha256": st.sha256,
           "source": st.source, "as_of": st.as_of, "definitions": st.definitions,
           "kind": kind, "note": KIND_NOTES.get(kind, "")}
    if evaluation is not None:
        out.update(evaluated=evaluation.definitions, unevaluated=evaluation.unevaluated)
    if error:
        out = {"product": product or st.product, "error": error, "source": st.source}
    return out


def evaluate_snapshot(store: FeedStore, st: FeedStatus, root: str, work: str, *,
                      product: str, package_db: str, arch: str = "", settings=None):
    """(findings, feed summary) of one image root against a product's kept feed; a failure
    is a summary with an error (the verdict names it), never an exception."""
    from . import oscap
    from .cve import evaluate
    try:
        index = store.index(st)
    except FeedError as e:
        return [], feed_summary(st, error=f"CVE feed for {product} unusable: {e}",
                                product=product)
    try:
        ev = evaluate(root, work, index, kind=kind_of(product), package_db=package_db,
                      arch=arch, settings=settings)
    except (FeedError, oscap.ScanError, OSError) as e:
        return [], feed_summary(st, error=f"CVE evaluation failed: {e}"[:600],
                                product=product)
    finally:
        index.close()
    return ev.findings, feed_summary(st, ev, product=product)
