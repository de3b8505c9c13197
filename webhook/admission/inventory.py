"""What is running: the inventory entry an admitted object leaves, and its removal on DELETE.

An entry is written once the answer is on its way (serve/ calls `record` from the response's
close hook): it can neither change nor delay the answer, and a store outage only costs the
entry (the next admission or `scapgate inventory import` brings it back). Only objects that
will exist are recorded: allowed, not a dry run. An UPDATE that changes no image leaves the
entry as it is; a DELETE removes it whatever else the request holds (a missing oldObject
included: the request names the object).

An entry's key is namespace/Kind/name. A Pod created by a controller names its owner (the
controller ownerReference: a ReplicaSet, a Job, a StatefulSet, …), so listings count a
Deployment's 50 pods as replicas of one workload, not 50 workloads.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

import orjson

from .model import Decision
from .review import Request

log = logging.getLogger("scapgate.inventory")
STATE_ORDER = {"fail": 5, "error": 4, "unsupported": 3, "stale-feed": 2, "pending": 1,
               "pass": 0}
REASONS_KEPT = 50              # per image: what a listing or a report shows
ENTRY_LIMIT = 256 << 10        # bytes of one entry (an object with thousands of containers)


def key_of(namespace: str, kind: str, name: str) -> str:
    return f"{namespace}/{kind}/{name}"


def owner_of(obj: dict, namespace: str) -> str:
    """The key of the controller that owns the object ('' for a top-level workload)."""
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    for ref in refs if isinstance(refs, list) else []:
        if isinstance(ref, dict) and ref.get("controller") and ref.get("kind") and \
                ref.get("name"):
            return key_of(namespace, str(ref["kind"]), str(ref["name"]))
    return ""


def entry(req: Request, decision: Decision, now: float) -> tuple[str, str, str, str] | None:
    """(key, namespace, owner, body) for an admitted object, or None when nothing is to be
    recorded (denied, dry run, not a gated object, no image changed, no policy applies)."""
    found = _entry(req, decision, now)
    return found[:4] if found is not None else None


def _entry(req: Request, decision: Decision, now: float):
    """entry() and the digest of the body without its times (what `Recent` compares)."""
    if req.get("dryRun") or req.get("operation") not in ("CREATE", "UPDATE"):
        return None
    if not decision.response.get("allowed") or not decision.checks:
        return None
    obj = req.get("object") or {}
    meta = obj.get("metadata") or {}
    namespace = req.get("namespace") or meta.get("namespace") or ""
    kind = (req.get("kind") or {}).get("kind", "")
    name = meta.get("name") or req.get("name") or ""
    if not (namespace and kind and name):
        return None
    owner = owner_of(obj, namespace)
    images_json, worst, policies = _images_part(decision)
    head = orjson.dumps({
        "namespace": namespace, "kind": kind, "name": name, "uid": meta.get("uid") or "",
        "owner": owner,
        "owners": [{k: ref.get(k) for k in ("kind", "name", "uid", "controller")}
                   for ref in (meta.get("ownerReferences") or []) if isinstance(ref, dict)],
        "verdict": worst, "policies": policies})
    digest = hashlib.sha256(head + images_json).hexdigest()
    times = orjson.dumps({"admitted_at": now, "judged_at": now,
                          "operation": req.get("operation")})
    body = head[:-1] + b',"images":' + images_json + b"," + times[1:]
    return key_of(namespace, kind, name), namespace, owner, body.decode(), digest


def _images_part(decision: Decision) -> tuple[bytes, str, list[str]]:
    """The images of an entry as JSON, the worst state, the policies — computed once per
    decision and shared by its memo copies (decision.derived): the pods of one ReplicaSet, a
    controller's retries. Bounded: an object with thousands of containers keeps its verdict
    and as many images as fit ENTRY_LIMIT (marked truncated)."""
    hit = decision.derived.get("inventory")
    if hit is not None:
        return hit
    images, worst, policies = [], "pass", set()
    for c in decision.checks:
        v = c.verdict
        state = v.state if v is not None else "pass"
        if STATE_ORDER.get(state, 0) > STATE_ORDER.get(worst, 0):
            worst = state
        r = c.result
        if c.policy is not None:
            policies.add(c.policy.name)
        reasons = [{"id": x.id, "kind": x.kind, "severity": x.severity, "title": x.title}
                   for x in (v.reasons if v else [])[:REASONS_KEPT]]
        for ct in c.containers:
            images.append({
                "path": ct.path, "image": c.image, "digest": c.digest, "state": state,
                "platform": c.platform, "policy": c.policy.name if c.policy else "",
                "reasons": reasons, "detail": v.detail if v else "",
                "product": r.product if r is not None else "",
                "profile": r.profile if r is not None else "",
                "content": r.tools.get("content", "") if r is not None else "",
                "content_sha256": r.tools.get("content_sha256", "") if r is not None else "",
                "feed_sha256": (r.feed or {}).get("sha256", "") if r is not None else "",
            })
    text = orjson.dumps(images)
    budget = ENTRY_LIMIT - (8 << 10)       # room for the object's own fields
    if len(text) > budget:                 # thousands of containers: keep the verdict
        cut = [{**img, "reasons": img["reasons"][:3], "truncated": True} for img in images]
        while len(cut) > 1 and len(text) > budget:
            cut = cut[:max(1, len(cut) * budget // max(1, len(text)) - 1)]
            text = orjson.dumps(cut)
    out = (text, worst, sorted(policies))
    decision.derived["inventory"] = out
    return out


def deleted_key(req: Request) -> str | None:
    """The key a DELETE removes: from the request itself (name, namespace, kind), so a DELETE
    without an oldObject removes its entry too."""
    if req.get("operation") != "DELETE" or req.get("dryRun"):
        return None
    old = req.get("oldObject") or {}
    meta = old.get("metadata") or {} if isinstance(old, dict) else {}
    namespace = req.get("namespace") or meta.get("namespace") or ""
    name = req.get("name") or meta.get("name") or ""
    kind = (req.get("kind") or {}).get("kind", "")
    if not (namespace and name and kind):
        return None
    return key_of(namespace, kind, name)


class Recent:
    """What this process wrote lately: key → digest of the entry without its times. The same
    object reviewed again with the same verdicts (a controller retrying, the fast path's
    repeated reviews) is not written again for ttl_s — a store write per review would cost
    more than the review. Bounded; thread-safe enough (a lost race writes once more)."""

    def __init__(self, size: int = 50_000, ttl_s: float = 300.0):
        from cachetools import TTLCache
        self._seen: TTLCache = TTLCache(maxsize=size, ttl=ttl_s)

    def same(self, key: str, digest: str) -> bool:
        return self._seen.get(key) == digest

    def remember(self, key: str, digest: str | None) -> None:
        if digest is None:
            self._seen.pop(key, None)
        else:
            self._seen[key] = digest


_RECENT = Recent()


def record(store, req: Request, decision: Decision, now: float, recent: Recent | None = None) -> str:
    """Write or remove the entry of one reviewed object; returns what was done (for logs and
    tests): recorded, unchanged, removed, absent, skipped, or failed. Never raises."""
    recent = recent or _RECENT
    try:
        gone = deleted_key(req)
        if gone is not None:
            recent.remember(gone, None)
            return "removed" if store.inv_delete(gone) else "absent"
        found = _entry(req, decision, now)
        if found is None:
            return "skipped"
        key, namespace, owner, body, digest = found
        if recent.same(key, digest):
            return "unchanged"
        store.inv_put(key, namespace, owner, body)
        recent.remember(key, digest)
        return "recorded"
    except Exception as e:          # the answer is already written; the entry is lost only
        log.warning("inventory.record_failed uid=%s: %s", req.get("uid"), e)
        return "failed"


# -- judging what runs again ------------------------------------------------------------------

@dataclass
class Rejudged:
    """What one pass over the inventory did."""

    trigger: str
    entries: int = 0
    images: int = 0
    changed: list[tuple[str, str, str]] = field(default_factory=list)  # (key, old, new)
    pending: int = 0                 # images whose result for today's key is not stored yet
    workloads: dict = field(default_factory=dict)   # (namespace, verdict) → workloads
    seconds: float = 0.0
    skipped: str = ""                # why nothing was done (another process does it)


def rejudge(store, deps, *, trigger: str, now: float, once_key: str = "",
            emit=None) -> Rejudged:
    """Judge every inventory entry again with the policy set in force and the stored results
    — no scan waits, nothing is fetched. An image whose key changed (new content) and has no
    result yet is "pending" and its scan is queued; a result past the policy's maxScanAge is
    rescanned through the queue (and decides meanwhile unless actions.stale is pending); a verdict that changes is written with one
    `inventory.changed` line (emit(name, fields): serve/ writes it as a JSON log line).
    once_key (e.g. the policy set's digest): across processes and replicas only the first
    caller with that key does the pass (a shared counter)."""
    out = Rejudged(trigger)
    t0 = time.monotonic()
    if once_key and store.incr(f"inventory-rejudge:{once_key}") != 1:
        out.skipped = "done by another process"
        return out
    pset = deps.policies()
    today = dt.datetime.fromtimestamp(now, dt.timezone.utc).date()
    listed = store.inv_list()
    keys = {k for k, _ in listed}
    for key, body in listed:
        try:
            e = json.loads(body)
        except ValueError:
            continue
        out.entries += 1
        worst, reasons = "pass", []
        for img in e.get("images", []):
            out.images += 1
            state, why = _judge_image(img, e.get("namespace", ""), pset, deps, today, now)
            if state == "pending":
                out.pending += 1
            img["state"], img["reasons"] = state, why[:REASONS_KEPT]
            reasons += [r["id"] for r in why]
            if STATE_ORDER.get(state, 0) > STATE_ORDER.get(worst, 0):
                worst = state
        old = e.get("verdict", "")
        e["judged_at"] = now
        if worst != old:
            out.changed.append((key, old, worst))
            fields = {"workload": key, "old": old, "new": worst,
                      "reasons": sorted(set(reasons))[:20], "trigger": trigger}
            if emit is not None:
                emit("inventory.changed", fields)
            else:
                log.info("inventory.changed %s", json.dumps(fields, separators=(",", ":")))
        e["verdict"] = worst
        if e.get("owner", "") not in keys:          # a workload, not one of its pods
            w = (e.get("namespace", ""), worst)
            out.workloads[w] = out.workloads.get(w, 0) + 1
        store.inv_put(key, e.get("namespace", ""), e.get("owner", ""),
                      json.dumps(e, separators=(",", ":")))
    out.seconds = time.monotonic() - t0
    return out


def _judge_image(img: dict, namespace: str, pset, deps, today, now) -> tuple[str, list]:
    from .. import policy as policy_mod
    from ..scan import images as images_mod
    from ..scan.content import ContentError
    from ..store.scans import Job
    from .decide import _cves_for
    from .model import Check
    try:
        ref = images_mod.parse(img.get("image", ""))
    except images_mod.ReferenceError:
        return "error", []
    policy = pset.select(namespace, str(ref))
    digest = img.get("digest", "")
    if policy is None or not digest:
        return "pass", []
    try:
        content = policy.content()
    except ContentError as e:
        return "error", [{"id": "content", "kind": "error", "severity": "high",
                          "title": str(e)[:200]}]
    key = deps.key_for(digest, content)
    result = deps.service.lookup(key)
    job = Job(key, image=str(ref.pinned(digest)), content=content)
    if result is None:
        deps.service.submit(job)
        return "pending", []
    if result.state == "done" and now - result.scanned_at > policy.max_scan_age_s:
        deps.service.resubmit(job, after=result.scanned_at)     # past maxScanAge: rescan
        if policy.on_stale == "pending":
            return "pending", []
    check = Check(image=img.get("image", ""), containers=[], ref=ref, policy=policy,
                  digest=digest, content=content, key=key, result=result)
    cves, age = _cves_for(check, deps)
    v = policy_mod.evaluate(result, policy, image=str(ref), namespace=namespace, today=today,
                            cves=cves, feed_age_s=age)
    return v.state, [{"id": r.id, "kind": r.kind, "severity": r.severity, "title": r.title}
                     for r in v.reasons]
