"""FeedStore (webhook/scan/feeds.py): CVE feeds fetched from a real HTTP server on 127.0.0.1
(tests.builders.feeds.FeedServer) or read from local files, kept as an index, and never replaced
by anything worse than what is kept.

The feed is Debian's format (debian_feed), compressed as Debian publishes it (bz2) and as
mirrors may (xz, gzip, plain). What is checked: the first fetch (sha256 of the decompressed
document, definition count, times, index), conditional requests (If-None-Match, else
If-Modified-Since), a changed feed, every kind of bad download failing without touching the
kept feed, size limits against bombs, local files (age = mtime), sources(), and the
`scapgate feeds` commands as subprocesses.
"""
from __future__ import annotations

import bz2
import email.utils
import gzip
import hashlib
import json
import lzma
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from lxml import etree

from tests.builders import feeds as F
from webhook.scan.cve import FeedError, FeedIndex
from webhook.scan.feeds import DEFAULT_FEEDS, FeedStore, decompress, sources

SCAPGATE = "/work/main/.venv/bin/scapgate"
PRODUCT = "debian12"

ADVISORIES = [
    F.Advisory("CVE-2024-3094", (("xz-utils", "5.6.1+really5.4.5-1"),)),
    F.Advisory("CVE-2023-4911", (("glibc", "2.36-9+deb12u3"),)),
    F.Advisory("CVE-2024-0727", (("openssl", "3.0.13-1~deb12u1"), ("openssl1.1", None))),
]
NEWER = ADVISORIES + [F.Advisory("CVE-2024-2398", (("curl", "7.88.1-10+deb12u6"),))]


def feed_doc(advisories=ADVISORIES) -> bytes:
    return F.debian_feed("bookworm", "12", advisories)


def def_ids(doc: bytes) -> set[str]:
    root = etree.fromstring(doc)
    return {d.get("id") for d in root.iterfind(f"{{{F.NS_DEF}}}definitions/{{{F.NS_DEF}}}definition")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


DOC = feed_doc()
DOC_IDS = def_ids(DOC)
assert len(DOC_IDS) == 4          # one definition per (CVE, source package)


@pytest.fixture(scope="module")
def server():
    with F.FeedServer() as s:
        yield s


@pytest.fixture
def path(request) -> str:
    """A server path of this test's own (the server is shared by the module)."""
    return f"/{request.node.name}/oval-definitions-bookworm.xml.bz2"


@pytest.fixture
def store(tmp_path) -> FeedStore:
    return FeedStore(str(tmp_path / "state"))


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def kept(store: FeedStore, product: str = PRODUCT):
    """The kept feed as a reader finds it: status, index path, the definition ids it holds."""
    st = store.status(product)
    assert st.sha256, "no feed kept"
    index_path = Path(store.dir) / product / st.index
    assert index_path.is_file()
    idx = store.index(st)
    try:
        ids = set(idx.all_definitions())
        assert idx.document(sorted(ids)).tag == f"{{{F.NS_DEF}}}oval_definitions"
    finally:
        idx.close()
    return st, index_path, ids


def leftovers(store: FeedStore, product: str = PRODUCT) -> list[str]:
    return sorted(n for n in os.listdir(Path(store.dir) / product)
                  if n.startswith((".fetch-", ".meta.")) or n.endswith(".tmp"))


# -- first fetch --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bz2", "xz", "gz", ""], ids=["bz2", "xz", "gzip", "plain"])
def test_first_update_keeps_the_feed(server, store, path, kind):
    server.put(path, F.compress(DOC, kind))
    t0 = time.time()
    res = store.update(PRODUCT, server.url(path))
    t1 = time.time()
    assert res.outcome == "updated", res.detail
    assert res.detail == "4 definitions" and res.changed_from == ""
    assert res.seconds > 0
    st = res.status
    assert st.sha256 == sha(DOC)                       # of the decompressed document
    assert (st.definitions, st.bytes) == (len(DOC_IDS), len(DOC))
    assert t0 <= st.fetched_at <= t1 and st.checked_at == st.fetched_at == st.as_of
    assert st.source == server.url(path) and st.etag == server.etag(path)
    assert (st.failures, st.last_error) == (0, "")
    assert st.index == f"index-{st.sha256[:12]}.sqlite"
    assert 0 <= st.age_s() < 60 and st.kind == "debian"
    # what other processes read: meta.json and the index file
    assert store.status(PRODUCT) == st
    assert FeedStore(store.dir.rsplit("/feeds", 1)[0]).status(PRODUCT) == st
    status, index_path, ids = kept(store)
    assert ids == DOC_IDS
    idx = FeedIndex(str(index_path))
    try:
        assert idx.meta["definitions"] == 4
        assert set(idx.definitions_for({"xz-utils"})) >= {F.debian_definition_id("CVE-2024-3094 xz-utils")}
        assert F.debian_definition_id("CVE-2023-4911 glibc") not in idx.definitions_for({"xz-utils"})
    finally:
        idx.close()
    assert store.current(PRODUCT).sha256 == st.sha256
    assert store.current_for(PRODUCT).sha256 == st.sha256
    assert store.products() == [PRODUCT]
    assert leftovers(store) == []
    assert server.requests_for(path)[0][1].get("If-None-Match") is None


def test_no_feed_kept_yet(store):
    st = store.status(PRODUCT)
    assert (st.sha256, st.age_s(), st.failures) == ("", None, 0)
    assert store.current(PRODUCT) is None and store.current_for(PRODUCT) is None
    assert store.current_for("") is None and store.products() == []


def test_product_names_cannot_escape_the_feeds_dir(store):
    for bad in ("../etc", "debian12/../../x", "Debian12", ""):
        with pytest.raises(ValueError, match="not a product name"):
            store.update(bad, "/dev/null")
    assert store.current("../etc") is None


# -- conditional requests -----------------------------------------------------------------------

def test_second_update_sends_if_none_match_and_304_is_unchanged(server, store, path):
    server.put(path, F.compress(DOC, "bz2"))
    first = store.update(PRODUCT, server.url(path)).status
    _, index_before, _ = kept(store)
    time.sleep(0.02)
    res = store.update(PRODUCT, server.url(path))
    assert (res.outcome, res.detail) == ("unchanged", "not modified")
    reqs = server.requests_for(path)
    assert [status for _, _, status in reqs] == [200, 304]
    assert reqs[1][1]["If-None-Match"] == server.etag(path) == first.etag
    assert "If-Modified-Since" not in reqs[1][1]      # the server sent no Last-Modified
    st = store.status(PRODUCT)
    assert st.sha256 == first.sha256 and st.index == first.index
    assert st.fetched_at == first.fetched_at
    assert st.checked_at > first.checked_at and st.as_of == st.checked_at
    assert kept(store)[1] == index_before


def test_last_modified_only_uses_if_modified_since(server, store, path):
    modified = time.time() - 3600
    server.put(path, F.compress(DOC, "xz"), etag=False, last_modified=modified)
    first = store.update(PRODUCT, server.url(path)).status
    assert first.etag == "" and first.last_modified == email.utils.formatdate(modified, usegmt=True)
    time.sleep(0.02)
    res = store.update(PRODUCT, server.url(path))
    assert res.outcome == "unchanged"
    (_, h1, s1), (_, h2, s2) = server.requests_for(path)
    assert (s1, s2) == (200, 304)
    assert "If-None-Match" not in h2 and h2["If-Modified-Since"] == first.last_modified
    st = store.status(PRODUCT)
    assert st.sha256 == first.sha256 and st.checked_at > first.checked_at


def test_same_bytes_without_validators_is_unchanged(server, store, path):
    server.put(path, F.compress(DOC, "bz2"), etag=False)
    first = store.update(PRODUCT, server.url(path)).status
    res = store.update(PRODUCT, server.url(path))
    assert (res.outcome, res.detail) == ("unchanged", "same content")
    assert [s for _, _, s in server.requests_for(path)] == [200, 200]
    assert store.status(PRODUCT).sha256 == first.sha256


def test_forced_update_asks_unconditionally(server, store, path):
    server.put(path, F.compress(DOC, "bz2"))
    first = store.update(PRODUCT, server.url(path)).status
    res = store.update(PRODUCT, server.url(path), force=True)
    assert res.outcome == "updated" and res.status.sha256 == first.sha256
    assert "If-None-Match" not in server.requests_for(path)[1][1]
    kept(store)


def test_recently_asked_is_skipped_without_a_request(server, store, path):
    server.put(path, F.compress(DOC, "bz2"))
    store.update(PRODUCT, server.url(path))
    res = store.update(PRODUCT, server.url(path), min_interval_s=3600)
    assert res.outcome == "skipped"
    assert len(server.requests_for(path)) == 1
    # another source is asked at once
    other = path.replace(".bz2", ".xz")
    server.put(other, F.compress(DOC, "xz"))
    assert store.update(PRODUCT, server.url(other), min_interval_s=3600).outcome == "unchanged"


def test_concurrent_updaters_fetch_once(server, store, path):
    server.put(path, F.compress(DOC, "bz2"))
    barrier = threading.Barrier(4)
    outcomes = []

    def run():
        barrier.wait()
        outcomes.append(FeedStore(store.dir.rsplit("/feeds", 1)[0]).update(
            PRODUCT, server.url(path), min_interval_s=3600).outcome)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["skipped"] * 3 + ["updated"]
    assert len(server.requests_for(path)) == 1
    assert kept(store)[2] == DOC_IDS


# -- a changed feed -----------------------------------------------------------------------------

def test_changed_feed_at_the_same_url_is_updated(server, store, path):
    server.put(path, F.compress(DOC, "bz2"))
    first = store.update(PRODUCT, server.url(path)).status
    newer = feed_doc(NEWER)
    server.put(path, F.compress(newer, "bz2"))
    res = store.update(PRODUCT, server.url(path))
    assert res.outcome == "updated" and res.changed_from == first.sha256
    assert res.status.sha256 == sha(newer) != first.sha256
    assert res.status.definitions == len(def_ids(newer)) == 5
    assert server.requests_for(path)[1][1]["If-None-Match"] == first.etag   # asked, got 200
    st, _, ids = kept(store)
    assert ids == def_ids(newer) and st.etag == server.etag(path)
    files = sorted(n for n in os.listdir(Path(store.dir) / PRODUCT) if n.startswith("index-"))
    assert files == sorted([first.index, st.index])          # the previous one is kept too
    # a third version prunes the oldest
    third = feed_doc(NEWER[1:])
    server.put(path, F.compress(third, "bz2"))
    res = store.update(PRODUCT, server.url(path))
    assert res.changed_from == st.sha256
    files = sorted(n for n in os.listdir(Path(store.dir) / PRODUCT) if n.startswith("index-"))
    assert files == sorted([st.index, res.status.index])


# -- bad downloads never replace the kept feed --------------------------------------------------

HTML_ERROR = (b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
              b"<body><center><h1>502 Bad Gateway</h1></center><hr/><center>nginx</center>"
              b"</body></html>\n")
ATOM = (b'<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">'
        b"<title>Debian security</title><entry><title>DSA-5000-1</title></entry></feed>\n")

BAD_BODIES = {
    "truncated-bz2": (lambda: F.compress(DOC, "bz2")[:-200], "truncated bz2 stream"),
    "truncated-xz": (lambda: F.compress(DOC, "xz")[:len(F.compress(DOC, "xz")) // 2],
                     "truncated xz stream"),
    "truncated-gzip": (lambda: F.compress(DOC, "gz")[:-40], "truncated gzip stream"),
    "corrupt-bz2": (lambda: b"BZh91AY&SY" + os.urandom(600), "OSError: Invalid data stream"),
    "html-error-page": (lambda: HTML_ERROR,
                        "not an OVAL definitions document (root element html)"),
    "plain-text": (lambda: b"Service Unavailable\n", "not well-formed XML"),
    "truncated-plain-xml": (lambda: DOC[:len(DOC) // 2], "not well-formed XML"),
    "xml-not-oval": (lambda: F.compress(ATOM, "bz2"),
                     "not an OVAL definitions document (root element feed)"),
    "oval-without-definitions": (lambda: F.compress(feed_doc([]), "bz2"),
                                 "an OVAL document without definitions"),
    "empty": (lambda: b"", "the feed is empty"),
}


def assert_still_kept(store: FeedStore, before, before_index: Path, failures: int, needle: str):
    st = store.status(PRODUCT)
    assert st.failures == failures
    assert needle in st.last_error, st.last_error
    for f in ("sha256", "index", "definitions", "bytes", "fetched_at", "checked_at", "as_of",
              "etag", "source"):
        assert getattr(st, f) == getattr(before, f), f
    assert st.last_attempt > before.last_attempt
    status, index_path, ids = kept(store)
    assert index_path == before_index and ids == DOC_IDS
    assert store.current(PRODUCT).sha256 == before.sha256
    assert leftovers(store) == []


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_download_fails_and_keeps_the_last_good_feed(server, store, path, case):
    body, needle = BAD_BODIES[case]
    server.put(path, F.compress(DOC, "bz2"))
    before = store.update(PRODUCT, server.url(path)).status
    before_index = kept(store)[1]
    server.put(path, body())
    for n in (1, 2):                                      # failures count up, consecutively
        res = store.update(PRODUCT, server.url(path))
        assert res.outcome == "failed" and needle in res.detail, res.detail
        assert res.detail == res.status.last_error
        assert_still_kept(store, before, before_index, n, needle)
    # the good feed back: a success clears the failures
    server.put(path, F.compress(DOC, "bz2"))
    res = store.update(PRODUCT, server.url(path))
    assert res.outcome == "unchanged"
    st = store.status(PRODUCT)
    assert (st.failures, st.last_error, st.sha256) == (0, "", before.sha256)


@pytest.mark.parametrize("status", [500, 503, 404, 403])
def test_http_error_fails_and_keeps_the_last_good_feed(server, store, path, status):
    server.put(path, F.compress(DOC, "bz2"))
    before = store.update(PRODUCT, server.url(path)).status
    before_index = kept(store)[1]
    server.fail(path, status)
    res = store.update(PRODUCT, server.url(path))
    assert res.outcome == "failed"
    assert res.detail.startswith(f"{server.url(path)}: HTTP {status}")
    assert_still_kept(store, before, before_index, 1, f"HTTP {status}")
    server.fail(path, None)
    assert store.update(PRODUCT, server.url(path)).outcome == "unchanged"
    assert store.status(PRODUCT).failures == 0


def test_unreachable_url_fails_and_keeps_the_last_good_feed(server, store, path):
    server.put(path, F.compress(DOC, "bz2"))
    before = store.update(PRODUCT, server.url(path)).status
    before_index = kept(store)[1]
    url = f"http://127.0.0.1:{closed_port()}/oval-definitions-bookworm.xml.bz2"
    res = store.update(PRODUCT, url)
    assert res.outcome == "failed"
    assert res.detail.startswith("URLError:") and "Connection refused" in res.detail
    assert_still_kept(store, before, before_index, 1, "Connection refused")


def test_first_update_failing_keeps_nothing(server, store, path):
    server.fail(path, 500)
    res = store.update(PRODUCT, server.url(path))
    assert res.outcome == "failed"
    st = store.status(PRODUCT)
    assert (st.sha256, st.failures, st.age_s()) == ("", 1, None)
    assert store.current(PRODUCT) is None
    assert not [n for n in os.listdir(Path(store.dir) / PRODUCT) if n.startswith("index-")]


# -- size limits: gigantic feeds and bombs ------------------------------------------------------

BOMB_PAD = 32 << 20                  # whitespace after the document: still well-formed XML


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    padded = DOC + b" " * BOMB_PAD
    return {"bz2": bz2.compress(padded, 9), "xz": lzma.compress(padded, preset=1),
            "gz": gzip.compress(padded, 9, mtime=0)}


def test_feed_larger_than_max_bytes_compressed_is_refused(server, tmp_path, path):
    body = F.compress(DOC, "bz2")
    server.put(path, body)
    small = FeedStore(str(tmp_path / "state"), max_bytes=64 << 10)
    assert small.update(PRODUCT, server.url(path)).outcome == "updated"
    before, before_index, _ = kept(small)
    tight = FeedStore(str(tmp_path / "state"), max_bytes=len(body) - 1)
    server.put(path, F.compress(feed_doc(NEWER), "bz2"))
    res = tight.update(PRODUCT, server.url(path))
    assert res.outcome == "failed"
    assert res.detail == f"{server.url(path)}: larger than {len(body) - 1} bytes"
    assert_still_kept(tight, before, before_index, 1, "larger than")


def test_feed_larger_than_max_bytes_decompressed_is_refused(server, tmp_path, path):
    newer = feed_doc(NEWER)
    body = F.compress(newer, "bz2")
    limit = len(newer) - 1
    assert len(body) < limit                         # the download itself is within the limit
    server.put(path, F.compress(DOC, "bz2"))
    st = FeedStore(str(tmp_path / "state"), max_bytes=limit)
    assert st.update(PRODUCT, server.url(path)).outcome == "updated"
    before, before_index, _ = kept(st)
    server.put(path, body)
    res = st.update(PRODUCT, server.url(path))
    assert res.outcome == "failed"
    assert res.detail == f"the feed decompresses to more than {limit} bytes"
    assert_still_kept(st, before, before_index, 1, "decompresses to more than")


@pytest.mark.parametrize("kind", ["bz2", "xz", "gz"])
def test_compression_bomb_is_stopped_at_the_limit(server, tmp_path, path, bombs, kind):
    bomb = bombs[kind]
    limit = 1 << 20
    assert len(bomb) < limit // 8 and len(bomb) * 400 < BOMB_PAD
    store = FeedStore(str(tmp_path / "state"), max_bytes=limit)
    server.put(path, F.compress(DOC, "bz2"))
    assert store.update(PRODUCT, server.url(path)).outcome == "updated"
    before, before_index, _ = kept(store)
    server.put(path, bomb)
    t0 = time.monotonic()
    res = store.update(PRODUCT, server.url(path))
    assert res.outcome == "failed"
    assert res.detail == f"the feed decompresses to more than {limit} bytes"
    assert time.monotonic() - t0 < 5            # stopped early, not decompressed whole
    assert_still_kept(store, before, before_index, 1, "decompresses to more than")
    # without the limit the same bytes are a valid feed (the bomb is well-formed)
    roomy = FeedStore(str(tmp_path / "roomy"), max_bytes=64 << 20)
    res = roomy.update(PRODUCT, server.url(path))
    assert res.outcome == "updated" and res.status.bytes == len(DOC) + BOMB_PAD


def test_decompress_stops_writing_at_the_limit(tmp_path, bombs):
    src, dest = tmp_path / "bomb.bz2", tmp_path / "out.xml"
    src.write_bytes(bombs["bz2"])
    with pytest.raises(FeedError, match="more than 3000000 bytes"):
        decompress(str(src), str(dest), 3_000_000)
    assert dest.stat().st_size <= 3_000_000


def test_concatenated_streams_decompress_whole(tmp_path):
    """pbzip2 and `xz -T` write several streams one after another."""
    half = len(DOC) // 2
    for kind, comp in (("bz2", lambda d: bz2.compress(d, 9)), ("xz", lzma.compress),
                       ("gz", lambda d: gzip.compress(d, mtime=0))):
        src = tmp_path / f"feed.{kind}"
        src.write_bytes(comp(DOC[:half]) + comp(DOC[half:]))
        digest, size = decompress(str(src), str(tmp_path / f"out-{kind}.xml"), 1 << 20)
        assert (digest, size) == (sha(DOC), len(DOC)), kind


# -- local files --------------------------------------------------------------------------------

def local_feed(tmp_path: Path, doc: bytes = DOC, kind: str = "xz", days_old: float = 10) -> Path:
    p = tmp_path / "mounted" / f"oval-definitions-bookworm.xml.{kind or 'plain'}"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(F.compress(doc, kind))
    old = time.time() - days_old * 86400
    os.utime(p, (old, old))
    return p


@pytest.mark.parametrize("prefix", ["", "file://"])
def test_local_file_source_age_is_its_mtime(tmp_path, store, prefix):
    src = local_feed(tmp_path)
    res = store.update(PRODUCT, prefix + str(src))
    assert res.outcome == "updated", res.detail
    st = res.status
    assert st.sha256 == sha(DOC) and st.definitions == 4 and kept(store)[2] == DOC_IDS
    assert st.as_of == src.stat().st_mtime
    assert abs(st.age_s() - 10 * 86400) < 60
    assert abs(store.status(PRODUCT).age_s() - 10 * 86400) < 60
    assert st.checked_at > st.as_of and st.etag.startswith("file:")


def test_unchanged_local_file_is_unchanged(tmp_path, store):
    src = local_feed(tmp_path)
    first = store.update(PRODUCT, str(src)).status
    res = store.update(PRODUCT, str(src))
    assert res.outcome == "unchanged"
    st = store.status(PRODUCT)
    assert st.sha256 == first.sha256 and st.index == first.index
    assert st.checked_at >= first.checked_at


def test_unchanged_local_file_keeps_its_age(tmp_path, store):
    src = local_feed(tmp_path, days_old=10)
    store.update(PRODUCT, str(src))
    assert store.update(PRODUCT, str(src)).outcome == "unchanged"
    assert store.status(PRODUCT).age_s() > 9 * 86400


def test_changed_local_file_is_updated(tmp_path, store):
    src = local_feed(tmp_path)
    first = store.update(PRODUCT, str(src)).status
    newer = feed_doc(NEWER)
    src.write_bytes(F.compress(newer, "xz"))
    os.utime(src, (time.time() - 3600, time.time() - 3600))
    res = store.update(PRODUCT, str(src))
    assert res.outcome == "updated" and res.changed_from == first.sha256
    assert res.status.sha256 == sha(newer) and abs(res.status.age_s() - 3600) < 60


def test_local_file_problems_keep_the_last_good_feed(tmp_path):
    src = local_feed(tmp_path, kind="bz2")
    store = FeedStore(str(tmp_path / "state"), max_bytes=len(DOC) + 10)
    before = store.update(PRODUCT, str(src)).status
    before_index = kept(store)[1]
    missing = tmp_path / "mounted" / "gone.xml.bz2"
    res = store.update(PRODUCT, str(missing))
    assert res.outcome == "failed" and res.detail.startswith("FileNotFoundError:")
    assert_still_kept(store, before, before_index, 1, str(missing))
    big = local_feed(tmp_path, feed_doc(NEWER), kind="")
    res = store.update(PRODUCT, str(big))
    assert res.outcome == "failed" and res.detail == f"{big}: larger than {len(DOC) + 10} bytes"
    assert_still_kept(store, before, before_index, 2, "larger than")
    src.write_bytes(HTML_ERROR)
    res = store.update(PRODUCT, str(src))
    assert res.outcome == "failed" and "root element html" in res.detail
    assert_still_kept(store, before, before_index, 3, "root element html")


# -- sources() ----------------------------------------------------------------------------------

def test_default_sources_are_the_vendors():
    s = sources()
    assert s == DEFAULT_FEEDS and s is not DEFAULT_FEEDS
    assert s["debian12"] == "https://www.debian.org/security/oval/oval-definitions-bookworm.xml.bz2"
    assert s["ubuntu2204"] == ("https://security-metadata.canonical.com/oval/"
                               "com.ubuntu.jammy.cve.oval.xml.bz2")
    assert s["rhel9"] == "https://security.access.redhat.com/data/oval/v2/RHEL9/rhel-9.oval.xml.bz2"


def test_source_overrides():
    s = sources(["debian12=/feeds/bookworm.xml.bz2", "rhel9=off",
                 "ubuntu2204=http://mirror.local/jammy.xml.bz2"])
    assert s["debian12"] == "/feeds/bookworm.xml.bz2"
    assert s["ubuntu2204"] == "http://mirror.local/jammy.xml.bz2"
    assert "rhel9" not in s and s["rhel8"] == DEFAULT_FEEDS["rhel8"]
    assert DEFAULT_FEEDS["rhel9"].endswith("rhel-9.oval.xml.bz2")          # not mutated
    # the environment's comma-separated string, with spaces
    assert sources(" debian12 = /a.xml , rhel9=off ") == {
        **{k: v for k, v in DEFAULT_FEEDS.items() if k != "rhel9"}, "debian12": "/a.xml"}
    # a product of its own
    assert sources("sles15=/feeds/sles.xml")["sles15"] == "/feeds/sles.xml"


def test_off_clears_every_feed():
    assert sources(["off"]) == {} and sources("off") == {}
    assert sources(["off", "debian12=/feeds/b.xml"]) == {"debian12": "/feeds/b.xml"}
    assert sources("debian12=/feeds/b.xml,off") == {}


@pytest.mark.parametrize("entry", ["debian12", "=/x.xml", "debian12=", "Debian12=/x",
                                   "d=/x", "debian 12=/x", "debian12:/x", "../x=/y"])
def test_malformed_source_entry_raises(entry):
    with pytest.raises(ValueError, match="expected product=URL-or-path"):
        sources([entry])


# -- `scapgate feeds` as subprocesses -----------------------------------------------------------

def run_cli(*args: str, state: Path, feeds: str, **extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCAPGATE_STATE_DIR": str(state), "SCAPGATE_CVE_FEEDS": feeds, **extra}
    return subprocess.run([SCAPGATE, *args], capture_output=True, text=True, env=env,
                          timeout=60, stdin=subprocess.DEVNULL)


def test_feeds_commands(server, tmp_path, path):
    state = tmp_path / "state"
    url = server.url(path)
    server.put(path, F.compress(DOC, "bz2"))
    feeds = f"debian12={url}"

    p = run_cli("feeds", "status", "--json", state=state, feeds=feeds)
    assert p.returncode == 0, p.stderr
    rows = {r["product"]: r for r in json.loads(p.stdout)}
    assert {"debian12", "ubuntu2204", "rhel9"} <= set(rows)
    assert rows["debian12"]["source"] == url and rows["debian12"]["configured"]
    assert (rows["debian12"]["sha256"], rows["debian12"]["age_s"]) == ("", None)
    assert rows["rhel9"]["source"] == DEFAULT_FEEDS["rhel9"]

    p = run_cli("feeds", "update", "--product", "debian12", "--no-rejudge", state=state,
                feeds=feeds)
    assert p.returncode == 0, p.stderr
    (line,) = p.stdout.splitlines()
    assert line.split()[:2] == ["debian12", "updated"] and line.endswith("4 definitions")
    assert len(server.requests_for(path)) == 1
    assert FeedStore(str(state)).products() == ["debian12"]      # no other product was asked

    p = run_cli("feeds", "status", "--json", state=state, feeds=feeds)
    row = next(r for r in json.loads(p.stdout) if r["product"] == "debian12")
    assert row["sha256"] == sha(DOC) and row["definitions"] == 4 and row["bytes"] == len(DOC)
    assert 0 <= row["age_s"] < 60 and row["failures"] == 0 and row["last_error"] == ""
    assert FeedStore(str(state)).status("debian12").sha256 == sha(DOC)

    p = run_cli("feeds", "update", "--product", "debian12", "--no-rejudge", state=state,
                feeds=feeds)
    assert p.returncode == 0 and p.stdout.split()[:2] == ["debian12", "unchanged"]
    assert "not modified" in p.stdout
    assert server.requests_for(path)[-1][2] == 304

    server.fail(path, 503)
    p = run_cli("feeds", "update", "--product", "debian12", "--no-rejudge", state=state,
                feeds=feeds)
    assert p.returncode == 1 and p.stdout.split()[:2] == ["debian12", "failed"]
    assert "HTTP 503" in p.stdout
    server.fail(path, None)

    p = run_cli("feeds", "status", state=state, feeds=feeds)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["product", "age", "definitions", "sha256", "source"]
    i = next(i for i, l in enumerate(lines) if l.startswith("debian12 "))
    assert lines[i].split()[2:] == ["4", sha(DOC)[:12], url]
    assert lines[i + 1].split()[:4] == ["1", "failed", "update(s):", url + ":"]
    assert "HTTP 503" in lines[i + 1]
    assert next(l for l in lines if l.startswith("rhel9 ")).split()[1] == "never"

    p = run_cli("feeds", "status", "--json", state=state, feeds="off")
    (row,) = json.loads(p.stdout)                 # kept, though not configured any more
    assert row["product"] == "debian12" and not row["configured"] and row["failures"] == 1

    p = run_cli("feeds", "update", "--product", "debian99", "--no-rejudge", state=state,
                feeds=feeds)
    assert p.returncode == 2 and "no feed configured for debian99" in p.stderr


def test_feeds_update_honours_the_max_bytes_setting(server, tmp_path, path):
    server.put(path, F.compress(DOC, "bz2"))
    p = run_cli("feeds", "update", "--product", "debian12", "--no-rejudge",
                state=tmp_path / "state", feeds=f"debian12={server.url(path)}",
                SCAPGATE_CVE_FEED_MAX_BYTES="1000")
    assert p.returncode == 1 and "larger than 1000 bytes" in p.stdout


# -- downloads cut short at the HTTP level (a raw TCP server: FeedServer answers whole) -----------

class RawServer:
    """Answers every connection on 127.0.0.1 with fixed bytes, then closes it."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/oval.xml.bz2"
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        break
                    buf += data
                conn.sendall(self.reply)
                conn.shutdown(socket.SHUT_RDWR)

    def close(self):
        self.sock.close()


def _good_then(store: FeedStore, server, path: str, reply: bytes):
    server.put(path, F.compress(DOC, "bz2"))
    before = store.update(PRODUCT, server.url(path)).status
    raw = RawServer(reply)
    return before, raw


def test_connection_closed_before_content_length_fails(server, store, path):
    body = F.compress(DOC, "bz2")
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:len(body) // 2]
    before, raw = _good_then(store, server, path, reply)
    before_index = kept(store)[1]
    try:
        res = store.update(PRODUCT, raw.url)
    finally:
        raw.close()
    assert res.outcome == "failed"
    assert res.detail == f"{raw.url}: truncated ({len(body) // 2} of {len(body)} bytes)"
    assert_still_kept(store, before, before_index, 1, "truncated")


def test_chunked_download_cut_short_fails(server, store, path):
    body = F.compress(DOC, "bz2")
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             + b"%x\r\n" % len(body) + body[:len(body) // 2])
    before, raw = _good_then(store, server, path, reply)
    try:
        res = store.update(PRODUCT, raw.url)
    finally:
        raw.close()
    assert res.outcome == "failed"
    assert store.status(PRODUCT).failures == 1 and store.status(PRODUCT).sha256 == before.sha256


def test_reply_that_is_not_http_fails(server, store, path):
    before, raw = _good_then(store, server, path, b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    try:
        res = store.update(PRODUCT, raw.url)
    finally:
        raw.close()
    assert res.outcome == "failed"
    assert store.status(PRODUCT).failures == 1 and store.status(PRODUCT).sha256 == before.sha256


def test_download_deadline_holds_against_a_trickling_server(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)

    def trickle():
        conn, _ = sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            for _ in range(6):                       # 3 s of one byte every 0.5 s
                time.sleep(0.5)
                try:
                    conn.sendall(b" ")
                except OSError:
                    return

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    store = FeedStore(str(tmp_path / "state"), timeout_s=1.0)
    t0 = time.monotonic()
    try:
        res = store.update(PRODUCT, f"http://127.0.0.1:{sock.getsockname()[1]}/feed.xml.bz2")
        took = time.monotonic() - t0
    finally:
        sock.close()
        t.join(5)
    assert res.outcome == "failed" and "longer than 1 s" in res.detail
    assert took < 2.0           # the server would have kept it 3 s
