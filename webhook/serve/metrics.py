"""Prometheus metrics of admission: decisions by verdict and reason, latency, cache, resolves.

gunicorn runs several worker processes, so `scapgate serve` sets PROMETHEUS_MULTIPROC_DIR
(under the state dir, emptied at start) before any worker imports prometheus_client; /metrics
then aggregates every worker's files. Without it (tests, `flask run`) the process registry is
served as is.
"""
from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from ..store.metrics import child

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

DECISIONS = Counter("scapgate_decisions", "Admission decisions by verdict, effect and reason",
                    ["verdict", "allowed", "reason"])
DECISION_RULES = Counter("scapgate_decision_rules", "Failing rules named in decisions",
                         ["rule", "severity"])
DECISION_SECONDS = Histogram("scapgate_decision_seconds", "Time to answer one admission review",
                             buckets=(.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 8,
                                      10, 15))
CACHE = Counter("scapgate_decision_results",
                "How admission found each image's result: hit, miss (scan submitted), stale "
                "(rescan submitted), retry (transient error retried)", ["result"])
RESOLVES = Counter("scapgate_resolves", "Tag to digest resolutions: hit, miss, error", ["result"])
POLICY_RELOADS = Counter("scapgate_policy_reloads",
                         "Policy directory changes: applied (ok) or refused (error)", ["result"])
BAD_REQUESTS = Counter("scapgate_bad_requests", "Requests answered with HTTP 400")
WORKLOADS = Gauge("scapgate_workloads", "Workloads in the inventory by namespace and verdict, "
                  "as last judged", ["namespace", "verdict"], multiprocess_mode="mostrecent")
INVENTORY_REJUDGE = Histogram("scapgate_inventory_rejudge_seconds",
                              "One pass judging the whole inventory again",
                              buckets=(.1, .5, 1, 2.5, 5, 10, 30, 60, 180))
INVENTORY_PENDING = Gauge("scapgate_inventory_pending", "Inventory images whose result for "
                          "the key in force is not stored yet (their scans are queued)",
                          multiprocess_mode="mostrecent")
_workload_labels: set = set()


def observe_rejudge(out) -> None:
    """The inventory metrics after a pass (admission.inventory.Rejudged)."""
    INVENTORY_REJUDGE.observe(out.seconds)
    INVENTORY_PENDING.set(out.pending)
    for labels in _workload_labels - set(out.workloads):
        WORKLOADS.labels(*labels).set(0)         # gone: zero, not the last value
    for labels, n in out.workloads.items():
        WORKLOADS.labels(*labels).set(n)
    _workload_labels.clear()
    _workload_labels.update(out.workloads)
# Scans started / finished / failed, their duration and the queue depth are counted where
# scans run and are queued: store/metrics.py (same PROMETHEUS_MULTIPROC_DIR).


def observe(decision, seconds: float) -> None:
    """Count one decision (an admission.Decision): one increment per distinct label set, not
    one per image (each increment of a multiprocess metric writes to its mmap under a lock)."""
    child(DECISIONS, decision.verdict, "true" if decision.response.get("allowed") else "false",
          decision.reason).inc()
    DECISION_SECONDS.observe(seconds)
    derived = getattr(decision, "derived", None)
    counts = derived.get("counts") if derived is not None else None
    if counts is None:                   # once per decision, shared by its memo copies
        counts = {}
        for c in decision.checks:
            if c.cache:
                counts[(CACHE, c.cache)] = counts.get((CACHE, c.cache), 0) + 1
            if c.resolve:
                counts[(RESOLVES, c.resolve)] = counts.get((RESOLVES, c.resolve), 0) + 1
            for r in (c.verdict.reasons if c.verdict else ()):
                k = (DECISION_RULES, r.id, r.severity)
                counts[k] = counts.get(k, 0) + 1
        if derived is not None:
            derived["counts"] = counts
    for (metric, *labels), n in counts.items():
        child(metric, *labels).inc(n)


def exposition() -> tuple[bytes, str]:
    """The /metrics body: every worker's values when running under gunicorn."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """gunicorn child_exit hook: drop a dead worker's live gauges."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess
        multiprocess.mark_process_dead(pid)

