"""Policies: what is enforced, where, with which exceptions — loaded, validated and selected.

A policy file is YAML checked against policies/schema/imagepolicy.schema.json; a PolicySet holds
every file in force and picks the one that applies to an image in a namespace. The verdict for
an image is computed from this model in verdict.py.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field

import jsonschema

from ..config import REPO
from ..scan import content as content_mod
from ..scan.identify import FAMILIES
from ..scan.results import ANY_PRODUCT, ContentSet
from .file import PolicyError, dates_to_text, line_of, read_document

SELECT_MEMO = 4096        # (namespace, image) → policy answers a PolicySet keeps
PRODUCTS = tuple(p for members in FAMILIES.values() for p in members)   # SSG products judged
CONTENT_RECHECK_S = 1.0   # a changed or removed content file is seen within this
_CONTENT: dict[int, tuple] = {}       # id(policy) → (policy, expires, ContentSet)

SCHEMA_PATH = os.path.join(REPO, "policies", "schema", "imagepolicy.schema.json")
DEFAULTS = {
    "denySeverity": "medium", "enforcement": "enforce", "pending": "deny", "error": "deny",
    "unsupported": "deny", "stale": "decide", "maxScanAge": "7d", "waiverWarningDays": 14,
    "cveDenySeverity": "high", "fixedOnly": True, "maxFeedAge": "2d", "staleFeed": "warn",
}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
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
    package: str = ""             # every CVE of this package (with rule: that CVE of it)

    @property
    def kind(self) -> str:
        """rule (XCCDF rule id, full or short), oval (definition id), ref (CVE/DSA/… id) or
        package (every CVE of a package)."""
        if not self.rule:
            return "package"
        if _OVAL_ID.match(self.rule):
            return "oval"
        return "rule" if _XCCDF_RULE.match(self.rule) else "ref"

    def covers(self, rule_id: str, image: str, namespace: str, refs=(), packages=()) -> bool:
        """Whether the waiver names this finding here, whatever its expiry. A package waiver
        covers the CVEs of that package (the feed's name or the installed binary's)."""
        if self.package and self.package not in packages:
            return False
        named = (not self.rule and bool(self.package)) or (
            bool(self.rule) and (_rule_matches(self.rule, rule_id) or self.rule in refs))
        return named and matches_any(image, self.images) and matches_any(namespace,
                                                                          self.namespaces)

    def applies(self, rule_id: str, image: str, namespace: str, today: dt.date,
                refs=(), packages=()) -> bool:
        """An expired waiver stops applying by itself (it is valid through its expiry date)."""
        return today <= self.expires and self.covers(rule_id, image, namespace, refs, packages)

    @property
    def names(self) -> str:
        """What the waiver is for, as messages say it: the rule, the package, or both."""
        if self.package and self.rule:
            return f"{self.rule} in {self.package}"
        return self.rule or f"every CVE of {self.package}"

    def days_left(self, today: dt.date) -> int:
        return (self.expires - today).days


@dataclass(frozen=True)
class ProductContent:
    """spec.content.products.<key>: the profile (and optional datastream and tailoring) that
    judge one SSG product (debian12) or every product of a family (debian)."""

    key: str
    profile: str
    datastream: str = ""          # "" → the installed ssg-<product>-ds.xml
    tailoring: str | None = None
    line: int = 0


@dataclass(frozen=True)
class CvePolicy:
    """spec.cves: which CVEs of the image's distribution feed deny."""

    deny_severity: str = "high"      # critical high medium low negligible unknown none
    fixed_only: bool = True
    max_feed_age_s: int = 2 * 86400
    on_stale_feed: str = "warn"      # deny | allow | warn


@dataclass(frozen=True)
class Policy:
    name: str
    owner: str
    description: str
    path: str
    sha256: str
    datastream: str               # "" when the policy names content per product only
    profile: str
    tailoring: str | None = None
    oval: tuple[str, ...] = ()
    products: tuple[ProductContent, ...] = ()
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
    on_unsupported: str = "deny"
    on_stale: str = "decide"
    max_scan_age_s: int = 7 * 86400
    waiver_warning_days: int = 14
    waivers: tuple[Waiver, ...] = ()
    break_glass_users: frozenset[str] = frozenset()
    break_glass_groups: frozenset[str] = frozenset()
    cves: CvePolicy | None = None     # None: CVEs are not judged

    def content(self) -> ContentSet:
        """The content for every product this policy judges, with hashes (raises
        content.ContentError when a file it names is missing). A family judges those of its
        products whose datastream is installed; a product named on its own, or the top-level
        datastream, must exist. Remembered for CONTENT_RECHECK_S: looking at two dozen files
        costs ~0.7 ms, as much as the rest of an admission review."""
        now = time.monotonic()
        hit = _CONTENT.get(id(self))
        if hit is not None and hit[0] is self and now < hit[1]:
            return hit[2]
        found = self._content()
        if len(_CONTENT) >= 256:
            _CONTENT.clear()
        _CONTENT[id(self)] = (self, now + CONTENT_RECHECK_S, found)
        return found

    def _content(self) -> ContentSet:
        entries = {}
        if self.datastream:
            entries.update(content_mod.single(self.datastream, self.profile, self.tailoring,
                                              self.oval).entries)
        for pc in sorted(self.products, key=lambda pc: pc.key in PRODUCTS):  # families first
            for product in FAMILIES.get(pc.key, (pc.key,)):
                ds = pc.datastream or content_mod.datastream_for(product)
                if pc.key in FAMILIES and not pc.datastream and not os.path.exists(ds):
                    continue                    # not installed: that product is unsupported
                entries[product] = content_mod.spec(ds, pc.profile, pc.tailoring, self.oval)
        return ContentSet.of(entries)

    def content_products(self) -> dict[str, ProductContent | None]:
        """Product → the entry that judges it (None: the top-level datastream), for show and
        lint; the same precedence as content(), without touching the files."""
        out: dict[str, ProductContent | None] = {}
        if self.datastream:
            out[content_mod.product_of_datastream(self.datastream) or ANY_PRODUCT] = None
        for pc in sorted(self.products, key=lambda pc: pc.key in PRODUCTS):
            for product in FAMILIES.get(pc.key, (pc.key,)):
                out[product] = pc
        return out

    def matches_namespace(self, namespace: str) -> bool:
        return (matches_any(namespace, self.namespaces)
                and not matches_any(namespace, self.exclude_namespaces))

    def matches_image(self, image: str) -> bool:
        return matches_any(image, self.images) and not matches_any(image, self.exclude_images)


def matches_any(value: str, patterns) -> bool:
    """Glob match on the whole value: `kube-system` never matches `kube-system-evil`."""
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def short_rule_id(rule_id: str) -> str:
    """The rule id after 'content_rule_': what denials and waivers show."""
    return rule_id.rsplit("content_rule_", 1)[-1]


def _rule_matches(pattern: str, rule_id: str) -> bool:
    """A waiver may name the full XCCDF id or its short form (after 'content_rule_'); the id
    it is compared with may be either too (Reasons carry the short form)."""
    return pattern == rule_id or short_rule_id(pattern) == short_rule_id(rule_id)


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
        waivers = tuple(Waiver(rule=w.get("rule", ""), reason=w["reason"], owner=w["owner"],
                               ticket=w["ticket"], expires=dt.date.fromisoformat(w["expires"]),
                               images=tuple(w.get("images", ["*"])),
                               namespaces=tuple(w.get("namespaces", ["*"])),
                               approved_by=w.get("approvedBy", ""),
                               line=line_of(node, ["spec", "waivers", i]),
                               package=w.get("package", ""))
                        for i, w in enumerate(spec.get("waivers", [])))
    except ValueError as e:
        raise PolicyError(f"{path}: spec.waivers: invalid expiry date: {e}") from e
    products = []
    for key, pc in (c.get("products") or {}).items():
        if key not in PRODUCTS and key not in FAMILIES:
            line = line_of(node, ["spec", "content", "products", key])
            raise PolicyError(f"{path}{f':{line}' if line else ''}: spec.content.products: "
                              f"{key!r} is neither an SSG product ({', '.join(PRODUCTS)}) nor a "
                              f"family ({', '.join(FAMILIES)})", line=line)
        products.append(ProductContent(
            key=key, profile=content_mod.profile_id(pc["profile"]),
            datastream=content_mod.resolve_path(pc["datastream"], base)
            if pc.get("datastream") else "",
            tailoring=content_mod.resolve_path(pc["tailoring"], base)
            if pc.get("tailoring") else None,
            line=line_of(node, ["spec", "content", "products", key])))
    return Policy(
        name=meta["name"], owner=meta["owner"], description=meta["description"], path=path,
        sha256=sha256,
        datastream=content_mod.resolve_path(c["datastream"], base) if c.get("datastream") else "",
        profile=content_mod.profile_id(c["profile"]) if c.get("profile") else "",
        tailoring=content_mod.resolve_path(c["tailoring"], base) if c.get("tailoring") else None,
        oval=tuple(content_mod.resolve_path(o, base) for o in c.get("oval", [])),
        products=tuple(products),
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
        on_unsupported=a.get("unsupported", DEFAULTS["unsupported"]),
        on_stale=a.get("stale", DEFAULTS["stale"]),
        max_scan_age_s=parse_duration(spec.get("maxScanAge", DEFAULTS["maxScanAge"])),
        waiver_warning_days=spec.get("waiverWarningDays", DEFAULTS["waiverWarningDays"]),
        waivers=waivers,
        break_glass_users=frozenset(bg.get("users", [])),
        break_glass_groups=frozenset(bg.get("groups", [])),
        cves=_cves(spec["cves"]) if "cves" in spec else None)


def _cves(c: dict) -> CvePolicy:
    return CvePolicy(deny_severity=c.get("denySeverity", DEFAULTS["cveDenySeverity"]),
                     fixed_only=c.get("fixedOnly", DEFAULTS["fixedOnly"]),
                     max_feed_age_s=parse_duration(c.get("maxFeedAge", DEFAULTS["maxFeedAge"])),
                     on_stale_feed=c.get("staleFeed", DEFAULTS["staleFeed"]))

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
