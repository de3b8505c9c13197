"""The admission decision: an AdmissionReview request in, a response and a log record out.

Plain functions over plain data; the HTTP server, metrics and logging live elsewhere (app.py).
For each image the object runs: pick the policy, resolve the tag to the platform digest, look
up the scan result by ScanKey, submit a scan when there is none and wait at most the time left
in this request, then judge the result with the policy. Pending and error are states with the
policy's named actions, never accidents. response.py turns the judged images into the answer.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
from typing import Callable

from .. import policy as policy_mod
from ..scan import images as images_mod
from ..scan.content import ContentError
from ..scan.registry import RegistryError
from ..scan.resolver import wait as wait_resolution
from ..scan.results import ContentSet, ScanResult, cve_key
from ..store.base import FULL
from ..store.scans import Job
from . import response
from .breakglass import apply_break_glass
from .budget import Budget
from .memo import memo_key, reusable
from .model import Check, Decision, Deps
from .review import Request
from .workload import (Container, ObjectError, containers_of, images_changed, node_arches,
                       pod_spec_path)

POLL_S = 0.05            # polling for the rescan of a key that already has a result


# A pod with more distinct images than this is refused: each needs a registry call, and one
# object must not queue thousands of them ahead of every other admission in the process.
MAX_DISTINCT_IMAGES = 64


# -- entry point ------------------------------------------------------------------------------

def decide(req: Request, deps: Deps, budget: Budget) -> Decision:
    """Decide one AdmissionReview request."""
    skip = skip_reason(req)
    if skip:
        return _allow(skip)
    try:
        containers = _containers_to_check(req)
    except ObjectError as e:
        denied = response.status(f"cannot read the object: {e}")
        return Decision({"allowed": False, "status": denied}, "error", "invalid_object")
    if containers is None:
        return _allow("unchanged")
    if not containers:
        return _allow("no_containers")
    if len({c.image for c in containers}) > MAX_DISTINCT_IMAGES:
        denied = response.status(
            f"the object names more than {MAX_DISTINCT_IMAGES} distinct images; "
            "scapgate judges at most that many per object")
        return Decision({"allowed": False, "status": denied}, "error", "too_many_images")
    namespace = namespace_of(req)
    today = dt.datetime.fromtimestamp(deps.clock(), dt.timezone.utc).date()
    pset = deps.policies()
    key = memo_key(req, containers, namespace, today) if deps.memo_s > 0 else None
    if key is not None:
        hit = deps.memo.get(key, pset)
        if hit is not None:
            return dataclasses.replace(hit, memo=True)
    checks = plan(containers, namespace, deps, pset)
    if not any(c.policy for c in checks):
        return _allow("no_policy", checks)
    checks = _resolve(checks, deps, budget, node_arches(req["kind"], req.get("object")))
    _find_results(checks, deps, budget)
    for c in _undecided(checks):
        cves, age = _cves_for(c, deps)
        c.verdict = policy_mod.evaluate(c.result, c.policy, image=str(c.ref),
                                        namespace=namespace, today=today, cves=cves,
                                        feed_age_s=age)
    apply_break_glass(checks, req, deps)
    decision = _respond(checks, deps)
    if key is not None and reusable(decision):
        deps.memo.put(key, pset, decision, deps.memo_s)
    return decision


def _cves_for(c: Check, deps: Deps) -> tuple[ScanResult | None, float | None]:
    """The CVE evaluation that decides for this image under a policy with `cves`, and the age
    of its product's feed in force. The scan result carries the evaluation of the feed it was
    scanned with; after a feed update the workers store one per (digest, new feed) — until it
    lands, the digest's latest evaluation (or the scan's own) decides, never "pending"."""
    res = c.result
    if c.policy.cves is None or deps.feeds is None or res is None or res.state != "done":
        return None, None
    try:
        st = deps.feeds(res.product)
    except (OSError, ValueError):
        st = None
    if st is None:
        return None, None
    age = st.age_s(deps.clock())
    if res.feed.get("sha256") == st.sha256:
        return None, age
    scanner = c.key.scanner_version
    keys = [cve_key(c.digest, res.product, st.sha256, scanner),
            cve_key(c.digest, res.product, "latest", scanner)]
    try:
        found = _lookup_many(deps.service, keys)
    except Exception:           # the store is down: the scan's own CVEs still decide
        return None, age
    for hit in found:
        if hit is not None and hit.state == "done" and hit.feed.get("sha256"):
            if hit is found[1] and hit.feed.get("as_of", 0) <= res.feed.get("as_of", 0):
                break           # the scan's own evaluation is newer than the latest stored
            return hit, age
    return None, age


def _allow(reason: str, checks: list[Check] | None = None) -> Decision:
    return Decision({"allowed": True}, "skip", reason, checks or [])


def skip_reason(req: Request) -> str:
    """Requests that need no work: they neither create pods nor change the images pods run."""
    if req["operation"] not in ("CREATE", "UPDATE"):
        return "operation"
    sub = req.get("subResource") or ""
    if sub and not (sub == "ephemeralcontainers" and req["kind"].get("kind") == "Pod"):
        return "subresource"
    if pod_spec_path(req["kind"]) is None:
        return "not_workload"
    return ""


def _containers_to_check(req: Request) -> list[Container] | None:
    """The containers to judge; None when an UPDATE runs no image it did not run before
    (so deleting a workload, whose finalizer updates change no image, is never blocked).
    pods/ephemeralcontainers always checks the ephemeral containers: all it can add."""
    new = containers_of(req["kind"], req.get("object"))
    if req.get("subResource") == "ephemeralcontainers":
        return [c for c in new if c.list == "ephemeralContainers"]
    if req["operation"] == "UPDATE":
        try:
            old = containers_of(req["kind"], req.get("oldObject"))
        except ObjectError:
            old = []
        if not images_changed(new, old):
            return None
    return new


def namespace_of(req: Request) -> str:
    """The request's namespace, else the object's; anything but a string counts as absent."""
    ns = req.get("namespace")
    if isinstance(ns, str) and ns:
        return ns
    obj = req.get("object")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    ns = meta.get("namespace") if isinstance(meta, dict) else None
    return ns if isinstance(ns, str) and ns else "default"


def plan(containers: list[Container], namespace: str, deps: Deps,
          pset: policy_mod.PolicySet | None = None) -> list[Check]:
    """Group containers by image and pick each image's policy (None: not gated)."""
    by_image: dict[str, Check] = {}
    for c in containers:
        by_image.setdefault(c.image, Check(c.image, [])).containers.append(c)
    pset = pset if pset is not None else deps.policies()
    for check in by_image.values():
        try:
            check.ref = images_mod.parse(check.image)
        except images_mod.ReferenceError as e:
            check.policy = pset.select(namespace)
            if check.policy:
                check.verdict = policy_mod.on_state("error", check.policy, detail=str(e))
            continue
        check.policy = pset.select(namespace, str(check.ref))
    return list(by_image.values())


def _undecided(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.policy and c.verdict is None]


# -- stages -----------------------------------------------------------------------------------

def _resolve(checks: list[Check], deps: Deps, budget: Budget,
             arches: tuple[str, ...] = ()) -> list[Check]:
    """Tags → platform digests, all asked at once, each answer awaited within the budget.
    An image index is judged on every platform the nodes run (one check per platform whose
    manifest differs), or only on the architectures the pod is pinned to."""
    platforms = tuple(f"linux/{a}" for a in arches) or None
    futures = {id(c): deps.resolver.start(c.ref, platforms=platforms)
               for c in _undecided(checks)}
    out: list[Check] = []
    for c in checks:
        future = futures.get(id(c))
        if future is None:
            out.append(c)
            continue
        try:
            res = wait_resolution(future, c.ref, budget.left())
        except RegistryError as e:
            c.resolve = "error"
            c.verdict = policy_mod.on_state("error", c.policy, detail=str(e))
            out.append(c)
            continue
        c.digest, c.resolve = res.digest, "hit" if res.cached else "miss"
        digests = res.digests or (("", res.digest),)
        if len(digests) == 1:
            out.append(c)
            continue
        for platform, digest in digests:
            out.append(dataclasses.replace(c, digest=digest, platform=platform, notes=[]))
    return out


def _find_results(checks: list[Check], deps: Deps, budget: Budget) -> None:
    """Look up every result and submit every missing scan first (early scans for all the
    images), then wait for the missing ones within the budget."""
    contents: dict[int, ContentSet | ContentError] = {}     # one content check per policy
    todo: list[Check] = []
    for c in _undecided(checks):
        content = contents.get(id(c.policy))
        if content is None:
            try:
                content = c.policy.content()
            except ContentError as e:
                content = e
            contents[id(c.policy)] = content
        if isinstance(content, ContentError):
            c.verdict = policy_mod.on_state("error", c.policy, detail=str(content))
            continue
        c.content = content
        c.key = deps.key_for(c.digest, c.content)
        todo.append(c)
    if not todo:
        return
    try:
        found = _lookup_many(deps.service, [c.key for c in todo])
    except Exception:
        found = None            # each image's own lookup says what went wrong
    waiting: list[tuple[Check, float]] = []
    for i, c in enumerate(todo):
        after = _guard(c, lambda: _lookup(c, deps, found[i] if found else _ASK))
        if after is not None:
            waiting.append((c, after))
    for c, after in waiting:
        _guard(c, lambda: _wait(c, after, deps, budget))


_ASK = object()


def _lookup_many(service, keys: list) -> list:
    many = getattr(service, "lookup_many", None)
    return many(keys) if many else [service.lookup(k) for k in keys]


def _guard(c: Check, fn: Callable[[], float | None]) -> float | None:
    """The scan service is infrastructure: when it fails, this image is in the error state."""
    try:
        return fn()
    except Exception as e:
        c.verdict = policy_mod.on_state("error", c.policy,
                                        detail=f"scan service unavailable: {_cut(e)}")
        return None


def _lookup(c: Check, deps: Deps, res=_ASK) -> float | None:
    """Classify the stored result (looked up here unless given) and submit a scan when one
    is needed. Returns the scanned_at a result must beat to be waited for (-1: any), or None:
    nothing to wait for."""
    now = deps.clock()
    if res is _ASK:
        res = deps.service.lookup(c.key)
    if res is None:
        c.cache = "miss"
        return _submit(c, deps, after=-1.0)
    c.result = res
    if res.state == "error":
        if res.permanent or now - res.scanned_at < deps.error_retry_s:
            c.cache = "hit"
            return None
        c.cache = "retry"
        return _submit(c, deps, after=res.scanned_at)
    if now - res.scanned_at <= c.policy.max_scan_age_s:
        c.cache = "hit"
        return None
    c.cache = "stale"
    c.notes.append(f"scan of {c.image} is {(now - res.scanned_at) / 86400:.0f} days old; "
                   "rescan started")
    after = _submit(c, deps, after=res.scanned_at)
    return after if c.policy.on_stale == "pending" else None


def _submit(c: Check, deps: Deps, *, after: float) -> float | None:
    job = Job(c.key, image=c.pinned, content=c.content)
    state = (deps.service.submit(job) if after < 0
             else deps.service.resubmit(job, after=after))
    if state == FULL and c.cache != "stale":
        c.verdict = policy_mod.on_state(
            "error", c.policy, detail=f"scan queue is full; cannot scan {c.pinned} now")
        return None
    return after


def _wait(c: Check, after: float, deps: Deps, budget: Budget) -> None:
    """Wait for a result newer than `after` within the budget; else pending (or, for a
    retried error, the error that is already known)."""
    started = time.monotonic()
    res = deps.service.wait(c.key, budget.left()) if after < 0 else _poll(c, after, deps, budget)
    if res is not None:
        c.result = res
        deps.estimate.observe(res)
        return
    if c.cache == "retry":
        return
    c.result = None
    hint = _retry_hint(deps, time.monotonic() - started)
    c.verdict = policy_mod.on_state(
        "pending", c.policy, detail=f"scan of {c.pinned} in progress, retry in about {hint} s")


def _poll(c: Check, after: float, deps: Deps, budget: Budget) -> ScanResult | None:
    """A rescan of a key that has a result: read past this process's cache until newer."""
    while True:
        deps.service.forget(c.key)
        cur = deps.service.lookup(c.key)
        if cur is not None and cur.scanned_at > after:
            return cur
        if budget.left() <= 0:
            return None
        time.sleep(min(POLL_S, budget.left()))


def _retry_hint(deps: Deps, waited_s: float) -> int:
    """Seconds until a result is likely: one scan, more when the queue is longer than the
    workers."""
    try:
        depth = int(deps.service.depth())
    except Exception:
        depth = 0
    rounds = max(0, depth - deps.scan_workers) / max(1, deps.scan_workers)
    return max(1, math.ceil(deps.estimate.seconds * (1 + rounds) - waited_s))


# -- response ---------------------------------------------------------------------------------

def _respond(checks: list[Check], deps: Deps) -> Decision:
    judged = [c for c in checks if c.verdict]
    answer, worst, reason = response.build(judged, report_url=deps.report_url,
                                           policy_root=deps.policy_root)
    return Decision(answer, worst, reason, checks)


def _cut(e: Exception, limit: int = 300) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "…"
