"""scapgate with one candidate improvement patched in, to measure it before it is written.

The webhook's code is not edited: this module replaces one function at its own seam, then
builds the app with the real webhook.create_app(). It is served by the same gunicorn config
(`gunicorn -c python:webhook.gunicorn_conf 'benchmarks.variant_app:create_app()'`) and reads
the same store as the scapgate server under test, so every result is already there (L2 → L1).
SCAPGATE_BENCH_VARIANT is a comma list of:

  control      nothing patched (the same app as `scapgate serve`, to compare against)
  nolog        no decision log line (the upper bound of what logging costs)
  compactlog   the decision log line with the policy/content trail written once per policy
               instead of once per image (same facts, ~1/3 of the bytes for a 5-image pod)
  nometrics    no Prometheus counting per decision
  fastresolve  a resolver cache hit returns a ready Future kept with the cached answer
               instead of building a new Future (and its Condition) per image per request
  orjson       orjson (C) instead of the json module for the review, the decision log line
               and the response body (Flask's JSON provider)
  memo         the whole Decision reused for 1 s for an identical request (same namespace,
               operation, kind, user, annotations and containers): ReplicaSets create many
               identical pods; an upper bound for a decision cache keyed on policy-set and
               result versions
  gcfreeze     gc.freeze() once the app is built (gunicorn's post_worker_init would do it):
               start-up objects leave the collector's generations, so the full collections
               that allocation-heavy requests trigger stop walking the whole heap
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future


def _compact_record():
    from webhook import policy as policy_mod

    def record(req, decision, duration_ms):
        rec = _light_record(req, decision, duration_ms)
        trails: dict[str, dict] = {}
        images = []
        for c in decision.checks:
            if not c.policy:
                continue
            img = {"paths": [x.path for x in c.containers], "image": c.image,
                   "digest": c.digest, "cache": c.cache, "resolve": c.resolve,
                   "scanned_at": c.result.scanned_at if c.result else None,
                   "policy": c.policy.name}
            if c.verdict:
                t = policy_mod.trail(c.policy, c.content, c.digest, c.verdict)
                img.update(state=t["state"], allowed=t["allowed"])
                if t["denied_by"]:
                    img["denied_by"] = t["denied_by"]
                if t["waivers"]:
                    img["waivers"] = t["waivers"]
                if c.verdict.reasons:
                    img["reasons"] = [f"{r.severity} {r.id}" for r in c.verdict.reasons]
                if c.verdict.detail:
                    img["detail"] = c.verdict.detail
                for k in ("digest", "state", "allowed", "denied_by", "waivers"):
                    t.pop(k)
                if c.key:
                    t["scanner"] = c.key.scanner_version
                trails.setdefault(c.policy.name, t)
            if c.glass:
                img["break_glass"] = {"user": c.glass.user, "via": c.glass.via,
                                      "allowed": c.glass.allowed, "reason": c.glass.reason}
            images.append(img)
        rec["images"] = images
        rec["policies"] = trails
        return rec
    return record


def _light_record(req, decision, duration_ms):
    """logs.record without the per-image part (the compact variant adds its own)."""
    import datetime as dt
    obj = req.get("object") or {}
    meta = obj.get("metadata") or {}
    kind = req.get("kind") or {}
    checks = [c for c in decision.checks if c.policy]
    caches = sorted({c.cache for c in checks if c.cache})
    return {
        "event": "admission.decided",
        "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "uid": req.get("uid"),
        "namespace": req.get("namespace") or meta.get("namespace") or "",
        "kind": "/".join(p for p in (kind.get("group"), kind.get("kind")) if p),
        "name": req.get("name") or meta.get("name") or meta.get("generateName") or "",
        "operation": req.get("operation"), "subresource": req.get("subResource") or "",
        "dry_run": bool(req.get("dryRun")),
        "user": (req.get("userInfo") or {}).get("username", ""),
        "allowed": bool(decision.response.get("allowed")), "verdict": decision.verdict,
        "reason": decision.reason,
        "reasons": sorted({r.id for c in checks if c.verdict for r in c.verdict.reasons}),
        "cache": caches[0] if len(caches) == 1 else ("mixed" if caches else ""),
        "duration_ms": round(duration_ms, 2)}


def _fast_resolve():
    from webhook import resolver as res_mod
    orig_start = res_mod.Resolver.start
    lock = threading.Lock()

    def start(self, ref, docker_config=None):
        key = (str(ref), self.platform, res_mod._fingerprint(docker_config))
        cache = self._pinned if ref.digest else self._tags
        with self._lock:
            hit = cache.get(key)
        if hit is not None:
            ready = getattr(self, "_bench_ready", None)
            if ready is None:
                with lock:
                    ready = self.__dict__.setdefault("_bench_ready", {})
            fut = ready.get(key)
            if fut is None or fut.result().digest != hit[0]:
                fut = Future()
                fut.set_result(res_mod.Resolution(hit[0], hit[1], cached=True))
                ready[key] = fut
            return fut
        return orig_start(self, ref, docker_config)

    res_mod.Resolver.start = start


def _orjson(app=None):
    import types

    import orjson
    from webhook import logs, review

    def dumps(obj, *, separators=None, default=None, **_):
        return orjson.dumps(obj, default=default).decode()

    review.json = types.SimpleNamespace(loads=orjson.loads, dumps=dumps)
    logs.json = types.SimpleNamespace(loads=orjson.loads, dumps=dumps)


def _orjson_provider(app):
    import orjson
    from flask.json.provider import DefaultJSONProvider

    class Provider(DefaultJSONProvider):
        def dumps(self, obj, **kw):
            return orjson.dumps(obj, default=self.default).decode()

        def loads(self, s, **kw):
            return orjson.loads(s)

    app.json = Provider(app)


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
        elif name == "compactlog":
            logs.record = _compact_record()
        elif name == "nometrics":
            metrics.observe = lambda decision, seconds: None
        elif name == "fastresolve":
            _fast_resolve()
        elif name == "gcfreeze":
            pass                      # applied after the app is built (create_app)
        elif name == "orjson":
            _orjson()                 # and the app's JSON provider (create_app)
        elif name == "memo":
            _memo()
        else:
            raise ValueError(f"unknown variant {name!r}")
        applied.append(name)
    return applied


def create_app():
    import gc
    import webhook
    applied = apply(os.environ.get("SCAPGATE_BENCH_VARIANT", "control"))
    app = webhook.create_app()
    if "orjson" in applied:
        _orjson_provider(app)
    if "gcfreeze" in applied:
        gc.collect()
        gc.freeze()
    return app
