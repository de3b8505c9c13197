"""Counters of the scan queue and workers, at the bottom of the house so the store and the
workers count without importing the HTTP side. serve/metrics.py exports them with the
admission metrics (the same PROMETHEUS_MULTIPROC_DIR under gunicorn).
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram


def _metric(cls, name: str, doc: str, labels: tuple[str, ...] = (), **kw):
    """Metrics are created unregistered: under gunicorn (multiprocess mode) their values are
    exported from PROMETHEUS_MULTIPROC_DIR by name whatever the registry; a single-process
    server calls register_metrics() once."""
    return cls(name, doc, labels, registry=None, **kw)


SCANS_STARTED_TOTAL = _metric(
    Counter, "scapgate_scans_started", "Scan attempts workers started (retries count again)")
SCANS_FINISHED_TOTAL = _metric(
    Counter, "scapgate_scans_finished", "Scans that produced rule results")
SCANS_FAILED_TOTAL = _metric(
    Counter, "scapgate_scans_failed", "Scan attempts that ended in an error", ("permanent",))
SCAN_DURATION = _metric(
    Histogram, "scapgate_scan_duration_seconds", "Duration of one scan attempt in a worker",
    buckets=(0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55, 90, 150, 300))
QUEUE_DEPTH = _metric(
    Gauge, "scapgate_queue_depth", "Scan jobs queued or running in the shared store",
    multiprocess_mode="livemostrecent")
CACHE_LOOKUPS = _metric(
    Counter, "scapgate_cache_lookups", "Result lookups by tier (l1, l2) and result (hit, miss)",
    ("tier", "result"))
FEED_AGE = _metric(
    Gauge, "scapgate_cve_feed_age_seconds", "Age of the CVE feed kept for a product",
    ("product",), multiprocess_mode="mostrecent")
FEED_LAST_SUCCESS = _metric(
    Gauge, "scapgate_cve_feed_last_success_timestamp_seconds",
    "When a product's CVE feed was last fetched or confirmed unchanged", ("product",),
    multiprocess_mode="mostrecent")
FEED_FAILURES = _metric(
    Gauge, "scapgate_cve_feed_failures", "Failed updates of a product's CVE feed since its "
    "last success", ("product",), multiprocess_mode="mostrecent")
REJUDGE_SECONDS = _metric(
    Histogram, "scapgate_cve_rejudge_seconds", "One pass re-judging the kept images of a "
    "product with its current CVE feed", ("product",),
    buckets=(1, 5, 15, 60, 180, 600, 1800, 3600))
METRICS = (SCANS_STARTED_TOTAL, SCANS_FINISHED_TOTAL, SCANS_FAILED_TOTAL, SCAN_DURATION,
           QUEUE_DEPTH, CACHE_LOOKUPS, FEED_AGE, FEED_LAST_SUCCESS, FEED_FAILURES,
           REJUDGE_SECONDS)
_registered: set[tuple[int, int]] = set()


def register_metrics(registry=None) -> None:
    """Register the scan metrics in a registry (default: prometheus_client's), once."""
    from prometheus_client import REGISTRY
    registry = registry or REGISTRY
    for m in METRICS:
        if (id(registry), id(m)) not in _registered:
            registry.register(m)
            _registered.add((id(registry), id(m)))


_children: dict = {}


def child(metric, *labels):
    """metric.labels(*labels), kept: labels() takes a lock and builds a key on every call.
    Bounded: label values here come from fixed sets (states, verdicts) and content rule ids."""
    key = (id(metric), labels)
    c = _children.get(key)
    if c is None:
        if len(_children) >= 10_000:
            _children.clear()
        c = _children[key] = metric.labels(*labels)
    return c
