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
from dataclasses import dataclass, field

import jsonschema
import yaml

from . import content as content_mod
from .results import ContentSpec, ScanResult, severity_rank

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "policies", "schema", "imagepolicy.schema.json")
DEFAULTS = {
    "denySeverity": "medium", "enforcement": "enforce", "pending": "deny", "error": "deny",
    "stale": "decide", "maxScanAge": "7d", "waiverWarningDays": 14,
}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class PolicyError(Exception):
    """A policy file is invalid; the previous policies stay in force."""


@dataclass(frozen=True)
class Waiver:
    rule: str
    reason: str
    owner: str
    ticket: str
    expires: dt.date
    images: tuple[str, ...] = ("*",)
    namespaces: tuple[str, ...] = ("*",)

    def applies(self, rule_id: str, image: str, namespace: str, today: dt.date) -> bool:
        """An expired waiver stops applying by itself (it is valid through its expiry date)."""
        return (today <= self.expires and _rule_matches(self.rule, rule_id)
                and matches_any(image, self.images) and matches_any(namespace, self.namespaces))


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
    """A waiver may name the full XCCDF id or its short form (after 'content_rule_')."""
    short = rule_id.rsplit("content_rule_", 1)[-1]
    return pattern in (rule_id, short)


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
        doc = yaml.safe_load(raw)
    except (OSError, yaml.YAMLError) as e:
        raise PolicyError(f"{path}: cannot read policy: {e}") from e
    return from_document(doc, path=path, sha256=hashlib.sha256(raw).hexdigest())


def from_document(doc, *, path: str = "<inline>", sha256: str = "") -> Policy:
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(doc),
                    key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "(top)"
        raise PolicyError(f"{path}: {where}: {e.message}")
    meta, spec = doc["metadata"], doc["spec"]
    base = os.path.dirname(os.path.abspath(path)) if path != "<inline>" else None
    c, r = spec["content"], spec.get("rules", {})
    m, a = spec.get("match", {}), spec.get("actions", {})
    bg = spec.get("breakGlass", {})
    try:
        waivers = tuple(Waiver(rule=w["rule"], reason=w["reason"], owner=w["owner"],
                               ticket=w["ticket"], expires=dt.date.fromisoformat(w["expires"]),
                               images=tuple(w.get("images", ["*"])),
                               namespaces=tuple(w.get("namespaces", ["*"])))
                        for w in spec.get("waivers", []))
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


def evaluate(result: ScanResult, policy: Policy, *, image: str, namespace: str,
             today: dt.date) -> Verdict:
    """Apply thresholds and waivers to a finished scan."""
    if result.state == "error":
        return on_state("error", policy, detail=result.error)
    threshold = severity_rank(policy.deny_severity) if policy.deny_severity != "none" else 99
    reasons, waived = [], []
    for r in result.failed():
        if r.id in policy.never_enforce or _short(r.id) in policy.never_enforce:
            continue
        enforced = (severity_rank(r.severity) >= threshold or r.id in policy.always_enforce
                    or _short(r.id) in policy.always_enforce)
        if enforced:
            reasons.append(Reason(_short(r.id), r.severity, r.title))
    if policy.deny_oval_true:
        for o in result.oval:
            if o.result == "true" and o.klass in ("vulnerability", "patch", ""):
                refs = ", ".join(o.references[:3])
                reasons.append(Reason(o.id, "high", f"{o.title} {refs}".strip(), kind="oval"))
    kept = []
    for reason in reasons:
        w = next((w for w in policy.waivers
                  if w.applies(reason.id, image, namespace, today)), None)
        (waived.append((reason, w)) if w else kept.append(reason))
    if policy.min_score is not None and result.score is not None and result.score < policy.min_score:
        kept.append(Reason("score", "medium",
                           f"score {result.score:.1f} is below the minimum {policy.min_score:g}",
                           kind="score"))
    warnings = [f"waiver for {r.id} ({w.ticket}) expires {w.expires.isoformat()}"
                for r, w in waived if (w.expires - today).days <= policy.waiver_warning_days]
    state = "fail" if kept else "pass"
    allowed = state == "pass" or policy.enforcement != "enforce"
    return Verdict(state=state, allowed=allowed, reasons=kept, waived=waived, warnings=warnings)


def on_state(state: str, policy: Policy, *, detail: str) -> Verdict:
    """The policy's named action for a pending or error state (deny, allow or warn)."""
    action = policy.on_pending if state == "pending" else policy.on_error
    allowed = action in ("allow", "warn") or policy.enforcement != "enforce"
    return Verdict(state=state, allowed=allowed, detail=detail)


# -- several policies -----------------------------------------------------------------------

@dataclass(frozen=True)
class PolicySet:
    """All loaded policies. Precedence: among policies whose match selects the namespace (and
    image), the highest priority wins, ties broken by name; a namespace no policy matches gets
    the policy marked `default: true`, or none (allowed without a scan) when there is none."""

    policies: tuple[Policy, ...]
    source: str = ""

    def select(self, namespace: str, image: str = "") -> Policy | None:
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
