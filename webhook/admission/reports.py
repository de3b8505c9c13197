"""PolicyReports (wgpolicyk8s.io/v1alpha2) from judged workloads: pure functions, no I/O.

Stage: admission (a part of it that answers no request: the inventory's report). Takes in:
judged workloads (Workload: namespace, kind, name, uid, and one JudgedImage per container with
its field path, digest, verdict state, policy and reasons) as the inventory keeps them, and the
time to stamp results that carry none. Hands on: one PolicyReport dict per namespace, ready to
serialise as JSON or YAML for `kubectl apply --server-side -f -` and Policy Reporter. Must not
import: webhook.serve (the console listener serves these; this module never sees HTTP). It
imports webhook.policy for the verdict state names, nothing else, and reads no clock unless a
result has no judged_at and `now` is not given.

The shape, and why:
- One report per namespace present in the input, named `scapgate-<namespace>`, labelled
  `app.kubernetes.io/managed-by: scapgate`, even when it has no result: applying an empty
  report clears the failures of a namespace that fixed them.
- No top-level `scope`. A namespace report covers many workloads; each result names its
  workload in `resources` (apiVersion, kind, name, namespace, uid). Policy Reporter gives a
  report's `scope` precedence over a result's resources when it derives result ids and filters
  kinds, so a Namespace scope would merge the findings of different workloads and hide the
  report from kind filters.
- One result per failing rule, CVE, OVAL definition or score of a failing image; one result
  per image for the other states. `result` from the state: fail → fail, error → error,
  pending → skip, unsupported → skip (the policy's warn action is not distinguished: the
  message says why), stale-feed → warn, pass → pass; an unknown state → error.
- `severity` in the CRD's enum: critical, high, medium, low, info; negligible → info;
  unknown or empty → omitted (the CRD allows it; claiming "info" would rank a finding nobody
  rated). `category`: SCAP rule, CVE, OVAL, SCAP score; "Image scan" and "CVE feed" for the
  per-image results. `message`: the title (or the state's detail), whitespace collapsed and
  clipped to MESSAGE_LIMIT characters. Text is data: HTML in a title reaches the report as is.
- `properties` (strings, empty ones left out): digest, image, container_path, state, policy's
  product, profile, content, content_sha256, feed_sha256, and `resultID`, a stable hash of
  workload, container, digest, policy, rule and result. Policy Reporter keys results by
  resultID when present; without it, two containers of one workload failing the same rule
  would collapse into one result.
- `timestamp` {seconds, nanos} from the workload's judged_at (else `now`).
- By default only fail, error and warn results (etcd pressure); all_results=True adds pass and
  skip. `summary` counts the results of that selection, including any cut for size.
- Bounded: a report holds at most MAX_RESULTS results and MAX_RESULTS_BYTES of results JSON
  (an etcd object is limited to about 1.5 MB). Past either bound, MAX_RESULTS - 1 results at
  most are kept, the most important first (error: an image nobody judged; then fail, warn,
  skip, pass; then severity; then their order), listed in their order, and a last result
  (policy scapgate, rule report-limit, result warn, not counted in `summary`) says how many
  were left out and of which result; `summary` still counts them, so `kubectl get polr` shows
  the true numbers. A report this large is past the 256 KiB that client-side `kubectl apply`
  keeps in its last-applied annotation: apply it with --server-side.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Iterable

from ..policy.verdict import STALE_FEED

API_VERSION = "wgpolicyk8s.io/v1alpha2"
KIND = "PolicyReport"
SOURCE = "scapgate"
LABELS = {"app.kubernetes.io/managed-by": "scapgate"}
MAX_RESULTS = 1000
MAX_RESULTS_BYTES = 1_000_000     # of the results' compact JSON; etcd's limit is ~1.5 MB
MESSAGE_LIMIT = 256
OUTCOMES = ("pass", "fail", "warn", "error", "skip")        # the CRD's result enum
DEFAULT_OUTCOMES = frozenset({"fail", "error", "warn"})
RESULT_OF_STATE = {"fail": "fail", "error": "error", "pending": "skip", "unsupported": "skip",
                   STALE_FEED: "warn", "pass": "pass"}
CATEGORY_OF_KIND = {"rule": "SCAP rule", "cve": "CVE", "oval": "OVAL", "score": "SCAP score"}
SEVERITY = {"critical": "critical", "high": "high", "important": "high", "medium": "medium",
            "moderate": "medium", "low": "low", "info": "info", "informational": "info",
            "negligible": "info"}
API_VERSION_OF_KIND = {"Pod": "v1", "ReplicationController": "v1", "Deployment": "apps/v1",
                       "ReplicaSet": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1",
                       "Job": "batch/v1", "CronJob": "batch/v1"}
# What a per-image result says when the inventory kept no detail.
STATE_MESSAGE = {
    "pass": "image passed the policy",
    "fail": "image failed the policy",
    "pending": "scan pending: the image is judged when its scan finishes",
    "error": "the image could not be scanned",
    "unsupported": "image not supported by the policy's SCAP content",
    STALE_FEED: "CVEs not judged: no current CVE feed for this image",
}
# Which results a cut keeps first.
_RANK = {"error": 0, "fail": 1, "warn": 2, "skip": 3, "pass": 4}
_SEVERITY_RANK = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class JudgedImage:
    """One container's image as the inventory keeps it."""

    path: str              # field path, e.g. spec.template.spec.containers[0].image
    image: str             # reference as written
    digest: str
    state: str             # pass | fail | pending | error | unsupported | stale-feed
    policy: str
    reasons: tuple[dict, ...] = ()   # {"id", "kind" (rule|cve|oval|score), "severity", "title"}
    product: str = ""
    profile: str = ""
    content: str = ""          # datastream file name
    content_sha256: str = ""
    feed_sha256: str = ""
    detail: str = ""           # for pending/error/unsupported/stale-feed


@dataclass(frozen=True)
class Workload:
    """One admitted object: a Pod, or the controller a Pod's owner references lead to."""

    namespace: str
    kind: str
    name: str
    uid: str
    images: tuple[JudgedImage, ...]
    api_version: str = ""      # derived from kind when ""
    judged_at: float = 0.0     # 0: unknown, results carry `now`


def policy_reports(workloads: Iterable[Workload], *, all_results: bool = False,
                   now: float | None = None) -> list[dict]:
    """One PolicyReport per namespace of `workloads`, sorted by namespace. Raises ValueError
    for a workload whose namespace or name cannot be in a Kubernetes object."""
    outcomes = set(OUTCOMES) if all_results else DEFAULT_OUTCOMES
    by_ns: dict[str, list[Workload]] = {}
    for w in workloads:
        if not _DNS_LABEL.fullmatch(w.namespace or "") or len(w.namespace) > 63:
            raise ValueError(f"{w.kind} {w.name!r}: namespace {w.namespace!r} is not a "
                             "Kubernetes namespace name")
        if not w.name:
            raise ValueError(f"{w.kind} in {w.namespace}: no name")
        by_ns.setdefault(w.namespace, []).append(w)
    clock: list[float] = []

    def stamp(at: float) -> float:
        if at > 0:
            return at
        if now is not None:
            return now
        if not clock:
            clock.append(time.time())
        return clock[0]

    reports = []
    for ns in sorted(by_ns):
        results = []
        for w in sorted(by_ns[ns], key=lambda w: (w.kind, w.name, w.uid)):
            ts = timestamp(stamp(w.judged_at))
            for img in w.images:
                results.extend(r for r in image_results(w, img, ts) if r["result"] in outcomes)
        reports.append(report(ns, results))
    return reports


def report(namespace: str, results: list[dict]) -> dict:
    """The PolicyReport of one namespace: summary of every result, results bounded."""
    summary = dict.fromkeys(OUTCOMES, 0)
    for r in results:
        summary[r["result"]] += 1
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": report_name(namespace), "namespace": namespace,
                     "labels": dict(LABELS)},
        "summary": summary,
        "results": bounded(namespace, results),
    }


def report_name(namespace: str) -> str:
    """scapgate-<namespace> as a DNS subdomain (lowercase alphanumerics, '-' and '.')."""
    name = re.sub(r"[^a-z0-9.-]+", "-", f"{SOURCE}-{namespace}".lower())
    name = re.sub(r"[-.]*\.[-.]*", ".", name)          # no empty or dash-edged dot parts
    return name[:253].strip("-.") or SOURCE


def image_results(w: Workload, img: JudgedImage, ts: dict) -> list[dict]:
    """Every result of one container's image: one per reason of a failing image, else one."""
    outcome = RESULT_OF_STATE.get(img.state, "error")
    ref = resource_ref(w)
    if img.state == "fail" and img.reasons:
        return [_result(w, img, ref, ts, outcome, rule=str(r.get("id", "")),
                        category=_category(str(r.get("kind") or "rule")),
                        severity=severity(str(r.get("severity", ""))),
                        message=str(r.get("title") or r.get("id") or ""))
                for r in img.reasons]
    message = img.detail or STATE_MESSAGE.get(img.state, f"unknown state {img.state!r}")
    return [_result(w, img, ref, ts, outcome, rule="cve-feed" if img.state == STALE_FEED
                    else "scan", category="CVE feed" if img.state == STALE_FEED
                    else "Image scan", severity="", message=message)]


def _category(kind: str) -> str:
    return CATEGORY_OF_KIND.get(kind, kind)


def _result(w: Workload, img: JudgedImage, ref: dict, ts: dict, outcome: str, *, rule: str,
            category: str, severity: str, message: str) -> dict:
    props = {"digest": img.digest, "image": img.image, "container_path": img.path,
             "state": img.state, "product": img.product, "profile": img.profile,
             "content": img.content, "content_sha256": img.content_sha256,
             "feed_sha256": img.feed_sha256,
             "resultID": result_id(w, img.path, img.digest, img.policy, rule, outcome)}
    out = {"source": SOURCE, "policy": img.policy}
    if rule:
        out["rule"] = rule
    out["result"] = outcome
    if severity:
        out["severity"] = severity
    out.update(category=category, message=clip(message), timestamp=dict(ts),
               resources=[dict(ref)],
               properties={k: str(v) for k, v in props.items() if v})
    return out


def resource_ref(w: Workload) -> dict:
    """The workload as a core/v1 ObjectReference (apiVersion left out for an unknown kind)."""
    ref = {}
    api = w.api_version or API_VERSION_OF_KIND.get(w.kind, "")
    if api:
        ref["apiVersion"] = api
    ref.update(kind=w.kind, name=w.name, namespace=w.namespace)
    if w.uid:
        ref["uid"] = w.uid
    return ref


def severity(value: str) -> str:
    """The CRD's severity for one of scapgate's (scan, rule or feed); "" when unknown."""
    return SEVERITY.get((value or "").strip().lower(), "")


def timestamp(at: float) -> dict:
    """A protobuf Timestamp as the CRD spells it: whole seconds and non-negative nanos."""
    seconds = math.floor(at)
    nanos = min(max(int(round((at - seconds) * 1e9)), 0), 999_999_999)
    return {"seconds": int(seconds), "nanos": nanos}


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """Whitespace collapsed to single spaces, at most `limit` characters (… marks a cut)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def result_id(w: Workload, path: str, digest: str, policy: str, rule: str, outcome: str) -> str:
    """Stable across reports for the same finding; distinct per workload and container."""
    key = "\0".join((w.namespace, w.kind, w.name, w.uid, path, digest, policy, rule, outcome))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def _size(result: dict) -> int:
    return len(json.dumps(result, ensure_ascii=False, separators=(",", ":"))
               .encode("utf-8", "surrogatepass")) + 1


def bounded(namespace: str, results: list[dict]) -> list[dict]:
    """The results as they are when within bounds; else the most important ones that fit in
    MAX_RESULTS - 1 results and MAX_RESULTS_BYTES, in their order, and a note of the rest."""
    sizes = [_size(r) for r in results]
    if len(results) <= MAX_RESULTS and sum(sizes) <= MAX_RESULTS_BYTES:
        return results
    order = sorted(range(len(results)), key=lambda i: (
        _RANK[results[i]["result"]], _SEVERITY_RANK.get(results[i].get("severity", ""), 5), i))
    kept: list[int] = []
    room = MAX_RESULTS_BYTES - 1024                      # the note's own size, with room
    for i in order:
        if len(kept) == MAX_RESULTS - 1 or sizes[i] > room:
            break
        kept.append(i)
        room -= sizes[i]
    left = [results[i]["result"] for i in order[len(kept):]]
    return [results[i] for i in sorted(kept)] + [_note(namespace, results, left)]


def _note(namespace: str, results: list[dict], left: list[str]) -> dict:
    counts = {o: left.count(o) for o in OUTCOMES if o in left}
    words = ", ".join(f"{n} {o}" for o, n in counts.items())
    ts = max((r["timestamp"] for r in results), key=lambda t: (t["seconds"], t["nanos"]))
    props = {"omitted": str(len(left)), "limit_results": str(MAX_RESULTS),
             "limit_bytes": str(MAX_RESULTS_BYTES),
             **{f"omitted_{o}": str(n) for o, n in counts.items()},
             "resultID": f"scapgate-report-limit-{namespace}"}
    return {
        "source": SOURCE, "policy": SOURCE, "rule": "report-limit", "result": "warn",
        "category": "Report",
        "message": clip(f"{len(left)} more results left out of this report ({words}): a report "
                        f"holds at most {MAX_RESULTS} results and about "
                        f"{MAX_RESULTS_BYTES // 1_000_000} MB; summary counts them all, "
                        "the inventory lists every image"),
        "timestamp": dict(ts),
        "properties": props,
    }


def workload_of(entry: dict) -> Workload:
    """A Workload from an inventory entry (admission.inventory's JSON body)."""
    return Workload(
        namespace=entry.get("namespace", ""), kind=entry.get("kind", ""),
        name=entry.get("name", ""), uid=entry.get("uid", ""),
        judged_at=float(entry.get("judged_at") or 0.0),
        images=tuple(JudgedImage(
            path=i.get("path", ""), image=i.get("image", ""), digest=i.get("digest", ""),
            state=i.get("state", ""), policy=i.get("policy", ""),
            reasons=tuple(i.get("reasons") or ()), product=i.get("product", ""),
            profile=i.get("profile", ""), content=i.get("content", ""),
            content_sha256=i.get("content_sha256", ""), feed_sha256=i.get("feed_sha256", ""),
            detail=i.get("detail", "")) for i in entry.get("images", [])))

