"""What a policy's SCAP content actually checks: profiles, rule selection, tailoring, OVAL ids.

Lint, `policy show` and the reload check need to know which rules a profile (plus tailoring)
selects, which of those cannot be evaluated inside a container image, and which ids exist, so
that a typo in a waiver or a tailoring that silently selects nothing is caught before it is in
force. Parsed once per file version (path, size, mtime): the 10 MB datastream takes ~0.15 s.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache

from lxml import etree

XCCDF = "http://checklists.nist.gov/xccdf/1.2"
OVAL_DEF = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
XCCDF_XSD = "/usr/share/openscap/schemas/xccdf/1.2/xccdf_1.2.xsd"
_PARSER = etree.XMLParser(huge_tree=True, resolve_entities=False, no_network=True)
# CPE platforms that are false for a container image (DESIGN.md pitfalls 1 and 2): rules that
# carry them, on themselves or on an enclosing group, are `notapplicable` in every image scan.
_CONTAINER_FALSE = re.compile(r"system_with_kernel|machine|not_bootc_and_not_container")


class ContentProblem(Exception):
    """A content or tailoring file cannot be used; `line` points into the file when known."""

    def __init__(self, message: str, line: int = 0):
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class RuleInfo:
    id: str
    title: str
    severity: str
    platforms: tuple[str, ...]     # own and inherited from enclosing groups
    groups: tuple[str, ...]        # enclosing group ids, innermost first

    @property
    def short(self) -> str:
        return self.id.rsplit("content_rule_", 1)[-1]

    def container_blind(self) -> bool:
        """True when the rule is notapplicable in a container image (kernel, machine-only)."""
        return any(_CONTAINER_FALSE.search(p) for p in self.platforms)


@dataclass(frozen=True)
class ProfileInfo:
    id: str
    title: str
    extends: str | None
    selects: tuple[tuple[str, bool, int], ...]    # (idref, selected, source line)
    values: tuple[tuple[str, int], ...] = ()        # refine-value / set-value idrefs, line
    line: int = 0                                   # of the Profile element


@dataclass
class Benchmark:
    """The XCCDF benchmark inside a datastream, reduced to what policy checks need."""

    rules: dict[str, RuleInfo] = field(default_factory=dict)
    groups: dict[str, bool] = field(default_factory=dict)       # id -> selected by default
    values: frozenset[str] = frozenset()
    profiles: dict[str, ProfileInfo] = field(default_factory=dict)
    by_short: dict[str, RuleInfo] = field(default_factory=dict)

    def rule(self, rule_id: str) -> RuleInfo | None:
        """Look a rule up by full id or short name (`package_telnetd_removed`)."""
        return self.rules.get(rule_id) or self.by_short.get(rule_id)


@dataclass(frozen=True)
class Tailoring:
    profiles: dict[str, ProfileInfo]
    benchmark_href: str = ""


def _stat_key(path: str) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise ContentProblem(f"{path}: {e.strerror}") from e
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def benchmark(path: str) -> Benchmark:
    """Parse the XCCDF benchmark of a datastream (or plain XCCDF file); cached per version."""
    return _benchmark_cached(*_stat_key(path))


@lru_cache(maxsize=8)
def _benchmark_cached(path: str, size: int, mtime_ns: int) -> Benchmark:
    try:
        tree = etree.parse(path, _PARSER)
    except etree.XMLSyntaxError as e:
        raise ContentProblem(f"{path} is not XML: {e}", getattr(e, "lineno", 0) or 0) from e
    bench = tree.find(f".//{{{XCCDF}}}Benchmark")
    if bench is None:
        raise ContentProblem(f"{path} contains no XCCDF 1.2 benchmark")
    out = Benchmark()
    _walk(bench, (), (), out)
    out.by_short = {r.short: r for r in out.rules.values()}
    out.values = frozenset(v.get("id") for v in bench.iter(f"{{{XCCDF}}}Value"))
    for p in bench.iterfind(f"{{{XCCDF}}}Profile"):
        out.profiles[p.get("id")] = _profile(p)
    return out


def _walk(node, groups: tuple[str, ...], platforms: tuple[str, ...], out: Benchmark) -> None:
    for child in node:
        tag = etree.QName(child).localname if isinstance(child.tag, str) else ""
        if tag not in ("Group", "Rule"):
            continue
        own = tuple(p.get("idref", "") for p in child.iterfind(f"{{{XCCDF}}}platform"))
        if tag == "Group":
            out.groups[child.get("id")] = child.get("selected", "true") == "true"
            _walk(child, (child.get("id"),) + groups, platforms + own, out)
        else:
            title = child.find(f"{{{XCCDF}}}title")
            out.rules[child.get("id")] = RuleInfo(
                id=child.get("id"), severity=child.get("severity", "unknown"),
                title=" ".join((title.text or "").split()) if title is not None else "",
                platforms=own + platforms, groups=groups)


def _profile(p) -> ProfileInfo:
    title = p.find(f"{{{XCCDF}}}title")
    selects = tuple((s.get("idref", ""), s.get("selected") == "true", s.sourceline or 0)
                    for s in p.iterfind(f"{{{XCCDF}}}select"))
    values = tuple((v.get("idref", ""), v.sourceline or 0) for v in p
                   if isinstance(v.tag, str) and etree.QName(v).localname
                   in ("refine-value", "set-value", "set-complex-value"))
    return ProfileInfo(id=p.get("id", ""), extends=p.get("extends"), selects=selects,
                       values=values, line=p.sourceline or 0,
                       title=" ".join((title.text or "").split()) if title is not None else "")


def tailoring(path: str) -> Tailoring:
    """Parse and schema-check an XCCDF 1.2 tailoring file; raises ContentProblem with a line."""
    return _tailoring_cached(*_stat_key(path))


@lru_cache(maxsize=32)
def _tailoring_cached(path: str, size: int, mtime_ns: int) -> Tailoring:
    try:
        tree = etree.parse(path, _PARSER)
    except etree.XMLSyntaxError as e:
        raise ContentProblem(f"tailoring {os.path.basename(path)} is not XML: {e.msg}",
                             e.lineno or 0) from e
    root = tree.getroot()
    if root.tag != f"{{{XCCDF}}}Tailoring":
        raise ContentProblem(f"tailoring {os.path.basename(path)}: root element is "
                             f"{etree.QName(root).localname}, not an XCCDF 1.2 Tailoring",
                             root.sourceline or 0)
    schema = _xccdf_schema()
    if schema is not None and not schema.validate(tree):
        err = schema.error_log.last_error
        raise ContentProblem(f"tailoring {os.path.basename(path)} is not valid XCCDF 1.2: "
                             f"{err.message}", err.line)
    profiles = {p.get("id"): _profile(p) for p in root.iterfind(f"{{{XCCDF}}}Profile")}
    if not profiles:
        raise ContentProblem(f"tailoring {os.path.basename(path)} defines no Profile",
                             root.sourceline or 0)
    href = root.find(f"{{{XCCDF}}}benchmark")
    return Tailoring(profiles=profiles, benchmark_href=href.get("href", "") if href is not None else "")


@lru_cache(maxsize=1)
def _xccdf_schema():
    """oscap's own XCCDF 1.2 schema (validates offline); None when openscap is not installed."""
    if not os.path.exists(XCCDF_XSD):
        return None
    return etree.XMLSchema(etree.parse(XCCDF_XSD, _PARSER))


def profile_chain(bench: Benchmark, profile_id: str,
                  tailored: Tailoring | None = None) -> list[ProfileInfo]:
    """The profile and the profiles it extends, base first. Raises ContentProblem on a missing
    profile or a loop."""
    chain, seen, pid = [], set(), profile_id
    while pid:
        if pid in seen:
            raise ContentProblem(f"profile {pid} extends itself")
        seen.add(pid)
        prof = (tailored.profiles.get(pid) if tailored else None) or bench.profiles.get(pid)
        if prof is None:
            raise ContentProblem(f"profile {pid} is in neither the datastream nor the tailoring")
        chain.append(prof)
        pid = prof.extends
    return chain[::-1]


def selected_rules(bench: Benchmark, profile_id: str,
                   tailored: Tailoring | None = None) -> list[RuleInfo]:
    """Rules the profile evaluates: selected themselves, and every enclosing group selected
    (XCCDF: a rule in a deselected group is not evaluated, whatever its own select says)."""
    state = dict(bench.groups)
    state.update({rid: False for rid in bench.rules})   # SSG rules are selected="false"
    for prof in profile_chain(bench, profile_id, tailored):
        for idref, selected, _line in prof.selects:
            state[idref] = selected
    return [r for rid, r in bench.rules.items()
            if state.get(rid) and all(state.get(g, True) for g in r.groups)]


def ineffective_selects(bench: Benchmark, profile_id: str, tailored: Tailoring) -> list[tuple[str, int]]:
    """Rules a tailoring selects that are still not evaluated because a group enclosing them is
    deselected (the standard profile deselects 94 groups): (rule id, line in the tailoring)."""
    active = {r.id for r in selected_rules(bench, profile_id, tailored)}
    prof = tailored.profiles.get(profile_id)
    if prof is None:
        return []
    return [(idref, line) for idref, sel, line in prof.selects
            if sel and idref in bench.rules and idref not in active]


@dataclass(frozen=True)
class OvalIds:
    definitions: frozenset[str]
    references: frozenset[str]      # CVE / DSA / DLA ids named by the definitions


def oval_ids(path: str) -> OvalIds:
    """Definition ids and reference ids (CVE-…) in an OVAL definitions file (for waiver lint)."""
    return _oval_cached(*_stat_key(path))


@lru_cache(maxsize=8)
def _oval_cached(path: str, size: int, mtime_ns: int) -> OvalIds:
    defs, refs = set(), set()
    try:
        for _, el in etree.iterparse(path, events=("end",), tag=f"{{{OVAL_DEF}}}definition",
                                     huge_tree=True, resolve_entities=False, no_network=True):
            defs.add(el.get("id"))
            refs.update(r.get("ref_id", "") for r in el.iter(f"{{{OVAL_DEF}}}reference"))
            el.clear()
    except etree.XMLSyntaxError as e:
        raise ContentProblem(f"OVAL file {os.path.basename(path)} is not XML: {e.msg}",
                             e.lineno or 0) from e
    return OvalIds(frozenset(defs), frozenset(refs))
