"""The feed in force, shared between replicas: workers publish each kept feed's status in the
store (SQLite here; the Redis store passes the same store tests), admission processes read it
through a FeedBoard, re-read at most every ttl_s."""
from __future__ import annotations

from tests.builders import feeds as F
from webhook.scan.feeds import FeedStore
from webhook.store.backends import open_store
from webhook.store.cves import FeedBoard, publish


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_replica_without_feeds_reads_the_published_one_and_sees_updates(tmp_path):
    worker = FeedStore(str(tmp_path / "worker"))
    feed = tmp_path / "f.xml"
    feed.write_bytes(F.debian_feed("bookworm", "12", [
        F.Advisory("CVE-2026-7001", (("bash", "5.2.15-2+deb12u1"),))]))
    first = worker.update("debian12", str(feed)).status
    store = open_store("", str(tmp_path / "shared"))
    clock = Clock()
    board = FeedBoard(store, FeedStore(str(tmp_path / "webhook")), ttl_s=5.0, clock=clock)
    assert board.current_for("debian12") is None          # nothing published yet
    assert publish(store, worker) == 1
    assert board.current_for("debian12") is None          # remembered for ttl_s
    clock.t = 6.0
    assert board.current_for("debian12").sha256 == first.sha256
    feed.write_bytes(F.debian_feed("bookworm", "12", [
        F.Advisory("CVE-2026-7002", (("bash", "5.2.15-2+deb12u2"),))]))
    second = worker.update("debian12", str(feed)).status
    publish(store, worker)
    clock.t = 12.0
    assert board.current_for("debian12").sha256 == second.sha256 != first.sha256
    assert board.current_for("ubuntu2204") is None


def test_the_local_feed_store_answers_when_nothing_is_published(tmp_path):
    local = FeedStore(str(tmp_path / "state"))
    feed = tmp_path / "f.xml"
    feed.write_bytes(F.debian_feed("bookworm", "12", [
        F.Advisory("CVE-2026-7003", (("bash", "5.2.15-2+deb12u1"),))]))
    st = local.update("any", str(feed)).status
    board = FeedBoard(open_store("", str(tmp_path / "state")), local)
    assert board.current_for("debian12").sha256 == st.sha256   # a feed for any product
