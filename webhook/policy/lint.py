"""`scapgate policy lint`: what the schema cannot see, with `file:line` for every finding.

Errors make the command exit non-zero (CI refuses the change); warnings are printed and do not.
The loader and the reload watcher share the *blocking* subset: a policy set whose content is
missing or whose profile does not exist is never put in force.
"""
from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import os
import re
from dataclasses import dataclass

from .. import policy as P
from ..scan import content as content_mod
from ..scan.identify import FAMILIES
from . import profiles as pc
from .file import dates_to_text, line_of, read_document
from .patterns import GLOB as _GLOB
from .patterns import image_pattern_problem, namespace_pattern_problem

# Findings that make a policy set unusable: the reload watcher refuses such a change.
BLOCKING = frozenset({"yaml", "schema", "content-missing", "profile-missing",
                      "tailoring-invalid", "tailoring-extends", "duplicate-name"})
BROAD_GROUPS = {"system:authenticated", "system:unauthenticated", "system:serviceaccounts"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    level: str          # error | warning
    code: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.level}: {self.message} [{self.code}]"


@dataclass
class Linted:
    """One file: the policy when it loaded, and its YAML node tree (for lines)."""

    path: str
    policy: P.Policy | None
    node: object
    findings: list[Finding]


# -- discovery ------------------------------------------------------------------------------

def discover(paths: list[str]) -> list[tuple[str, list[str]]]:
    """(set directory, files) pairs: a directory and each of its subdirectories is one set, as
    `load_set` would load it (only *.yaml directly inside); files named on the command line
    form their own set. Hidden entries (a ConfigMap's `..data`) are skipped: the top-level
    links already point into them."""
    sets, loose = [], []
    for path in paths:
        if not os.path.isdir(path):
            loose.append(path)
            continue
        for root, dirs, _files in os.walk(path, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files = P.policy_files(root)
            if files:
                sets.append((root, files))
    if loose:
        sets.append(("", loose))
    return sets


def lint_paths(paths: list[str], *, today: dt.date) -> list[Finding]:
    """Every finding for these files and directories, in file then line order."""
    findings, linted = [], []
    tops = {os.path.normpath(p) for p in paths if os.path.isdir(p)}
    for set_dir, files in discover(paths):
        done = [lint_file(f, today=today) for f in files]
        linted += done
        findings += [f for one in done for f in one.findings]
        findings += check_set([d for d in done if d.policy], set_dir,
                              served=os.path.normpath(set_dir) in tops)
    if not linted:
        findings.append(Finding(" ".join(paths), 0, "error", "no-policies",
                                "no policy files (*.yaml) found"))
    findings += duplicate_names(linted)
    return sorted(set(findings), key=lambda f: (f.path, f.line, f.code, f.message))


# -- one file -------------------------------------------------------------------------------

def lint_file(path: str, *, today: dt.date) -> Linted:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        doc, node = read_document(raw, path)
    except OSError as e:
        return Linted(path, None, None, [Finding(path, 0, "error", "yaml", e.strerror or str(e))])
    except P.PolicyError as e:
        msg = str(e).split(": ", 1)[-1]
        return Linted(path, None, None, [Finding(path, e.line, "error", "yaml", msg)])
    errors = P.schema_errors(dates_to_text(doc))
    if errors:
        return Linted(path, None, node, [_schema_finding(path, node, e) for e in errors])
    try:
        pol = P.from_document(doc, path=path, sha256=hashlib.sha256(raw).hexdigest(), node=node)
    except P.PolicyError as e:
        return Linted(path, None, node, [Finding(path, e.line, "error", "schema",
                                                 str(e).split(": ", 1)[-1])])
    out = Linted(path, pol, node, [])
    bench = check_content(pol, node, out.findings)
    check_waivers(pol, node, bench, out.findings, today=today)
    check_patterns(pol, node, out.findings)
    check_break_glass(pol, node, out.findings)
    return out


def _schema_finding(path: str, node, e) -> Finding:
    where = list(e.absolute_path)
    if e.validator == "additionalProperties" and isinstance(e.instance, dict):
        allowed = set(e.schema.get("properties", {}))
        extra = [k for k in e.instance if k not in allowed]
        if extra:
            where = where + [extra[0]]
    dotted = ".".join(str(p) for p in e.absolute_path) or "(top)"
    return Finding(path, line_of(node, where), "error", "schema", f"{dotted}: {e.message}")


def _f(findings: list, pol: P.Policy, node, where: list, level: str, code: str, msg: str):
    findings.append(Finding(pol.path, line_of(node, where), level, code, msg))


def check_content(pol: P.Policy, node, findings: list[Finding]) -> pc.Benchmark | None:
    """Datastream readable, profile present (in it or in the tailoring), tailoring valid and
    extending this datastream's profiles, OVAL files readable; the same for every product
    and family under content.products. Returns the top-level datastream's benchmark."""
    where_c = ["spec", "content"]
    check_products(pol, node, findings)
    for i, oval in enumerate(pol.oval):
        try:
            pc.oval_ids(oval)
        except pc.ContentProblem as e:
            _f(findings, pol, node, where_c + ["oval", i], "error", "content-missing", str(e))
    if not pol.datastream:
        return None
    try:
        bench = pc.benchmark(pol.datastream)
    except pc.ContentProblem as e:
        _f(findings, pol, node, where_c + ["datastream"], "error", "content-missing",
           f"datastream {pol.datastream}: {e}")
        return None
    tailored = None
    if pol.tailoring:
        tailored = _check_tailoring(pol, node, bench, findings)
    known = dict(bench.profiles) | (tailored.profiles if tailored else {})
    if pol.profile not in known:
        in_ds = ", ".join(sorted(p.rsplit("_profile_", 1)[-1] for p in bench.profiles))
        _f(findings, pol, node, where_c + ["profile"], "error", "profile-missing",
           f"profile {pol.profile} is not in {os.path.basename(pol.datastream)}"
           f"{' or the tailoring' if pol.tailoring else ''} (it has: {in_ds})")
    return bench


def check_products(pol: P.Policy, node, findings: list[Finding]) -> None:
    """Each content.products entry: the datastream of a product named on its own exists; a
    family has at least one installed product (the others are reported: their images will be
    unsupported); the profile is in every datastream it judges (or in the tailoring)."""
    winner = pol.content_products()          # a product entry overrides its family's
    for entry in pol.products:
        where = ["spec", "content", "products", entry.key]
        members = tuple(p for p in FAMILIES.get(entry.key, (entry.key,)) if winner[p] is entry)
        installed = []
        for product in members:
            ds = entry.datastream or content_mod.datastream_for(product)
            if os.path.exists(ds):
                installed.append((product, ds))
            elif entry.key not in FAMILIES or entry.datastream:
                _f(findings, pol, node, where, "error", "content-missing",
                   f"{entry.key}: datastream {ds} is missing (scripts/install-content.sh)")
        missing = [p for p in members if p not in {x for x, _ in installed}]
        if entry.key in FAMILIES and members and not installed:
            _f(findings, pol, node, where, "error", "content-missing",
               f"{entry.key}: no datastream of this family is installed ({', '.join(members)})")
        elif entry.key in FAMILIES and missing:
            _f(findings, pol, node, where, "warning", "content-partial",
               f"{entry.key}: no content installed for {', '.join(missing)}: their images "
               "will be unsupported")
        tailored = None
        if entry.tailoring:
            try:
                tailored = pc.tailoring(entry.tailoring)
            except pc.ContentProblem as e:
                _f(findings, pol, node, where + ["tailoring"], "error", "tailoring-invalid",
                   f"{entry.key}: {e}")
        for product, ds in installed:
            try:
                known = set(content_mod.profiles(ds))
            except Exception as e:     # lxml or I/O: the datastream cannot be read
                _f(findings, pol, node, where, "error", "content-missing",
                   f"{product}: datastream {ds}: {e}")
                continue
            if tailored:
                known |= set(tailored.profiles)
            if entry.profile not in known:
                names = ", ".join(sorted(p.rsplit("_profile_", 1)[-1] for p in known))
                _f(findings, pol, node, where + ["profile"], "error", "profile-missing",
                   f"{product}: profile {entry.profile.rsplit('_profile_', 1)[-1]} is not in "
                   f"{os.path.basename(ds)} (it has: {names})")


def _check_tailoring(pol, node, bench, findings) -> pc.Tailoring | None:
    where = ["spec", "content", "tailoring"]
    try:
        tailored = pc.tailoring(pol.tailoring)
    except pc.ContentProblem as e:
        msg = f"{e}" if os.path.exists(pol.tailoring) else f"tailoring {pol.tailoring} is missing"
        _f(findings, pol, node, where, "error", "tailoring-invalid", msg)
        if e.line:
            findings.append(Finding(pol.tailoring, e.line, "error", "tailoring-invalid", str(e)))
        return None
    ds_name = os.path.basename(pol.datastream)
    if tailored.benchmark_href and os.path.basename(tailored.benchmark_href) != ds_name:
        findings.append(Finding(pol.tailoring, 1, "warning", "tailoring-extends",
                                f"written for {tailored.benchmark_href}, used with {ds_name}"))
    ids = set(bench.rules) | set(bench.groups)
    for prof in tailored.profiles.values():
        if not prof.extends:
            findings.append(Finding(pol.tailoring, prof.line, "warning", "tailoring-extends",
                                    f"profile {prof.id} extends no profile of {ds_name}: it "
                                    "evaluates only the rules it selects itself"))
        elif prof.extends not in bench.profiles and prof.extends not in tailored.profiles:
            findings.append(Finding(pol.tailoring, prof.line, "error", "tailoring-extends",
                                    f"profile {prof.id} extends {prof.extends}, which is not a "
                                    f"profile of {ds_name}"))
            continue
        for idref, _sel, line in prof.selects:
            if idref not in ids:
                findings.append(Finding(pol.tailoring, line, "error", "tailoring-invalid",
                                        f"selects {idref}, which is not a rule or group of {ds_name}"))
        for idref, line in prof.values:
            if idref not in bench.values:
                findings.append(Finding(pol.tailoring, line, "error", "tailoring-invalid",
                                        f"refines {idref}, which is not a value of {ds_name}"))
        try:
            for rid, line in pc.ineffective_selects(bench, prof.id, tailored):
                findings.append(Finding(
                    pol.tailoring, line, "warning", "tailoring-no-effect",
                    f"selects {rid.rsplit('_rule_', 1)[-1]} but a group containing it is "
                    "deselected, so it is never evaluated: select its groups too"))
        except pc.ContentProblem:
            pass
    return tailored


def check_waivers(pol: P.Policy, node, bench, findings, *, today: dt.date) -> None:
    """Waived ids exist in the content, expiry is in the future, the waiver can take effect."""
    selected = _selected_ids(pol, bench)
    ovals = [pc.oval_ids(o) for o in pol.oval if os.path.exists(o)]
    for key in ("alwaysEnforce", "neverEnforce"):
        ids = pol.always_enforce if key == "alwaysEnforce" else pol.never_enforce
        for rid in sorted(ids):
            if bench and not bench.rule(rid):
                _f(findings, pol, node, ["spec", "rules", key], "error", "rule-unknown",
                   f"rules.{key}: {rid} is not a rule of {os.path.basename(pol.datastream)}"
                   + _did_you_mean(rid, bench))
    for i, w in enumerate(pol.waivers):
        where = ["spec", "waivers", i]
        problem = _unknown_id(w, pol, bench, ovals)
        if problem:
            _f(findings, pol, node, where + ["rule"], "error", "rule-unknown", problem)
        elif w.kind == "rule" and bench and selected is not None:
            info = bench.rule(w.rule)
            if info.id not in selected:
                _f(findings, pol, node, where + ["rule"], "warning", "waiver-no-effect",
                   f"waiver for {w.names}: the profile does not evaluate this rule")
            elif info.container_blind():
                _f(findings, pol, node, where + ["rule"], "warning", "waiver-no-effect",
                   f"waiver for {w.names}: the rule is notapplicable in container images "
                   f"(platform {', '.join(info.platforms)})")
            elif not P.enforcement_of(info.id, info.severity, pol)[0]:
                _f(findings, pol, node, where + ["rule"], "warning", "waiver-no-effect",
                   f"waiver for {w.names}: the policy does not deny on it "
                   f"({P.enforcement_of(info.id, info.severity, pol)[1]})")
        left = w.days_left(today)
        if left < 0:
            _f(findings, pol, node, where + ["expires"], "error", "waiver-expired",
               f"waiver for {w.names} ({w.ticket}) expired on {w.expires} and no longer applies: "
               "remove it or renew it with a new approval")
        elif left <= pol.waiver_warning_days:
            _f(findings, pol, node, where + ["expires"], "warning", "waiver-expiring",
               f"waiver for {w.names} ({w.ticket}, owner {w.owner}) expires on {w.expires}, "
               f"in {left} days")


def _selected_ids(pol: P.Policy, bench) -> set[str] | None:
    if bench is None:
        return None
    try:
        tailored = pc.tailoring(pol.tailoring) if pol.tailoring else None
        return {r.id for r in pc.selected_rules(bench, pol.profile, tailored)}
    except pc.ContentProblem:
        return None


def _unknown_id(w: P.Waiver, pol: P.Policy, bench, ovals) -> str:
    name = os.path.basename(pol.datastream)
    if w.kind == "rule":
        if bench and not bench.rule(w.rule):
            return f"waiver for {w.names}: no such rule in {name}" + _did_you_mean(w.rule, bench)
        return ""
    if w.kind in ("ref", "package") and pol.cves is not None:
        return ""           # a CVE or advisory of the distribution's feed (checked at scan time)
    if w.kind == "package":
        return (f"waiver for {w.names}: a package waiver, but the policy judges no CVEs "
                "(spec.cves)")
    if not pol.oval:
        return (f"waiver for {w.names}: an OVAL {'definition' if w.kind == 'oval' else 'reference'}"
                " id, but the policy evaluates no OVAL files (content.oval)")
    found = any((w.rule in o.definitions) if w.kind == "oval" else (w.rule in o.references)
                for o in ovals)
    return "" if found else f"waiver for {w.names}: not found in the policy's OVAL files"


def _did_you_mean(rule_id: str, bench: pc.Benchmark) -> str:
    close = difflib.get_close_matches(rule_id.rsplit("content_rule_", 1)[-1],
                                      list(bench.by_short), n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


# -- patterns -------------------------------------------------------------------------------

def check_patterns(pol: P.Policy, node, findings) -> None:
    spots = [(["spec", "match", "namespaces"], pol.namespaces, namespace_pattern_problem),
             (["spec", "match", "excludeNamespaces"], pol.exclude_namespaces,
              namespace_pattern_problem),
             (["spec", "match", "images"], pol.images, image_pattern_problem),
             (["spec", "match", "excludeImages"], pol.exclude_images, image_pattern_problem)]
    for i, w in enumerate(pol.waivers):
        spots += [(["spec", "waivers", i, "namespaces"], w.namespaces, namespace_pattern_problem),
                  (["spec", "waivers", i, "images"], w.images, image_pattern_problem)]
    for where, patterns, check in spots:
        for j, pat in enumerate(patterns):
            problem = check(pat)
            if problem:
                _f(findings, pol, node, where + [j], "error", "pattern-never-matches",
                   f"{'.'.join(map(str, where[1:]))}: {pat!r} can never match: {problem}")
    literal = [n for n in pol.namespaces if not _GLOB.search(n)]
    if pol.namespaces and len(literal) == len(pol.namespaces) and all(
            P.matches_any(n, pol.exclude_namespaces) for n in literal):
        _f(findings, pol, node, ["spec", "match"], "error", "pattern-never-matches",
           "every namespace the policy names is also excluded: it never applies")


def check_break_glass(pol: P.Policy, node, findings) -> None:
    for key, names in (("users", pol.break_glass_users), ("groups", pol.break_glass_groups)):
        for name in sorted(names):
            if _GLOB.search(name):
                _f(findings, pol, node, ["spec", "breakGlass", key], "warning", "break-glass",
                   f"breakGlass.{key}: {name!r} is compared exactly; '*' is not a wildcard")
            if key == "groups" and name in BROAD_GROUPS:
                _f(findings, pol, node, ["spec", "breakGlass", key], "warning", "break-glass",
                   f"breakGlass.groups: {name} lets almost anyone bypass the gate")


# -- a set of policies ----------------------------------------------------------------------

def duplicate_names(linted: list[Linted]) -> list[Finding]:
    by_name: dict[str, list[Linted]] = {}
    for one in linted:
        if one.policy:
            by_name.setdefault(one.policy.name, []).append(one)
    out = []
    for name, ones in by_name.items():
        if len(ones) > 1:
            others = ", ".join(o.path for o in ones)
            out += [Finding(o.path, line_of(o.node, ["metadata", "name"]), "error",
                            "duplicate-name", f"policy name {name!r} is used by {others}")
                    for o in ones]
    return out


def check_set(linted: list[Linted], set_dir: str, *, served: bool = True) -> list[Finding]:
    """Precedence problems inside one directory (one PolicySet): ties, shadowing, and, for a
    directory a server would load (`served`), whether any policy is the default."""
    out = []
    pols = [(d.policy, d.node) for d in linted]
    ranked = sorted(pols, key=lambda pn: (pn[0].default, -pn[0].priority, pn[0].name))
    for i, (a, _an) in enumerate(ranked):
        for b, bn in ranked[i + 1:]:
            if a.default != b.default:
                continue
            if a.priority == b.priority and _may_overlap(a, b, "namespaces") and _may_overlap(
                    a, b, "images"):
                out.append(Finding(b.path, line_of(bn, ["spec", "priority"]), "warning",
                                   "precedence-tie",
                                   f"{b.name} and {a.name} have the same priority {a.priority} "
                                   f"and may match the same namespace: {a.name} wins by name "
                                   "order; give them different priorities"))
            elif _catch_all(a):
                out.append(Finding(b.path, line_of(bn, ["spec", "priority"]), "warning",
                                   "policy-shadowed",
                                   f"{b.name} is never selected: {a.name} (priority "
                                   f"{a.priority}) matches every namespace and image first"))
    if served and pols and not any(p.default for p, _ in pols):
        out.append(Finding(set_dir, 0, "warning", "no-default",
                           f"no policy in {set_dir} has `default: true`: namespaces no policy "
                           "matches are admitted without a scan"))
    return out


def _catch_all(p: P.Policy) -> bool:
    return ("*" in p.namespaces and not p.exclude_namespaces and "*" in p.images
            and not p.exclude_images)


def _may_overlap(a: P.Policy, b: P.Policy, attr: str) -> bool:
    """Whether some value could match a pattern of each (conservative for two globs: their
    literal prefixes and suffixes must agree)."""
    for x in getattr(a, attr):
        for y in getattr(b, attr):
            if x == y or P.matches_any(y, [x]) or P.matches_any(x, [y]):
                return True
            if _GLOB.search(x) and _GLOB.search(y) and _ends_agree(x, y):
                return True
    return False


def _ends_agree(x: str, y: str) -> bool:
    px, py = re.split(r"[*?\[]", x, 1)[0], re.split(r"[*?\[]", y, 1)[0]
    sx, sy = re.split(r"[*?\]]", x)[-1], re.split(r"[*?\]]", y)[-1]
    return ((px.startswith(py) or py.startswith(px))
            and (sx.endswith(sy) or sy.endswith(sx)))


def blocking(findings: list[Finding]) -> list[Finding]:
    """The findings that must keep a policy set out of force."""
    return [f for f in findings if f.level == "error" and f.code in BLOCKING]


def check_policy_set(pset: P.PolicySet) -> list[Finding]:
    """Content checks on an already loaded set (the reload watcher's gate)."""
    out: list[Finding] = []
    for pol in pset.policies:
        node = None
        try:
            with open(pol.path, "rb") as fh:
                node = read_document(fh.read(), pol.path)[1]
        except (OSError, P.PolicyError):
            pass
        check_content(pol, node, out)
    return blocking(out)
