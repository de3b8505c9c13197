"""scapgate with one candidate improvement patched in, to measure it before it is written.

The webhook's code is not edited: this module replaces one function at its own seam, then
builds the app with the real webhook.create_app(). It is served by the same gunicorn config
(`gunicorn -c python:webhook.gunicorn_conf 'benchmarks.variant_app:create_app()'`) and reads
the same store as the scapgate server under test, so every result is already there (L2 → L1).
SCAPGATE_BENCH_VARIANT is a comma list of:

  control      nothing patched (the same app as `scapgate serve`, to compare against)
  nolog        no decision log line (the upper bound of what logging costs)
  nometrics    no Prometheus counting per decision
  memo         the whole Decision reused for 1 s for an identical request (same namespace,
               operation, kind, user, annotations and containers): ReplicaSets create many
               identical pods; an upper bound for a decision cache keyed on policy-set and
               result versions

The fixes these variants measured before they were written (a compact log line, a ready Future
on a resolver hit, gc.freeze after start-up, orjson) are in the code now; the `before` server
of benchmarks/fastpath.py serves the code as it was, for the before/after figures.
"""
from __future__ import annotations

import os
import threading


def _memo():
    import json
    import time

    from cachetools import TTLCache
    from webhook import admission
    from webhook.workload import containers_of
    orig = admission.decide
    cache = TTLCache(maxsize=10_000, ttl=1.0)
    lock = threading.Lock()

    def decide(req, deps, budget):
        try:
            obj = req.get("object") or {}
            key = (req.get("namespace"), req.get("operation"), req.get("subResource"),
                   json.dumps(req.get("kind"), sort_keys=True),
                   json.dumps(req.get("userInfo"), sort_keys=True),
                   json.dumps((obj.get("metadata") or {}).get("annotations"), sort_keys=True),
                   tuple((c.path, c.image) for c in containers_of(req["kind"], obj)),
                   req.get("oldObject") is None)
        except Exception:
            return orig(req, deps, budget)
        with lock:
            hit = cache.get(key)
        if hit is not None:
            return hit
        out = orig(req, deps, budget)
        if out.verdict in ("pass", "fail"):        # never reuse pending or error
            with lock:
                cache[key] = out
        return out

    admission.decide = decide


def apply(variant: str) -> list[str]:
    from webhook import logs, metrics
    applied = []
    for name in [v.strip() for v in variant.split(",") if v.strip()]:
        if name == "control":
            pass
        elif name == "nolog":
            logs.log_decision = lambda rec: None
            logs.record = lambda req, decision, ms: {}
        elif name == "nometrics":
            metrics.observe = lambda decision, seconds: None
        elif name == "memo":
            _memo()
        else:
            raise ValueError(f"unknown variant {name!r}")
        applied.append(name)
    return applied


def create_app():
    import webhook
    apply(os.environ.get("SCAPGATE_BENCH_VARIANT", "control"))
    return webhook.create_app()
