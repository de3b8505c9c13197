"""Plain data that flows between stages: scan keys, scan results, verdicts.

Kept free of I/O so every stage (pipeline, store, policy, admission) can share it and tests can
build values by hand. Everything round-trips through JSON for the shared store.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any

# Result values of XCCDF rule-result/result that count as a verdict about the image.
PASS_RESULTS = frozenset({"pass", "fixed"})
FAIL_RESULTS = frozenset({"fail"})
SEVERITY_ORDER = {"unknown": 0, "info": 1, "low": 2, "medium": 3, "high": 4}


def severity_rank(severity: str) -> int:
    """Order severities so thresholds compare; anything unexpected ranks as unknown."""
    return SEVERITY_ORDER.get((severity or "unknown").lower(), 0)


@dataclass(frozen=True)
class ContentSpec:
    """What is evaluated: datastream, profile, optional tailoring and OVAL feeds (by sha256)."""

    datastream: str
    datastream_sha256: str
    profile: str
    tailoring: str | None = None
    tailoring_sha256: str = ""
    oval: tuple[str, ...] = ()
    oval_sha256: tuple[str, ...] = ()


ANY_PRODUCT = "*"     # a ContentSet entry for whatever product the image is (legacy policies)


@dataclass(frozen=True)
class ContentSet:
    """The content a policy judges images with, per SSG product (debian12, rhel9, …): the scan
    identifies the image and evaluates the entry for its product. An image whose product has
    no entry is "unsupported", never judged with another distribution's content. Entries are
    sorted, so equal sets hash alike."""

    entries: tuple[tuple[str, ContentSpec], ...]

    @classmethod
    def of(cls, mapping: dict[str, ContentSpec]) -> "ContentSet":
        return cls(tuple(sorted(mapping.items())))

    def for_product(self, product: str) -> ContentSpec | None:
        """The entry for this product, else the any-product entry; None for an image no
        product was identified for."""
        if not product:
            return None
        d = dict(self.entries)
        return d.get(product) or d.get(ANY_PRODUCT)

    def products(self) -> list[str]:
        return [name for name, _ in self.entries]

    @functools.cached_property
    def digest(self) -> str:
        return self.sha256()

    def __hash__(self) -> int:           # a key of per-process memos: hashed once per object
        return hash(self.digest)

    def sha256(self) -> str:
        """One digest of every entry's product, datastream, profile, tailoring and OVAL files:
        the content part of the scan key."""
        raw = "\n".join(f"{n}|{s.datastream_sha256}|{s.profile}|{s.tailoring_sha256}|"
                        f"{','.join(s.oval_sha256)}" for n, s in self.entries)
        return hashlib.sha256(raw.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ScanKey:
    """Identity of a scan: a platform manifest digest plus everything that changes the result.

    Never a tag: tags move. Policy thresholds and waivers are *not* in the key, so changing
    them needs no rescan.
    """

    digest: str
    content_sha256: str
    profile: str
    tailoring_sha256: str
    scanner_version: str
    oval_sha256: str = ""

    def id(self) -> str:
        """A stable, compact string for stores and logs. Not remembered: an LRU of ids held
        ~40 MB for 100,000 L1 entries; joining the fields (not dataclasses.astuple, which
        deep-copies) and one sha256 cost ~1.5 µs."""
        raw = "|".join((self.digest, self.content_sha256, self.profile, self.tailoring_sha256,
                        self.scanner_version, self.oval_sha256))
        return hashlib.sha256(raw.encode()).hexdigest()


CVE_KEY_VERSION = "cve-1"     # bump when the slicing or the rewrites change what is found


def cve_key(digest: str, product: str, feed_sha256: str, scanner_version: str) -> ScanKey:
    """The key of an image's CVE evaluation against one feed (feed_sha256 "latest": the
    newest evaluation of any feed, which decides until the current feed's is ready)."""
    return ScanKey(digest=digest, content_sha256=feed_sha256, profile=f"cves:{product}",
                   tailoring_sha256=CVE_KEY_VERSION, scanner_version=scanner_version)


@dataclass(frozen=True, slots=True)
class RuleResult:
    id: str
    title: str
    severity: str
    result: str


@dataclass(frozen=True, slots=True)
class OvalResult:
    id: str
    title: str
    klass: str
    result: str
    references: tuple[str, ...] = ()


CVE_SEVERITY_ORDER = {"unknown": 0, "negligible": 1, "low": 2, "medium": 3, "high": 4,
                      "critical": 5}


def cve_severity_rank(severity: str) -> int:
    return CVE_SEVERITY_ORDER.get((severity or "unknown").lower(), 0)


@dataclass(frozen=True, slots=True)
class CveFinding:
    """One vulnerable package of one feed definition.

    id is the CVE (Debian and Ubuntu CVE feeds) or the advisory (RHSA, USN); package the name
    the feed tests (Debian: the source package) and binary the installed package when it has
    another name; installed and fixed are versions without a 0: epoch (fixed "" when no fix is
    released); severity as the feed states it, in scapgate's words (critical, high, medium,
    low, negligible, unknown)."""

    id: str
    package: str
    installed: str
    fixed: str
    severity: str
    title: str
    definition: str = ""
    binary: str = ""
    cves: tuple[str, ...] = ()

    def line(self) -> str:
        """`CVE-2024-3094 critical xz-utils 5.6.0-0.2 → 5.6.1+really5.4.5-1`."""
        pkg = f"{self.package} ({self.binary})" if self.binary else self.package
        return (f"{self.id} {self.severity} {pkg} {self.installed} → "
                f"{self.fixed or 'no fix yet'}")

    def to_dict(self) -> dict:
        return {"id": self.id, "package": self.package, "installed": self.installed,
                "fixed": self.fixed, "severity": self.severity, "title": self.title,
                "binary": self.binary, "cves": list(self.cves), "definition": self.definition}


def worst_first(findings) -> list[CveFinding]:
    return sorted(findings, key=lambda f: (-cve_severity_rank(f.severity), not f.fixed,
                                           f.id, f.package))


@dataclass(slots=True)
class ScanResult:
    """Everything a verdict needs, computed once per ScanKey and kept in the store.

    state is "done" (rules evaluated), "error" (the scan itself failed: error says why,
    permanent says whether a retry could help) or "unsupported" (no SCAP content exists for the
    image's distribution, or the policy names none for it: error says what was found).
    product is the SSG product the image was identified as ("" when none), identity what the
    identification read, profile the profile evaluated.
    """

    key: ScanKey
    image: str
    state: str = "done"
    rules: list[RuleResult] = field(default_factory=list)
    oval: list[OvalResult] = field(default_factory=list)
    os_release: dict[str, str] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    scanned_at: float = 0.0
    error: str = ""
    permanent: bool = False
    score: float | None = None
    arf_path: str = ""
    product: str = ""
    identity: dict = field(default_factory=dict)
    profile: str = ""
    cves: list[CveFinding] = field(default_factory=list)
    feed: dict = field(default_factory=dict)   # the CVE feed evaluated: product, sha256,
                                               # source, as_of, definitions, unevaluated, note
    unpack: dict = field(default_factory=dict)  # mode (partial/full), entries, bytes, written,
                                                # written_bytes, reason (why full)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rules:
            out[r.result] = out.get(r.result, 0) + 1
        return out

    def failed(self) -> list[RuleResult]:
        """Failing rules, worst first, then by id for stable messages."""
        bad = [r for r in self.rules if r.result in FAIL_RESULTS]
        return sorted(bad, key=lambda r: (-severity_rank(r.severity), r.id))

    def slim(self) -> "ScanResult":
        """What admission needs of a result, for the per-process cache: the failing rules and
        true OVAL definitions (the rest is in the store), with shared strings interned. Keeps
        100,000 cached results within a worker's memory budget."""
        k = self.key
        return ScanResult(
            key=ScanKey(k.digest, _i(k.content_sha256), _i(k.profile), _i(k.tailoring_sha256),
                        _i(k.scanner_version), _i(k.oval_sha256)),
            image=self.image, state=self.state,
            rules=[RuleResult(_i(r.id), _i(r.title), _i(r.severity), _i(r.result))
                   for r in self.rules if r.result in FAIL_RESULTS],
            oval=[o for o in self.oval if o.result == "true"],
            os_release=_shared({n: v for n, v in self.os_release.items() if n in _OS_KEEP}),
            tools=_shared(self.tools),
            timings={"total": round(sum(self.timings.values()), 3)} if self.timings else {},
            scanned_at=self.scanned_at, error=self.error, permanent=self.permanent,
            score=self.score, arf_path=self.arf_path, product=_i(self.product),
            identity=_shared({n: v for n, v in self.identity.items() if n in _ID_KEEP}),
            profile=_i(self.profile), cves=self.cves, feed=self.feed,
            unpack=_shared({"mode": self.unpack["mode"]} if "mode" in self.unpack else {}))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "ScanResult":
        d: dict[str, Any] = json.loads(text)
        d["key"] = ScanKey(**d["key"])
        d["rules"] = [RuleResult(**r) for r in d.get("rules", [])]
        d["oval"] = [OvalResult(**{**o, "references": tuple(o.get("references", ()))})
                     for o in d.get("oval", [])]
        d["cves"] = [CveFinding(**{**c, "cves": tuple(c.get("cves", ()))})
                     for c in d.get("cves", [])]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})   # a newer worker's fields


_OS_KEEP = frozenset({"ID", "VERSION_ID"})
_ID_KEEP = frozenset({"distro", "version", "pretty"})
_SHARED: dict = {}


def _shared(d: dict) -> dict:
    """One dict object for equal small dicts (os-release, tool versions) across results.
    Callers treat results as read-only."""
    if len(_SHARED) > 1024:
        _SHARED.clear()
    return _SHARED.setdefault(tuple(sorted(d.items())), d)


def _i(text: str) -> str:
    return sys.intern(text) if isinstance(text, str) else text


def error_result(key: ScanKey, image: str, message: str, *, permanent: bool, now: float) -> ScanResult:
    """A failed scan is stored as a value so waiting admissions learn why, at once."""
    return ScanResult(key=key, image=image, state="error", error=message,
                      permanent=permanent, scanned_at=now)


def unsupported_result(key: ScanKey, image: str, message: str, *, product: str,
                       identity: dict, now: float) -> ScanResult:
    """No content judges this image: final (the image's bytes never change), with what was
    found, so the policy's `unsupported` action decides and the developer reads why."""
    return ScanResult(key=key, image=image, state="unsupported", error=message, permanent=True,
                      scanned_at=now, product=product, identity=identity)
