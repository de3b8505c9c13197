"""Feeds kept fresh, and every known image judged again when one changes.

A FeedKeeper thread runs in each scan worker process. It asks for each product's feed every
`cve_refresh_s` (conditionally: a 304 costs nothing; the feed lock makes one process fetch
while the others skip), and every `cve_rejudge_poll_s` it looks for kept package databases
(scan/packages.py) that the product's current feed has not judged yet, evaluates them one at
a time, and stores each CVE result twice: under the key of (digest, feed) and as the digest's
"latest" CVE result. No registry access, no unpack.

Until an image's evaluation with the new feed is stored, admission keeps deciding with the
previous one (the "latest" key), so a feed update never turns an admission pending. One
process per product re-judges at a time (a non-blocking lock), in one thread, so scans of new
images — a second thread of the same worker, and the other workers — are never starved. The
work is "catch up", not "react": a worker killed mid-way leaves nothing lost; the next poll
goes on from what is stored.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import sys
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field

from ..scan.feeds import ANY, FeedStatus, FeedStore, age_text, sources
from ..scan.results import ScanResult, cve_key
from .base import Store, StoreUnavailable
from .metrics import FEED_AGE, FEED_FAILURES, FEED_LAST_SUCCESS, REJUDGE_SECONDS, child

log = logging.getLogger("scapgate.cves")


@dataclass
class RejudgeReport:
    product: str
    sha256: str = ""
    judged: int = 0
    already: int = 0
    failed: int = 0
    seconds: float = 0.0
    per_image_s: list[float] = field(default_factory=list)
    skipped: str = ""          # why nothing was done (another process holds the lock, …)


def store_cve_result(store: Store, result: ScanResult, scanner: str) -> None:
    """A CVE evaluation under its own key and as the digest's latest one."""
    body = result.to_json()
    product = result.feed.get("product") or result.product
    store.put(result.key.id(), body, scanned_at=result.scanned_at)
    latest = cve_key(result.key.digest, product, "latest", scanner)
    store.put(latest.id(), body, scanned_at=result.scanned_at)


def rejudge(product: str, pipeline, store: Store, *, limit: int | None = None,
            stop: threading.Event | None = None, clock=time.time) -> RejudgeReport:
    """Judge every kept image of a product that the current feed has not judged yet."""
    report = RejudgeReport(product)
    feeds: FeedStore = pipeline.feeds
    st = feeds.current(product, recheck_s=0)
    if st is None:
        report.skipped = "no feed"
        return report
    report.sha256 = st.sha256
    scanner = pipeline.scanner_version()
    lock_path = os.path.join(feeds.dir, product, ".rejudge.lock")
    t0 = time.monotonic()
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report.skipped = "another process is re-judging"
            return report
        for snap in pipeline.packages.known():
            if snap.product != product:
                continue
            if stop is not None and stop.is_set():
                break
            if limit is not None and report.judged >= limit:
                break
            key = cve_key(snap.digest, product, st.sha256, scanner)
            if store.get(key.id()) is not None:
                report.already += 1
                continue
            t1 = time.monotonic()
            work = tempfile.mkdtemp(prefix="scapgate-cves-", dir=pipeline.settings.scratch_dir)
            try:
                cves, feed = pipeline.cves_from_snapshot(snap.digest, st, work, product)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            result = ScanResult(key=key, image=snap.image, state="done", cves=cves, feed=feed,
                                product=product, scanned_at=clock(),
                                timings={"cves": round(time.monotonic() - t1, 3)})
            if feed.get("error"):
                report.failed += 1
            store_cve_result(store, result, scanner)
            report.judged += 1
            report.per_image_s.append(time.monotonic() - t1)
    report.seconds = time.monotonic() - t0
    if report.judged:
        child(REJUDGE_SECONDS, product).observe(report.seconds)
        log.info("cves.rejudged product=%s feed=%s judged=%d already=%d failed=%d "
                 "seconds=%.1f", product, st.sha256[:12], report.judged, report.already,
                 report.failed, report.seconds)
    return report


STATUS_PREFIX = "feed-status:"


def publish(store: Store, feeds: FeedStore) -> int:
    """Put every kept feed's status in the shared store, where admission processes of every
    replica read which feed is in force (a webhook pod keeps no feeds of its own)."""
    n = 0
    for product in feeds.products():
        st = feeds.status(product)
        if st.sha256:
            store.put(STATUS_PREFIX + product, json.dumps(dataclasses.asdict(st)),
                      scanned_at=st.checked_at)
            n += 1
    return n


class FeedBoard:
    """product → the feed in force as the workers last published it, re-read from the shared
    store at most every ttl_s (asked for every image of every admission); the local feed
    store answers when the shared one has nothing (a feed updated by hand, not yet published).
    """

    def __init__(self, store: Store, local: FeedStore | None = None, ttl_s: float = 5.0,
                 clock=time.monotonic):
        self.store, self.local, self.ttl_s, self.clock = store, local, ttl_s, clock
        self._cache: dict[str, tuple[float, FeedStatus | None]] = {}
        self._lock = threading.Lock()

    def _read(self, product: str) -> FeedStatus | None:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(product)
        if hit is not None and now < hit[0]:
            return hit[1]
        st = None
        try:
            body = self.store.get(STATUS_PREFIX + product)
            if body:
                d = json.loads(body)
                st = FeedStatus(**{k: v for k, v in d.items()
                                   if k in FeedStatus.__dataclass_fields__})
        except (StoreUnavailable, ValueError, TypeError):
            st = None
        if st is None and self.local is not None:
            st = self.local.current(product)
        with self._lock:
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[product] = (now + self.ttl_s, st)
        return st

    def current_for(self, product: str) -> FeedStatus | None:
        if not product:
            return None
        return self._read(product) or self._read(ANY)


def export_feed_metrics(feeds: FeedStore, now: float | None = None) -> None:
    now = now or time.time()
    for product in feeds.products():
        st = feeds.status(product)
        if st.sha256:
            child(FEED_AGE, product).set(now - st.as_of)
            child(FEED_LAST_SUCCESS, product).set(st.checked_at)
        child(FEED_FAILURES, product).set(st.failures)


class FeedKeeper:
    """The thread a worker process runs beside its scans (see the module docstring)."""

    def __init__(self, settings, pipeline, store: Store):
        self.settings = settings
        self.pipeline = pipeline
        self.store = store
        self.sources = sources(settings.cve_feeds)

    def tick(self, stop: threading.Event | None = None) -> list:
        """One round: refresh what is due, then re-judge what the current feeds have not."""
        out = []
        for product, source in sorted(self.sources.items()):
            res = self.pipeline.feeds.update(product, source,
                                             min_interval_s=self.settings.cve_refresh_s)
            if res.outcome in ("updated", "failed"):
                log.log(logging.INFO if res.outcome == "updated" else logging.WARNING,
                        "feed.%s product=%s %s", res.outcome, product, res.detail)
            out.append(res)
        for product in self.pipeline.feeds.products():
            try:
                rejudge(product, self.pipeline, self.store, stop=stop)
            except StoreUnavailable as e:
                log.warning("cves.rejudge_failed product=%s: %s", product, e)
        try:
            publish(self.store, self.pipeline.feeds)
        except StoreUnavailable as e:
            log.warning("feeds.publish_failed: %s", e)
        export_feed_metrics(self.pipeline.feeds)
        return out

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick(stop)
            except Exception:
                log.exception("feeds.loop_error")
            stop.wait(self.settings.cve_rejudge_poll_s)

    def start(self, stop: threading.Event) -> threading.Thread:
        t = threading.Thread(target=self.run, args=(stop,), name="feed-keeper", daemon=True)
        t.start()
        return t


# -- command line -----------------------------------------------------------------------------

def register(subparsers) -> None:
    f = subparsers.add_parser("feeds", help="CVE feeds: status, update, re-judge")
    sub = f.add_subparsers(dest="feeds_cmd", required=True)
    s = sub.add_parser("status", help="each product's kept feed: source, age, definitions")
    s.add_argument("--json", action="store_true")
    s.add_argument("--state-dir", default=None)
    s.set_defaults(fn=cmd_status)
    u = sub.add_parser("update", help="fetch the feeds now (conditionally), then re-judge")
    u.add_argument("--product", action="append", default=[],
                   help="only this product (repeatable)")
    u.add_argument("--force", action="store_true", help="fetch even when unchanged")
    u.add_argument("--no-rejudge", action="store_true",
                   help="leave re-judging to the workers")
    u.add_argument("--state-dir", default=None)
    u.add_argument("--store", default=None)
    u.set_defaults(fn=cmd_update)


def _settings(args):
    from ..config import Settings
    return Settings.from_env(state_dir=args.state_dir, store=getattr(args, "store", None))


def cmd_status(args) -> int:
    import json
    settings = _settings(args)
    feeds = FeedStore(settings.state_dir)
    configured = sources(settings.cve_feeds)
    rows = []
    now = time.time()
    for product in sorted(set(configured) | set(feeds.products())):
        st = feeds.status(product)
        age = st.age_s(now)
        rows.append({"product": product, "source": configured.get(product, st.source),
                     "sha256": st.sha256, "definitions": st.definitions, "bytes": st.bytes,
                     "age_s": round(age, 1) if age is not None else None,
                     "fetched_at": st.fetched_at, "checked_at": st.checked_at,
                     "failures": st.failures, "last_error": st.last_error,
                     "configured": product in configured})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'product':<12} {'age':>8} {'definitions':>11} {'sha256':<12}  source")
    for r in rows:
        age = "never" if r["age_s"] is None else age_text(r["age_s"], 1)
        print(f"{r['product']:<12} {age:>8} {r['definitions']:>11} {r['sha256'][:12]:<12}  "
              f"{r['source']}{'' if r['configured'] else ' (not configured any more)'}")
        if r["failures"]:
            print(f"{'':<12} {r['failures']} failed update(s): {r['last_error']}")
    return 0


def cmd_update(args) -> int:
    from ..scan import engine
    from .backends import open_store
    settings = _settings(args)
    configured = sources(settings.cve_feeds)
    wanted = args.product or sorted(configured)
    unknown = [p for p in wanted if p not in configured]
    if unknown:
        print(f"scapgate: no feed configured for {', '.join(unknown)} "
              f"(SCAPGATE_CVE_FEEDS; known: {', '.join(sorted(configured))})", file=sys.stderr)
        return 2
    pipeline = engine.build_pipeline(settings)
    failed = 0
    for product in wanted:
        res = pipeline.feeds.update(product, configured[product], force=args.force)
        print(f"{product:<12} {res.outcome:<9} {res.seconds:6.1f} s  {res.detail}")
        failed += res.outcome == "failed"
        if args.no_rejudge or res.outcome == "failed":
            continue
        store = open_store(settings.store, settings.state_dir)
        try:
            publish(store, pipeline.feeds)
            rep = rejudge(product, pipeline, store)
        finally:
            store.close()
        if rep.judged or rep.already:
            print(f"{'':<12} re-judged {rep.judged} image(s) in {rep.seconds:.1f} s "
                  f"({rep.already} already judged with this feed, {rep.failed} failed)")
    return 1 if failed else 0
