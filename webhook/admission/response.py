"""The answer to kube-apiserver, from judged images: allowed, the denial message a developer
can act on, warnings, audit annotations.

Short enough for a terminal: per denied image its field path, digest, policy and profile, the
worst few failing rules and a count of the rest, where the full report is and the command that
reproduces the scan. Works on admission.Check values (image, paths, pinned, digest, policy,
verdict, glass, notes); no I/O.
"""
from __future__ import annotations

import os

from .. import policy as policy_mod
from .review import Response

RULES_SHOWN = 3          # worst failing rules named per image; the rest are counted
CVES_SHOWN = 5           # worst CVEs named per image, one line each
IMAGES_SHOWN = 5         # denied images described in one message
STATE_ORDER = {"fail": 5, "error": 4, "unsupported": 3, "stale-feed": 2, "pending": 1,
               "pass": 0}


def build(judged: list, *, report_url: str = "",
          policy_root: str = "") -> tuple[Response, str, str]:
    """(response, overall verdict, reason) for the images that have a verdict. The overall
    verdict is the worst state among denied images (or among all when none is denied)."""
    denied = [c for c in judged if not c.verdict.allowed]
    worst = max((c.verdict.state for c in (denied or judged)), key=STATE_ORDER.__getitem__)
    reason = {"fail": "rules", "pass": "clean"}.get(worst, worst)
    if any(c.glass for c in judged):
        reason = "break_glass"
    resp: Response = {"allowed": not denied, "auditAnnotations": audit_annotations(judged, worst)}
    if denied:
        resp["status"] = status(denial_message(denied, report_url=report_url,
                                               policy_root=policy_root))
    warnings = [w for c in judged for w in warnings_for(c)]
    if warnings:
        resp["warnings"] = warnings
    return resp, worst, reason


MESSAGE_LIMIT = 8192   # a denial is read in a terminal and copied into events


def status(message: str) -> dict:
    if len(message) > MESSAGE_LIMIT:
        message = message[:MESSAGE_LIMIT - 1] + "…"
    return {"code": 403, "reason": "Forbidden", "message": message}


def _cut(text: str, limit: int = 256) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def denial_message(denied: list, *, report_url: str = "", policy_root: str = "") -> str:
    """What `kubectl apply` prints after 'admission webhook "…" denied the request: '."""
    blocks = [describe(c, report_url, policy_root) for c in denied[:IMAGES_SHOWN]]
    if len(denied) > IMAGES_SHOWN:
        blocks.append(f"+{len(denied) - IMAGES_SHOWN} more images denied")
    return "\n".join(blocks)


def describe(c, report_url: str, policy_root: str) -> str:
    v, p = c.verdict, c.policy
    if c.glass and not c.glass.allowed:
        return f"{c.paths}: {c.glass.message}"
    if v.state == "pending":
        return f"{c.paths}: {v.detail}"
    if v.state == "error":
        return f"{c.paths}: {_cut(c.image)} cannot be scanned under policy {p.name}: {v.detail}"
    if v.state == "unsupported":
        return (f"{c.paths}: {_cut(c.image)} ({c.digest}) is denied by policy {p.name} "
                f"(actions.unsupported: deny): {v.detail}")
    if v.state == "stale-feed":
        return (f"{c.paths}: {_cut(c.image)} ({c.digest}) is denied by policy {p.name} "
                f"(cves.staleFeed: deny): {v.detail}")
    lines = [f"{c.paths}: {_cut(c.image)} ({c.digest}) fails policy {p.name}, "
             f"{judged_by(c)}:"]
    rules = [r for r in v.reasons if r.kind != "cve"]
    cves = [r for r in v.reasons if r.kind == "cve"]
    lines += [f"  {r.severity:<6} {r.id}  {r.title}" for r in rules[:RULES_SHOWN]]
    if len(rules) > RULES_SHOWN:
        lines.append(f"  +{len(rules) - RULES_SHOWN} more")
    lines += [f"  {_cut(r.title, 160)}" for r in cves[:CVES_SHOWN]]
    if len(cves) > CVES_SHOWN:
        lines.append(f"  +{len(cves) - CVES_SHOWN} more CVEs")
    lines.append(f"  full report: GET {report_path(report_url, c.digest, p.name)}")
    lines.append(f"  reproduce: scapgate scan {c.pinned} --policy {policy_file(p, policy_root)}")
    return "\n".join(lines)


def judged_by(c) -> str:
    """"debian12 content, profile standard": what the image was identified as and judged
    with (from its scan result; the policy's own profile when the result does not say)."""
    r = c.result
    profile = (r.profile if r is not None and r.profile else c.policy.profile)
    short = profile.rsplit("_profile_", 1)[-1] or "?"
    return f"{r.product} content, profile {short}" if r is not None and r.product \
        else f"profile {short}"


def report_path(base: str, digest: str, policy_name: str) -> str:
    return f"{base.rstrip('/')}/reports/{digest}?policy={policy_name}"


def policy_file(p: policy_mod.Policy, root: str) -> str:
    """The policy file as the repository names it (policies/default.yaml), not a server path."""
    if not root or not os.path.isabs(p.path):
        return p.path
    base = root if os.path.isdir(root) else os.path.dirname(root)
    rel = os.path.relpath(p.path, base)
    return p.path if rel.startswith("..") else os.path.join(os.path.basename(base.rstrip("/")), rel)


def warnings_for(c) -> list[str]:
    """What a developer should see although this image was admitted."""
    v, p = c.verdict, c.policy
    if not v.allowed:
        return []
    where = c.containers[0].path + (f" (+{len(c.containers) - 1})" if len(c.containers) > 1 else "")
    out = list(v.warnings)
    if c.glass:
        out.append(c.glass.warning or f"break-glass: {where} admitted ({v.state})")
    elif v.state == "fail" and p.enforcement != "audit":
        ids = ", ".join(r.id for r in v.reasons[:RULES_SHOWN])
        what = ("failing rules" if all(r.kind != "cve" for r in v.reasons)
                else "failing rules and CVEs")
        out.append(_clip(f"{where}: {len(v.reasons)} {what} ({p.enforcement} mode): {ids}"))
    elif v.state in ("pending", "error", "unsupported", "stale-feed") and _loud(v.state, p):
        if v.state in ("unsupported", "stale-feed"):   # the detail says what was not judged
            out.append(_clip(f"{where}: {v.detail}"))
        else:
            what = "scan in progress" if v.state == "pending" else f"not scanned: {v.detail}"
            out.append(f"{where}: {what}; admitted by policy {p.name}")
    return out + c.notes


def _loud(state: str, p: policy_mod.Policy) -> bool:
    """A pending/error/unsupported admission warns unless the policy says allow or audits
    silently."""
    action = policy_mod.action_of(state, p)
    return action == "warn" or (action == "deny" and p.enforcement == "warn")


def _clip(text: str) -> str:
    """kube-apiserver shows warnings; each is kept under its length."""
    limit = policy_mod.WARNING_LIMIT
    return text if len(text) <= limit else text[:limit - 1] + "…"


def audit_annotations(judged: list, worst: str) -> dict[str, str]:
    """kube-apiserver prefixes each key with the webhook's name: <webhook>/verdict."""
    out = {"verdict": worst,
           "policy": ",".join(sorted({c.policy.name for c in judged})),
           "images": ",".join(f"{c.pinned}={c.verdict.state}" for c in judged)}
    rules = sorted({r.id for c in judged for r in c.verdict.reasons})
    if rules:
        out["rules"] = ",".join(rules)
    unsupported = [c for c in judged if c.verdict.state == "unsupported"]
    if unsupported:
        out["unsupported"] = ",".join(f"{c.pinned}={_found(c)}" for c in unsupported)
    for c in judged:
        if c.glass:
            out.update(c.glass.audit)
    return out


def _found(c) -> str:
    """What an unsupported image was found to be: "alpine 3.20.3", "none"."""
    ident = c.result.identity if c.result is not None else {}
    return " ".join(x for x in (ident.get("distro", ""), ident.get("version", "")) if x) or "?"
