"""Policies: what is enforced, where, with which exceptions — and the verdict for one image.

The verdict is computed at admission time from a stored ScanResult and the policy, so a new
threshold or waiver applies to the next request without a rescan. A denial is a value (Verdict
with reasons), never an exception.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass, field

import jsonschema

from . import content as content_mod
from .policy_file import PolicyError, dates_to_text, line_of, read_document
from .results import ContentSpec, ScanResult, severity_rank

SELECT_MEMO = 4096        # (namespace, image) → policy answers a PolicySet keeps

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "policies", "schema", "imagepolicy.schema.json")
DEFAULTS = {
    "denySeverity": "medium", "enforcement": "enforce", "pending": "deny", "error": "deny",
    "stale": "decide", "maxScanAge": "7d", "waiverWarningDays": 14,
}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
BREAK_GLASS_ANNOTATION = "scapgate.io/break-glass"
WARNING_LIMIT = 120          # kube-apiserver shows warnings; keep each one short
REASON_LIMIT = 300           # of a break-glass reason kept in messages and audit annotations
_OVAL_ID = re.compile(r"^oval:[A-Za-z0-9_.-]+:def:[0-9]+$")
_XCCDF_RULE = re.compile(r"^xccdf_.*_rule_|^[a-z0-9][a-z0-9_.-]*$")


@dataclass(frozen=True)
class Waiver:
    """An approved exception for one rule, OVAL definition or CVE id, in some images and
    namespaces, until (and including) `expires`. `line` is where it is written, for messages."""

    rule: str
    reason: str
    owner: str
    ticket: str
    expires: dt.date
    images: tuple[str, ...] = ("*",)
    namespaces: tuple[str, ...] = ("*",)
    approved_by: str = ""
    line: int = 0

    @property
    def kind(self) -> str:
        """rule (XCCDF rule id, full or short), oval (definition id) or ref (CVE/DSA/… id)."""
        if _OVAL_ID.match(self.rule):
            return "oval"
        return "rule" if _XCCDF_RULE.match(self.rule) else "ref"

    def covers(self, rule_id: str, image: str, namespace: str, refs=()) -> bool:
        """Whether the waiver names this finding here, whatever its expiry."""
        return ((_rule_matches(self.rule, rule_id) or self.rule in refs)
                and matches_any(image, self.images) and matches_any(namespace, self.namespaces))

    def applies(self, rule_id: str, image: str, namespace: str, today: dt.date,
                refs=()) -> bool:
        """An expired waiver stops applying by itself (it is valid through its expiry date)."""
        return today <= self.expires and self.covers(rule_id, image, namespace, refs)

    def days_left(self, today: dt.date) -> int:
        return (self.expires - today).days


@dataclass(frozen=True)
class Policy:
    name: str
    owner: str
    description: str
    path: str
    sha256: str
    datastream: str
    profile: str
    tailoring: str | None = None
    oval: tuple[str, ...] = ()
    priority: int = 0
    default: bool = False
    namespaces: tuple[str, ...] = ("*",)
    exclude_namespaces: tuple[str, ...] = ()
    images: tuple[str, ...] = ("*",)
    exclude_images: tuple[str, ...] = ()
    deny_severity: str = "medium"
    min_score: float | None = None
    always_enforce: frozenset[str] = frozenset()
    never_enforce: frozenset[str] = frozenset()
    deny_oval_true: bool = True
    enforcement: str = "enforce"
    on_pending: str = "deny"
    on_error: str = "deny"
    on_stale: str = "decide"
    max_scan_age_s: int = 7 * 86400
    waiver_warning_days: int = 14
    waivers: tuple[Waiver, ...] = ()
    break_glass_users: frozenset[str] = frozenset()
    break_glass_groups: frozenset[str] = frozenset()

    def content(self) -> ContentSpec:
        """Content with hashes (raises content.ContentError when a file is missing)."""
        return content_mod.spec(self.datastream, self.profile, self.tailoring, self.oval)

    def matches_namespace(self, namespace: str) -> bool:
        return (matches_any(namespace, self.namespaces)
                and not matches_any(namespace, self.exclude_namespaces))

    def matches_image(self, image: str) -> bool:
        return matches_any(image, self.images) and not matches_any(image, self.exclude_images)


def matches_any(value: str, patterns) -> bool:
    """Glob match on the whole value: `kube-system` never matches `kube-system-evil`."""
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _rule_matches(pattern: str, rule_id: str) -> bool:
    """A waiver may name the full XCCDF id or its short form (after 'content_rule_'); the id
    it is compared with may be either too (Reasons carry the short form)."""
    return pattern == rule_id or _short(pattern) == _short(rule_id)


def parse_duration(text: str) -> int:
    return int(text[:-1]) * UNITS[text[-1]]


_schema_cache: dict | None = None


def schema() -> dict:
    global _schema_cache
    if _schema_cache is None:
        with open(SCHEMA_PATH) as fh:
            _schema_cache = json.load(fh)
    return _schema_cache


def load(path: str) -> Policy:
    """Read, schema-check and build one policy file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise PolicyError(f"{path}: cannot read policy: {e.strerror}") from e
    doc, node = read_document(raw, path)
    return from_document(doc, path=path, sha256=hashlib.sha256(raw).hexdigest(), node=node)


def schema_errors(doc) -> list:
    """Every JSON Schema error, in document order (lint reports all, the loader the first)."""
    validator = jsonschema.Draft202012Validator(
        schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])


def from_document(doc, *, path: str = "<inline>", sha256: str = "", node=None) -> Policy:
    doc = dates_to_text(doc)
    errors = schema_errors(doc)
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top)"
        line = line_of(node, list(e.absolute_path))
        more = f" (and {len(errors) - 1} more; run `scapgate policy lint`)" if len(errors) > 1 else ""
        raise PolicyError(f"{path}{f':{line}' if line else ''}: {where}: {e.message}{more}",
                          line=line)
    meta, spec = doc["metadata"], doc["spec"]
    base = os.path.dirname(os.path.abspath(path)) if path != "<inline>" else None
    c, r = spec["content"], spec.get("rules", {})
    m, a = spec.get("match", {}), spec.get("actions", {})
    bg = spec.get("breakGlass", {})
    try:
        waivers = tuple(Waiver(rule=w["rule"], reason=w["reason"], owner=w["owner"],
                               ticket=w["ticket"], expires=dt.date.fromisoformat(w["expires"]),
                               images=tuple(w.get("images", ["*"])),
                               namespaces=tuple(w.get("namespaces", ["*"])),
                               approved_by=w.get("approvedBy", ""),
                               line=line_of(node, ["spec", "waivers", i]))
                        for i, w in enumerate(spec.get("waivers", [])))
    except ValueError as e:
        raise PolicyError(f"{path}: spec.waivers: invalid expiry date: {e}") from e
    return Policy(
        name=meta["name"], owner=meta["owner"], description=meta["description"], path=path,
        sha256=sha256,
        datastream=content_mod.resolve_path(c["datastream"], base), profile=c["profile"],
        tailoring=content_mod.resolve_path(c["tailoring"], base) if c.get("tailoring") else None,
        oval=tuple(content_mod.resolve_path(o, base) for o in c.get("oval", [])),
        priority=spec.get("priority", 0), default=spec.get("default", False),
        namespaces=tuple(m.get("namespaces", ["*"])),
        exclude_namespaces=tuple(m.get("excludeNamespaces", [])),
        images=tuple(m.get("images", ["*"])), exclude_images=tuple(m.get("excludeImages", [])),
        deny_severity=r.get("denySeverity", DEFAULTS["denySeverity"]),
        min_score=r.get("minScore"),
        always_enforce=frozenset(r.get("alwaysEnforce", [])),
        never_enforce=frozenset(r.get("neverEnforce", [])),
        deny_oval_true=r.get("denyOvalTrue", True),
        enforcement=spec.get("enforcement", DEFAULTS["enforcement"]),
        on_pending=a.get("pending", DEFAULTS["pending"]), on_error=a.get("error", DEFAULTS["error"]),
        on_stale=a.get("stale", DEFAULTS["stale"]),
        max_scan_age_s=parse_duration(spec.get("maxScanAge", DEFAULTS["maxScanAge"])),
        waiver_warning_days=spec.get("waiverWarningDays", DEFAULTS["waiverWarningDays"]),
        waivers=waivers,
        break_glass_users=frozenset(bg.get("users", [])),
        break_glass_groups=frozenset(bg.get("groups", [])))


# -- verdicts -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reason:
    """One thing that is wrong with an image: a failing rule, a true OVAL definition, a score."""

    id: str
    severity: str
    title: str
    kind: str = "rule"     # rule | oval | score
    refs: tuple[str, ...] = ()     # CVE / advisory ids of an OVAL definition


@dataclass
class Verdict:
    """The decision for one image under one policy.

    state: pass | fail | pending | error. allowed already reflects enforcement mode and the
    pending/error actions; warnings are what a developer should see even when allowed.
    """

    state: str
    allowed: bool
    reasons: list[Reason] = field(default_factory=list)
    waived: list[tuple[Reason, Waiver]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    detail: str = ""
    stale: bool = False


def _short(rule_id: str) -> str:
    return rule_id.rsplit("content_rule_", 1)[-1]


def enforcement_of(rule_id: str, severity: str, policy: Policy) -> tuple[bool, str]:
    """Whether a failing rule denies under this policy, and why (the words `explain` prints)."""
    short = _short(rule_id)
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
        if w.covers(reason.id, image, namespace, reason.refs) and (today > w.expires) == expired:
            return w
    return None


def _clip(text: str) -> str:
    return text if len(text) <= WARNING_LIMIT else text[:WARNING_LIMIT - 1] + "…"


def evaluate(result: ScanResult, policy: Policy, *, image: str, namespace: str,
             today: dt.date) -> Verdict:
    """Apply thresholds and waivers to a finished scan."""
    if result.state == "error":
        return on_state("error", policy, detail=result.error)
    reasons, waived, warnings = [], [], []
    for r in result.failed():
        if enforcement_of(r.id, r.severity, policy)[0]:
            reasons.append(Reason(_short(r.id), r.severity, r.title))
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
                warnings.append(_clip(f"waiver for {reason.id} ({w.ticket}) expires "
                                      f"{w.expires.isoformat()}, in {w.days_left(today)} days"))
            continue
        kept.append(reason)
        gone = waiver_for(reason, policy, image=image, namespace=namespace, today=today,
                          expired=True)
        if gone:
            warnings.append(_clip(f"waiver for {reason.id} ({gone.ticket}) expired "
                                  f"{gone.expires.isoformat()} and no longer applies"))
    if policy.min_score is not None and result.score is not None and result.score < policy.min_score:
        kept.append(Reason("score", "medium",
                           f"score {result.score:.1f} is below the minimum {policy.min_score:g}",
                           kind="score"))
    state = "fail" if kept else "pass"
    allowed = state == "pass" or policy.enforcement != "enforce"
    return Verdict(state=state, allowed=allowed, reasons=kept, waived=waived, warnings=warnings)


def on_state(state: str, policy: Policy, *, detail: str) -> Verdict:
    """The policy's named action for a pending or error state (deny, allow or warn)."""
    action = policy.on_pending if state == "pending" else policy.on_error
    allowed = action in ("allow", "warn") or policy.enforcement != "enforce"
    return Verdict(state=state, allowed=allowed, detail=detail)


# -- break-glass and decision trail ---------------------------------------------------------

@dataclass(frozen=True)
class BreakGlass:
    """Someone asked to bypass the gate with the break-glass annotation.

    allowed: the requester (username, or one of their groups) is on the policy's list and gave
    a reason — admit whatever the verdict, with `warning` and `audit`, and log it. Otherwise
    deny with `message`. `audit` is for AdmissionResponse.auditAnnotations either way.
    """

    allowed: bool
    reason: str
    user: str
    via: str                  # "user alice" / "group sre-oncall" / "" when refused
    policy: str
    message: str
    warning: str = ""
    audit: dict[str, str] = field(default_factory=dict)


def break_glass(policy: Policy | None, *, user_info: dict | None,
                annotations: dict | None, inherited: str = "") -> BreakGlass | None:
    """None when the object carries no `scapgate.io/break-glass` annotation (or no policy
    applies, so there is nothing to bypass); otherwise who asked, whether they may, and what
    to tell them and the audit log. Names are compared exactly: no globs."""
    if policy is None or not annotations or BREAK_GLASS_ANNOTATION not in annotations:
        return None
    reason = " ".join(str(annotations.get(BREAK_GLASS_ANNOTATION) or "").split())[:REASON_LIMIT]
    raw_user = (user_info or {}).get("username") if isinstance(user_info, dict) else None
    user = raw_user if isinstance(raw_user, str) and raw_user else "<unknown>"
    raw_groups = (user_info or {}).get("groups") if isinstance(user_info, dict) else None
    groups = [g for g in raw_groups if isinstance(g, str)] if isinstance(raw_groups, list) else []
    via = (f"user {user}" if user in policy.break_glass_users else
           next((f"group {g}" for g in groups if g in policy.break_glass_groups), ""))
    if not via and inherited:
        via = f"owner {inherited}, admitted with break-glass by its creator"
    record = {"policy": policy.name, "user": user[:253], "reason": reason}
    if via and reason:
        audit = json.dumps({**record, "allowed": True, "via": via}, sort_keys=True)
        return BreakGlass(
            allowed=True, reason=reason, user=user, via=via, policy=policy.name,
            message=f"break-glass by {user[:128]} ({via}) under policy {policy.name}: {reason}",
            warning=_clip(f"break-glass by {user[:128]}: scan verdict bypassed, this is audited — {reason}"),
            audit={"break-glass": audit})
    if via:
        why = (f"the {BREAK_GLASS_ANNOTATION} annotation needs a reason as its value "
               "(what is broken, which incident)")
    else:
        shown = ", ".join(g[:64] for g in groups[:8]) + (", …" if len(groups) > 8 else "")
        who = f"user {user[:128]!r}" + (f" (groups: {shown})" if groups else "")
        why = (f"{who} is not on the break-glass list of policy {policy.name!r}; "
               f"remove the {BREAK_GLASS_ANNOTATION} annotation or ask its owner "
               f"({policy.owner})")
    audit = json.dumps({**record, "allowed": False, "groups": [g[:64] for g in groups[:16]]},
                       sort_keys=True)
    return BreakGlass(allowed=False, reason=reason, user=user, via="", policy=policy.name,
                      message=f"break-glass refused: {why}", audit={"break-glass": audit})


def trail(policy: Policy, content_spec: ContentSpec | None, digest: str,
          verdict: Verdict) -> dict:
    """The fields every decision log line carries, so a decision traces back to the exact
    policy file, content and image it was made from."""
    return {**content_trail(policy, content_spec), **verdict_trail(digest, verdict)}


def content_trail(policy: Policy, content_spec: ContentSpec | None) -> dict:
    """The policy and content half of the trail: the same for every image a policy judged."""
    cs = content_spec
    return {
        "policy": policy.name, "policy_file": policy.path, "policy_sha256": policy.sha256,
        "content": os.path.basename(cs.datastream) if cs else os.path.basename(policy.datastream),
        "content_sha256": cs.datastream_sha256 if cs else "",
        "profile": cs.profile if cs else policy.profile,
        "tailoring_sha256": cs.tailoring_sha256 if cs else "",
        "oval_sha256": list(cs.oval_sha256) if cs else [],
        "enforcement": policy.enforcement,
    }


def verdict_trail(digest: str, verdict: Verdict) -> dict:
    """The image half of the trail."""
    return {
        "digest": digest, "state": verdict.state, "allowed": verdict.allowed,
        "denied_by": [r.id for r in verdict.reasons],
        "waivers": [{"id": r.id, "waiver": w.rule, "ticket": w.ticket, "owner": w.owner,
                     "expires": w.expires.isoformat()} for r, w in verdict.waived],
    }


# -- several policies -----------------------------------------------------------------------

@dataclass(frozen=True)
class PolicySet:
    """All loaded policies. Precedence: among policies whose match selects the namespace (and
    image), the highest priority wins, ties broken by name; a namespace no policy matches gets
    the policy marked `default: true`, or none (allowed without a scan) when there is none."""

    policies: tuple[Policy, ...]
    source: str = ""
    _chosen: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def select(self, namespace: str, image: str = "") -> Policy | None:
        """The policy for an image in a namespace (remembered: the set never changes; a reload
        builds a new set)."""
        key = (namespace, image)
        try:
            return self._chosen[key]
        except (KeyError, TypeError):
            pass
        chosen = self._select(namespace, image)
        if isinstance(namespace, str) and isinstance(image, str):
            if len(self._chosen) >= SELECT_MEMO:
                self._chosen.clear()
            self._chosen[key] = chosen
        return chosen

    def _select(self, namespace: str, image: str) -> Policy | None:
        matching = [p for p in self.policies if not p.default and p.matches_namespace(namespace)
                    and (not image or p.matches_image(image))]
        if matching:
            return sorted(matching, key=lambda p: (-p.priority, p.name))[0]
        for p in sorted(self.policies, key=lambda p: (-p.priority, p.name)):
            if p.default and p.matches_namespace(namespace) and (not image or p.matches_image(image)):
                return p
        return None


def policy_files(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(os.path.join(path, f) for f in os.listdir(path)
                      if f.endswith((".yaml", ".yml")) and not f.startswith("."))
    return [path]


def load_set(path: str) -> PolicySet:
    """Load a file or every *.yaml in a directory; any invalid file fails the whole set, so a
    half-valid change never replaces policies in force."""
    files = policy_files(path)
    if not files:
        raise PolicyError(f"{path}: no policy files")
    pols = tuple(load(f) for f in files)
    names = [p.name for p in pols]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise PolicyError(f"{path}: duplicate policy names: {', '.join(dups)}")
    return PolicySet(pols, source=path)
