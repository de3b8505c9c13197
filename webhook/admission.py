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
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import orjson

from . import images as images_mod
from . import policy as policy_mod
from . import response
from .content import ContentError
from .registry import RegistryError
from .resolver import Resolver, wait as wait_resolution
from .results import ContentSpec, ScanKey, ScanResult
from .review import Request, Response
from .scans import FULL, Job
from .workload import Container, ObjectError, containers_of, images_changed, pod_spec_path

POLL_S = 0.05            # polling for the rescan of a key that already has a result


class Estimate:
    """How long one scan takes: a moving average of the scans this process waited for.
    It becomes the "retry in about N s" of a pending denial."""

    def __init__(self, seconds: float = 6.0, alpha: float = 0.3):
        self.seconds, self.alpha = seconds, alpha

    def observe(self, result: ScanResult) -> None:
        took = sum(result.timings.values()) if result.timings else 0.0
        if took > 0:
            self.seconds += self.alpha * (took - self.seconds)


@dataclass
class Deps:
    """Everything a decision needs, injected so tests can swap any of it at our own seam."""

    policies: Callable[[], policy_mod.PolicySet]
    service: object                     # scans.ScanService
    resolver: Resolver
    key_for: Callable[..., ScanKey]     # pipeline.key(digest, content)
    clock: Callable[[], float] = time.time   # wall clock: result ages, waiver expiry
    estimate: Estimate = field(default_factory=Estimate)
    error_retry_s: float = 30.0         # a transient scan error is retried after this
    scan_workers: int = 2
    report_url: str = ""
    policy_root: str = ""               # Settings.policy, to name policy files in messages
    # Pods these controllers create from an owner's template inherit the owner's break-glass:
    # the owner (Deployment, Job, …) was admitted here under its creator's identity.
    break_glass_controllers: frozenset = frozenset()
    # A pass/fail decision is reused this long for a request with the same inputs (0: never).
    memo_s: float = 0.0
    memo: "Memo" = field(default_factory=lambda: Memo())


@dataclass
class Check:
    """One distinct image string of the object, at one or more field paths."""

    image: str
    containers: list[Container]
    ref: images_mod.ImageRef | None = None
    policy: policy_mod.Policy | None = None
    digest: str = ""
    content: ContentSpec | None = None
    key: ScanKey | None = None
    result: ScanResult | None = None
    resolve: str = ""                # hit | miss | error (tag → digest)
    cache: str = ""                  # hit | miss | stale | retry (how the result was found)
    verdict: policy_mod.Verdict | None = None
    glass: policy_mod.BreakGlass | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def paths(self) -> str:
        return ", ".join(c.path for c in self.containers)

    @property
    def pinned(self) -> str:
        """IMAGE@DIGEST of what was (or is being) scanned."""
        return str(self.ref.pinned(self.digest)) if self.ref and self.digest else self.image


@dataclass
class Decision:
    """The response plus what logs and metrics need: overall verdict and a low-cardinality
    reason (clean, rules, pending, error, break_glass, or why no work was needed)."""

    response: Response
    verdict: str
    reason: str
    checks: list[Check] = field(default_factory=list)
    memo: bool = False               # reused from an identical request (Memo)
    # What logs and metrics derive from the checks alone, computed once and shared by the
    # copies the Memo hands out (dataclasses.replace keeps the same dict).
    derived: dict = field(default_factory=dict, repr=False, compare=False)


class Memo:
    """Decisions reused for requests with the same inputs, for Deps.memo_s (1 s by default).

    A ReplicaSet scaling to 50 replicas sends 50 reviews that differ only in pod names and
    uids; they get one decision. The key is every input decide() reads — operation,
    subresource, kind, namespace, each container's path and image, the user and groups, the
    annotations (break-glass), the owner references (inherited break-glass) and today's date
    (waiver expiry) — plus the policy set in force (a reload is a new set). Only pass and fail
    decisions whose every result was a cache hit are kept: pending, error, stale and
    break-glass decisions are made afresh each time. Within memo_s a moved tag or a landed
    rescan is not seen — the tag resolver itself keeps answers 30 s."""

    SIZE = 4096

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._d: dict = {}
        self._lock = threading.Lock()

    def get(self, key, pset) -> Decision | None:
        with self._lock:
            hit = self._d.get(key)
        if hit is None:
            return None
        expires, kept_pset, decision = hit
        if kept_pset is not pset or self.clock() > expires:
            return None
        return decision

    def put(self, key, pset, decision: Decision, ttl_s: float) -> None:
        with self._lock:
            if len(self._d) >= self.SIZE:
                now = self.clock()
                self._d = {k: v for k, v in self._d.items() if v[0] >= now}
                if len(self._d) >= self.SIZE:
                    self._d.clear()
            self._d[key] = (self.clock() + ttl_s, pset, decision)


# A pod with more distinct images than this is refused: each needs a registry call, and one
# object must not queue thousands of them ahead of every other admission in the process.
MAX_DISTINCT_IMAGES = 64


class Budget:
    """The time left in this request: the apiserver's ?timeout= minus a margin for the answer."""

    def __init__(self, seconds: float, now: Callable[[], float] = time.monotonic):
        self.now = now
        self.deadline = now() + max(0.0, seconds)

    def left(self) -> float:
        return max(0.0, self.deadline - self.now())


# -- entry point ------------------------------------------------------------------------------

def decide(req: Request, deps: Deps, budget: Budget) -> Decision:
    """Decide one AdmissionReview request."""
    skip = _skip_reason(req)
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
    namespace = _namespace(req)
    today = dt.datetime.fromtimestamp(deps.clock(), dt.timezone.utc).date()
    pset = deps.policies()
    key = _memo_key(req, containers, namespace, today) if deps.memo_s > 0 else None
    if key is not None:
        hit = deps.memo.get(key, pset)
        if hit is not None:
            return dataclasses.replace(hit, memo=True)
    checks = _plan(containers, namespace, deps, pset)
    if not any(c.policy for c in checks):
        return _allow("no_policy", checks)
    _resolve(checks, deps, budget)
    _find_results(checks, deps, budget)
    for c in _undecided(checks):
        c.verdict = policy_mod.evaluate(c.result, c.policy, image=str(c.ref),
                                        namespace=namespace, today=today)
    _break_glass(checks, req, deps)
    decision = _respond(checks, deps)
    if key is not None and _reusable(decision):
        deps.memo.put(key, pset, decision, deps.memo_s)
    return decision


def _memo_key(req: Request, containers: list[Container], namespace: str, today) -> tuple | None:
    """Every input of the decision (see Memo), or None when one cannot be keyed."""
    obj = req.get("object") if isinstance(req.get("object"), dict) else {}
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    kind = req["kind"]
    try:
        return (req["operation"], req.get("subResource") or "", kind.get("group") or "",
                kind.get("version") or "", kind.get("kind"), namespace, tuple(containers),
                orjson.dumps(req.get("userInfo"), option=orjson.OPT_SORT_KEYS),
                orjson.dumps(_annotations(req), option=orjson.OPT_SORT_KEYS),
                orjson.dumps(meta.get("ownerReferences"), option=orjson.OPT_SORT_KEYS), today)
    except (TypeError, ValueError, orjson.JSONEncodeError):
        return None


def _reusable(decision: Decision) -> bool:
    return decision.verdict in ("pass", "fail") and all(
        c.cache == "hit" and c.resolve in ("hit", "miss") and not c.notes and c.glass is None
        for c in decision.checks if c.policy)


def _allow(reason: str, checks: list[Check] | None = None) -> Decision:
    return Decision({"allowed": True}, "skip", reason, checks or [])


def _skip_reason(req: Request) -> str:
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


def _namespace(req: Request) -> str:
    """The request's namespace, else the object's; anything but a string counts as absent."""
    ns = req.get("namespace")
    if isinstance(ns, str) and ns:
        return ns
    obj = req.get("object")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    ns = meta.get("namespace") if isinstance(meta, dict) else None
    return ns if isinstance(ns, str) and ns else "default"


def _plan(containers: list[Container], namespace: str, deps: Deps,
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

def _resolve(checks: list[Check], deps: Deps, budget: Budget) -> None:
    """Tags → platform digests, all asked at once, each answer awaited within the budget."""
    futures = [(c, deps.resolver.start(c.ref)) for c in _undecided(checks)]
    for c, future in futures:
        try:
            res = wait_resolution(future, c.ref, budget.left())
        except RegistryError as e:
            c.resolve = "error"
            c.verdict = policy_mod.on_state("error", c.policy, detail=str(e))
            continue
        c.digest, c.resolve = res.digest, "hit" if res.cached else "miss"


def _find_results(checks: list[Check], deps: Deps, budget: Budget) -> None:
    """Look up every result and submit every missing scan first (early scans for all the
    images), then wait for the missing ones within the budget."""
    contents: dict[int, ContentSpec | ContentError] = {}    # one content check per policy
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


def _created_by_controller(req: Request, deps: Deps) -> str:
    """The owner kind when a Pod CREATE comes from a workload controller for its owner."""
    user = str((req.get("userInfo") or {}).get("username", ""))
    if req.get("kind", {}).get("kind") != "Pod" or user not in deps.break_glass_controllers:
        return ""
    refs = ((req.get("object") or {}).get("metadata") or {}).get("ownerReferences") or []
    owner = next((r for r in refs if isinstance(r, dict) and r.get("controller") is True), None)
    return f"{owner.get('kind', '?')}/{owner.get('name', '?')}" if owner else ""


def _break_glass(checks: list[Check], req: Request, deps: Deps) -> None:
    """The `scapgate.io/break-glass` annotation: an allowed requester admits a denial loudly;
    anyone else is denied with why (policy.break_glass decides both)."""
    annotations = _annotations(req)
    if policy_mod.BREAK_GLASS_ANNOTATION not in annotations:
        return
    user_info = req.get("userInfo")
    inherited = _created_by_controller(req, deps)
    for c in checks:
        if c.policy and c.verdict:
            c.glass = policy_mod.break_glass(c.policy, user_info=user_info,
                                             annotations=annotations, inherited=inherited)
            if c.glass:
                c.verdict.allowed = c.glass.allowed


def _annotations(req: Request) -> dict:
    """The pod template's annotations and the object's (the pods carry the template's)."""
    obj = req.get("object") or {}
    template = obj
    for step in (pod_spec_path(req["kind"]) or ())[:-1]:   # spec.template, spec.jobTemplate…
        template = template.get(step) if isinstance(template, dict) else None
    out: dict = {}
    for holder in ([template] if template is not obj else []) + [obj]:
        meta = holder.get("metadata") if isinstance(holder, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("annotations"), dict):
            out.update(meta["annotations"])
    return out


# -- response ---------------------------------------------------------------------------------

def _respond(checks: list[Check], deps: Deps) -> Decision:
    judged = [c for c in checks if c.verdict]
    answer, worst, reason = response.build(judged, report_url=deps.report_url,
                                           policy_root=deps.policy_root)
    return Decision(answer, worst, reason, checks)


def _cut(e: Exception, limit: int = 300) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "…"
