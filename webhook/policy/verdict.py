"""The verdict for one image: thresholds and waivers applied to a stored scan result.

The verdict is computed at admission time from a stored ScanResult and the policy, so a new
threshold or waiver applies to the next request without a rescan. A denial is a value (Verdict
with reasons), never an exception. The trail ties a decision to the exact policy file, content
and image it was made from.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from ..scan.results import ContentSet, CveFinding, ScanResult, cve_severity_rank, severity_rank
from ..scan.results import worst_first
from ..scan.feeds import age_text
from .model import CvePolicy, Policy, Waiver, short_rule_id

WARNING_LIMIT = 120          # kube-apiserver shows warnings; keep each one short
STALE_FEED = "stale-feed"    # the verdict state of an image no current CVE feed judged


@dataclass(frozen=True)
class Reason:
    """One thing that is wrong with an image: a failing rule, a true OVAL definition, a CVE
    of the distribution's feed, a score."""

    id: str
    severity: str
    title: str
    kind: str = "rule"     # rule | oval | cve | score
    refs: tuple[str, ...] = ()     # CVE / advisory ids of an OVAL definition or feed finding
    packages: tuple[str, ...] = ()  # a CVE's package (the feed's name, the installed binary)


@dataclass
class Verdict:
    """The decision for one image under one policy.

    state: pass | fail | pending | error | unsupported. allowed already reflects enforcement
    mode and the pending/error/unsupported actions; warnings are what a developer should see
    even when allowed.
    """

    state: str
    allowed: bool
    reasons: list[Reason] = field(default_factory=list)
    waived: list[tuple[Reason, Waiver]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    detail: str = ""
    stale: bool = False


def enforcement_of(rule_id: str, severity: str, policy: Policy) -> tuple[bool, str]:
    """Whether a failing rule denies under this policy, and why (the words `explain` prints)."""
    short = short_rule_id(rule_id)
    if rule_id in policy.never_enforce or short in policy.never_enforce:
        return False, "listed in rules.neverEnforce"
    if rule_id in policy.always_enforce or short in policy.always_enforce:
        return True, "listed in rules.alwaysEnforce"
    if policy.deny_severity == "none":
        return False, "rules.denySeverity is none"
    if severity_rank(severity) >= severity_rank(policy.deny_severity):
        return True, f"severity {severity} >= denySeverity {policy.deny_severity}"
    return False, f"severity {severity} is below denySeverity {policy.deny_severity}"


def waiver_for(reason: Reason, policy: Policy, *, image: str, namespace: str,
               today: dt.date, expired: bool = False) -> Waiver | None:
    """The first waiver in force for this finding (or, with expired=True, the first one that
    would cover it but has expired — to tell the developer why it no longer helps)."""
    for w in policy.waivers:
        if (w.covers(reason.id, image, namespace, reason.refs, reason.packages)
                and (today > w.expires) == expired):
            return w
    return None


def cve_enforced(f: CveFinding, cp: CvePolicy) -> tuple[bool, str]:
    """Whether a CVE finding denies under spec.cves, and why (the words `explain` prints)."""
    if cp.deny_severity == "none":
        return False, "cves.denySeverity is none"
    if cp.fixed_only and not f.fixed:
        return False, "no fix released (cves.fixedOnly)"
    if cve_severity_rank(f.severity) >= cve_severity_rank(cp.deny_severity):
        return True, f"severity {f.severity} >= cves.denySeverity {cp.deny_severity}"
    return False, f"severity {f.severity} is below cves.denySeverity {cp.deny_severity}"


def cve_reason(f: CveFinding) -> Reason:
    return Reason(f.id, f.severity, f.line(), kind="cve", refs=(f.id, *f.cves),
                  packages=tuple(p for p in (f.package, f.binary) if p))


def feed_problem(cves: ScanResult, cp: CvePolicy, feed_age_s: float | None) -> str:
    """Why no current feed judged this image's CVEs ("" when one did)."""
    feed = cves.feed or {}
    product = feed.get("product") or cves.product or "this distribution"
    if not feed.get("sha256"):
        return feed.get("error") or f"no CVE feed for {product}: CVEs not judged"
    if feed_age_s is None:
        return f"no CVE feed for {product} is kept any more: CVEs not judged"
    if feed_age_s > cp.max_feed_age_s:
        return (f"the CVE feed for {product} is {age_text(feed_age_s)} old, older than "
                f"cves.maxFeedAge {age_text(cp.max_feed_age_s)}")
    return ""


def clip(text: str) -> str:
    return text if len(text) <= WARNING_LIMIT else text[:WARNING_LIMIT - 1] + "…"


def evaluate(result: ScanResult, policy: Policy, *, image: str, namespace: str,
             today: dt.date, cves: ScanResult | None = None,
             feed_age_s: float | None = None) -> Verdict:
    """Apply thresholds and waivers to a finished scan. With a `cves` section, the CVEs of
    `cves` (a CVE evaluation of a newer feed) or else of the scan result itself count too;
    feed_age_s is the age of the product's feed in force (None: there is none)."""
    if result.state in ("error", "unsupported"):
        return on_state(result.state, policy, detail=result.error)
    reasons, waived, warnings = [], [], []
    stale = ""
    if policy.cves is not None:
        source = cves if cves is not None and cves.state == "done" else result
        stale = feed_problem(source, policy.cves, feed_age_s)
        for f in worst_first(source.cves):
            if cve_enforced(f, policy.cves)[0]:
                reasons.append(cve_reason(f))
    for r in result.failed():
        if enforcement_of(r.id, r.severity, policy)[0]:
            reasons.append(Reason(short_rule_id(r.id), r.severity, r.title))
    if policy.deny_oval_true:
        for o in result.oval:
            if o.result == "true" and o.klass in ("vulnerability", "patch", ""):
                refs = ", ".join(o.references[:3])
                reasons.append(Reason(o.id, "high", f"{o.title} {refs}".strip(), kind="oval",
                                      refs=tuple(o.references)))
    kept = []
    for reason in reasons:
        w = waiver_for(reason, policy, image=image, namespace=namespace, today=today)
        if w:
            waived.append((reason, w))
            if w.days_left(today) <= policy.waiver_warning_days:
                warnings.append(clip(f"waiver for {reason.id} ({w.ticket}) expires "
                                      f"{w.expires.isoformat()}, in {w.days_left(today)} days"))
            continue
        kept.append(reason)
        gone = waiver_for(reason, policy, image=image, namespace=namespace, today=today,
                          expired=True)
        if gone:
            warnings.append(clip(f"waiver for {gone.names} ({gone.ticket}) expired "
                                  f"{gone.expires.isoformat()} and no longer applies"))
    if policy.min_score is not None and result.score is not None and result.score < policy.min_score:
        kept.append(Reason("score", "medium",
                           f"score {result.score:.1f} is below the minimum {policy.min_score:g}",
                           kind="score"))
    if kept or not stale:
        state = "fail" if kept else "pass"
        allowed = state == "pass" or policy.enforcement != "enforce"
        return Verdict(state=state, allowed=allowed, reasons=kept, waived=waived,
                       warnings=warnings)
    v = on_state(STALE_FEED, policy, detail=stale)
    v.waived, v.warnings = waived, warnings
    return v


def action_of(state: str, policy: Policy) -> str:
    """The policy's named action (deny, allow, warn) for a pending, error or unsupported
    image."""
    if state == STALE_FEED:
        return policy.cves.on_stale_feed if policy.cves is not None else "allow"
    return {"pending": policy.on_pending, "unsupported": policy.on_unsupported}.get(
        state, policy.on_error)


def on_state(state: str, policy: Policy, *, detail: str) -> Verdict:
    """The policy's named action for a pending, error or unsupported state."""
    allowed = action_of(state, policy) in ("allow", "warn") or policy.enforcement != "enforce"
    return Verdict(state=state, allowed=allowed, detail=detail)


def trail(policy: Policy, content: ContentSet | None, digest: str, verdict: Verdict,
          result: ScanResult | None = None) -> dict:
    """The fields every decision log line carries, so a decision traces back to the exact
    policy file, content and image it was made from."""
    return {**content_trail(policy, content), **verdict_trail(digest, verdict, result)}


def content_trail(policy: Policy, content: ContentSet | None) -> dict:
    """The policy half of the trail: the same for every image a policy judged. The content
    set's sha256 is the content part of every scan key under this policy."""
    return {
        "policy": policy.name, "policy_file": policy.path, "policy_sha256": policy.sha256,
        "content_set_sha256": content.digest if content else "",
        "enforcement": policy.enforcement,
    }


def verdict_trail(digest: str, verdict: Verdict, result: ScanResult | None = None) -> dict:
    """The image half of the trail: what the image was identified as, the datastream and
    profile that judged it (from its scan result), and the verdict."""
    out = {
        "digest": digest, "state": verdict.state, "allowed": verdict.allowed,
        "denied_by": [r.id for r in verdict.reasons],
        "waivers": [{"id": r.id, "waiver": w.names, "ticket": w.ticket, "owner": w.owner,
                     "expires": w.expires.isoformat()} for r, w in verdict.waived],
    }
    if result is not None:
        out.update(product=result.product, content=result.tools.get("content", ""),
                   content_sha256=result.tools.get("content_sha256", ""),
                   profile=result.profile)
        if result.feed.get("sha256"):
            out["cve_feed_sha256"] = result.feed["sha256"]
    return out
