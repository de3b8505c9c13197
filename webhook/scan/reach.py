"""What an evaluation can read: a path filter computed from the SCAP content.

A scan evaluates one profile of one datastream (with its tailoring and the policy's extra OVAL
files). Its OVAL objects name the files they read — file, textfilecontent54, filehash58,
xmlfilecontent, yamlfilecontent, symlink, … — by path, filename or filepath, with operations,
variables and behaviors; the other probes read known places (dpkginfo: the dpkg database and
apt's files; rpminfo: the rpm database; systemd probes: unit directories). This module walks
from the profile's selected rules (and every CPE platform check) through definitions, tests,
objects and variables, and turns what it finds into a Reach: root-relative paths, each with a
depth (0: the path itself; 1: the directory and its entries; -1: the whole tree below).

The filter never guesses. An object kind the analysis does not know, an operation it cannot
bound (not equal, case-insensitive, a pattern without a literal directory prefix), a check
system it cannot see into, or a variable it cannot resolve makes the Reach "everything", with
the reason. Values computed from what other objects collect (rsyslog's log files, read from its
configuration) are bounded by a *trigger*: when a file those objects read exists in the image,
the filter is "everything" for that image; when none does, the values are empty and nothing
more is read. partial.py applies the Reach to the image's layers and checks the result.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache

from lxml import etree

from .results import ContentSpec

log = logging.getLogger("scapgate.reach")
# Part of the cache key: any change to this module recomputes every filter.
with open(__file__, "rb") as _fh:
    VERSION = hashlib.sha256(_fh.read()).hexdigest()[:16]

XCCDF = "http://checklists.nist.gov/xccdf/1.2"
OVAL_DEF = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
OVAL_SYSTEM = OVAL_DEF
OCIL_SYSTEM = "http://scap.nist.gov/schema/ocil/2"
CPE_LANG = "http://cpe.mitre.org/language/2.0"
CPE_DICT = "http://cpe.mitre.org/dictionary/2.0"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
_PARSER = etree.XMLParser(huge_tree=True, resolve_entities=False, no_network=True)

Spec = tuple[str, str, int]  # ("p", root-relative path, depth) or ("r", regex, depth)

# What scapgate itself reads in every scan (identify, the package snapshot, prepare_dpkg, the
# container marker) and what the kernel-facing trees hold in an image (they are small).
IMPLICIT: tuple[tuple[str, int], ...] = (
    ("etc", 1), ("usr/lib/os-release", 0), (".dockerenv", 0),
    ("var/lib/dpkg", -1), ("usr/share/dpkg", -1), ("etc/dpkg", -1), ("etc/apt", -1),
    ("var/lib/apt", -1), ("var/cache/apt", -1),
    ("var/lib/rpm", -1), ("usr/lib/sysimage/rpm", -1), ("etc/rpm", -1), ("usr/lib/rpm", 1),
    ("lib/apk/db", -1), ("etc/apk", -1),
    ("proc", -1), ("sys", -1), ("dev", -1), ("bin/busybox", 0),
)
_UNIT_DIRS = ("etc/systemd", "run/systemd", "lib/systemd/system", "usr/lib/systemd/system",
              "usr/local/lib/systemd/system", "lib/systemd/user", "usr/lib/systemd/user")
# Probes that read fixed places (beyond IMPLICIT) or nothing from the image's files.
PROBE_READS: dict[str, tuple[tuple[str, int], ...]] = {
    "family_object": (), "variable_object": (), "uname_object": (),
    "environmentvariable_object": (), "environmentvariable58_object": (),
    "dpkginfo_object": (), "rpminfo_object": (), "sysctl_object": (),
    "process_object": (), "process58_object": (), "interface_object": (),
    "routingtable_object": (), "iflisteners_object": (), "inetlisteningservers_object": (),
    "selinuxboolean_object": (), "gconf_object": (),
    "partition_object": (("proc/mounts", 0),),
    "systemdunitproperty_object": tuple((d, -1) for d in _UNIT_DIRS),
    "systemdunitdependency_object": tuple((d, -1) for d in _UNIT_DIRS),
    "shadow_object": (("etc/shadow", 0),), "password_object": (("etc/passwd", 0),),
    "xinetd_object": (("etc/xinetd.conf", 0), ("etc/xinetd.d", -1)),
    "inetd_object": (("etc/inetd.conf", 0),),
    "runlevel_object": tuple((f"etc/rc{r}.d", 1) for r in "0123456S")
    + (("etc/init.d", 1), ("etc/rc.d", -1)),
    "dnfmodulestream_object": (("etc/dnf/modules.d", -1),),
}
# Objects that never collect an item from an unpacked root, whatever it holds: oscap 1.3.7's
# partition probe reads <root>/proc/mounts only when it is on a procfs (partition_probe.c),
# which no file of an image is. Values computed from them are empty.
NEVER_COLLECTS = frozenset({"partition_object"})
# Objects that name files by path + filename or filepath, with file behaviors.
PATH_OBJECTS = frozenset({
    "file_object", "textfilecontent54_object", "textfilecontent_object", "filehash58_object",
    "filehash_object", "xmlfilecontent_object", "yamlfilecontent_object", "symlink_object",
    "fileextendedattribute_object", "fileeffectiverights53_object",
    "selinuxsecuritycontext_object",
})


class Anywhere(Exception):
    """The analysis cannot bound what an object reads: the filter is everything."""


@dataclass(frozen=True)
class Reach:
    reads: frozenset = frozenset()          # Spec: what the evaluation may read
    triggers: frozenset = frozenset()       # Spec: a file there makes the filter everything
    everything: str = ""                    # why the filter is everything ("" = it is not)

    @classmethod
    def of_everything(cls, reason: str) -> "Reach":
        return cls(everything=reason)

    def union(self, *others: "Reach") -> "Reach":
        reach = [self, *others]
        why = next((r.everything for r in reach if r.everything), "")
        if why:
            return Reach.of_everything(why)
        return Reach(frozenset().union(*(r.reads for r in reach)),
                     frozenset().union(*(r.triggers for r in reach)))

    def to_dict(self) -> dict:
        return {"everything": self.everything, "reads": sorted(map(list, self.reads)),
                "triggers": sorted(map(list, self.triggers)), "version": VERSION}

    @classmethod
    def from_dict(cls, d: dict) -> "Reach":
        if d.get("version") != VERSION:
            raise ValueError("a filter of another analysis version")
        return cls(frozenset((str(k), str(p), int(n)) for k, p, n in d.get("reads", [])),
                   frozenset((str(k), str(p), int(n)) for k, p, n in d.get("triggers", [])),
                   str(d.get("everything", "")))

    def describe(self) -> str:
        if self.everything:
            return f"everything ({self.everything})"
        return f"{len(self.reads)} paths" + (f", {len(self.triggers)} triggers"
                                             if self.triggers else "")


# -- caching -------------------------------------------------------------------------------
_memo: dict[str, Reach] = {}
_memo_lock = threading.Lock()


def cache_key(spec: ContentSpec, remote: bool = False) -> str:
    parts = [VERSION, spec.datastream_sha256, spec.profile, spec.tailoring_sha256 or "",
             "remote" if remote else "", *spec.oval_sha256]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def of_spec(spec: ContentSpec, cache_dirs: tuple[str, ...] = (), *,
            remote: bool = False) -> Reach:
    """The Reach of one content spec, remembered per process and in the first writable of
    cache_dirs (a filter is a pure function of the content's bytes and the profile)."""
    key = cache_key(spec, remote)
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None:
        return hit
    for d in cache_dirs:
        try:
            with open(os.path.join(d, f"{key}.json")) as fh:
                reach = Reach.from_dict(json.load(fh))
            break
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    else:
        reach = analyse(spec, remote=remote)
        for d in cache_dirs:
            if _store(d, key, reach):
                break
    with _memo_lock:
        if len(_memo) >= 256:
            _memo.clear()
        _memo[key] = reach
    return reach


def _store(directory: str, key: str, reach: Reach) -> bool:
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w") as fh:
            json.dump(reach.to_dict(), fh)
        os.replace(tmp, os.path.join(directory, f"{key}.json"))
        return True
    except OSError:
        return False


def analyse(spec: ContentSpec, *, remote: bool = False) -> Reach:
    """The Reach of a content spec, computed (0.1-1 s per datastream). remote: oscap is given
    local copies of remote OVAL documents (--local-files), which are then evaluated whole."""
    try:
        return _Analysis(spec, remote).run()
    except Anywhere as e:
        return Reach.of_everything(str(e))
    except (OSError, etree.XMLSyntaxError, ValueError, KeyError, RecursionError) as e:
        return Reach.of_everything(f"the content could not be analysed: {e}")


# -- the analysis --------------------------------------------------------------------------
def _local(el) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


@dataclass
class _Values:
    """What a field or variable can hold: known (operation, value) pairs, or values computed
    from the items of other objects (their reads are triggers)."""
    known: set = field(default_factory=set)
    computed_from: set = field(default_factory=set)     # object ids


class _Analysis:
    def __init__(self, spec: ContentSpec, remote: bool = False):
        self.spec = spec
        self.remote = remote                    # oscap runs with --local-files
        self.catalog: dict[str, str] = {}       # check href -> component-ref id
        self.component_hrefs: dict[str, str] = {}
        self.items: dict[str, list] = {}        # OVAL id -> elements (ids may repeat per doc)
        self.values: dict[str, set[str]] = {}   # XCCDF Value id -> every value it may take
        self.exports: dict[str, set[str]] = {}  # OVAL external variable id -> XCCDF Value ids
        self.reads: set[Spec] = {("p", p, d) for p, d in IMPLICIT}
        self.triggers: set[Spec] = set()
        self._var_memo: dict[str, _Values] = {}
        self._obj_reads: dict[str, set[Spec]] = {}

    def run(self) -> Reach:
        spec = self.spec
        ds = etree.parse(spec.datastream, _PARSER).getroot()
        docs = [ds]
        tailoring = etree.parse(spec.tailoring, _PARSER).getroot() if spec.tailoring else None
        for el in ds.iter():
            if _local(el) == "Value" and el.get("id"):
                vals = self.values.setdefault(el.get("id"), set())
                vals.update((v.text or "") for v in el if _local(v) == "value")
        self._index(ds)
        for el in ds.iter("{urn:oasis:names:tc:entity:xmlns:xml:catalog}uri"):
            self.catalog[el.get("name", "")] = el.get("uri", "").lstrip("#")
        for el in ds.iter("{http://scap.nist.gov/schema/scap/source/1.2}component-ref"):
            self.component_hrefs[el.get("id", "")] = el.get("{http://www.w3.org/1999/xlink}href",
                                                            "")
        definitions: set[str] = set()
        for path in spec.oval:
            doc = etree.parse(path, _PARSER).getroot()
            docs.append(doc)
            self._index(doc)
            definitions |= {d.get("id") for d in doc.iter(f"{{{OVAL_DEF}}}definition")}
        definitions |= self._selected_checks(ds, tailoring)
        definitions |= self._platform_checks(ds)
        for oid in self._closure(definitions):
            for el in self.items.get(oid, []):
                if ":obj:" in oid or _local(el).endswith("_object"):
                    self.reads |= self._object_reads(oid)
        if ("p", "", -1) in self.reads:
            raise Anywhere("an object reads the whole tree from /")
        return Reach(frozenset(self.reads), frozenset(self.triggers))

    def _index(self, root) -> None:
        for el in root.iter():
            if not isinstance(el.tag, str):
                continue
            oid = el.get("id")
            if oid and oid.startswith("oval:"):
                self.items.setdefault(oid, []).append(el)

    # XCCDF: which rules run, which checks they name
    def _selected_checks(self, ds, tailoring) -> set[str]:
        rules = {r.get("id"): r for r in ds.iter(f"{{{XCCDF}}}Rule")}
        profiles = {p.get("id"): p for p in ds.iter(f"{{{XCCDF}}}Profile")}
        if tailoring is not None:
            profiles.update({p.get("id"): p for p in tailoring.iter(f"{{{XCCDF}}}Profile")})
        chain, pid = [], self.spec.profile
        while pid:
            p = profiles.get(pid)
            if p is None:
                if chain:
                    raise Anywhere(f"profile {pid} (extended by {chain[-1].get('id')}) "
                                   "is not in the content")
                raise Anywhere(f"profile {pid} is not in the content")
            if p in chain:
                raise Anywhere(f"profile {pid} extends itself")
            chain.append(p)
            pid = p.get("extends")
        selected: dict[str, bool] = {}
        for p in reversed(chain):           # the base first, then what extends it
            for s in p:
                name = _local(s)
                if name == "select":
                    selected[s.get("idref")] = s.get("selected") == "true"
                elif name in ("set-value", "refine-value") and s.get("idref"):
                    v = s.text if name == "set-value" else None
                    if name == "refine-value":
                        v = self._selector_value(ds, s.get("idref"), s.get("selector"))
                    if v is not None:
                        self.values.setdefault(s.get("idref"), set()).add(v)
        clusters: dict[str, set[str]] = {}
        for rid, r in rules.items():
            if r.get("cluster-id"):
                clusters.setdefault(r.get("cluster-id"), set()).add(rid)
        for idref, on in list(selected.items()):
            for rid in clusters.get(idref, ()):
                selected.setdefault(rid, on)
        out: set[str] = set()
        for rid, rule in rules.items():
            if not selected.get(rid, rule.get("selected", "true") == "true"):
                continue
            for check in rule.iter(f"{{{XCCDF}}}check"):
                out |= self._check(rid, check)
        return out

    def _selector_value(self, ds, value_id: str, selector: str | None) -> str | None:
        for v in ds.iter(f"{{{XCCDF}}}Value"):
            if v.get("id") == value_id:
                for opt in v:
                    if _local(opt) == "value" and (opt.get("selector") or "") == (selector or ""):
                        return opt.text or ""
        return None

    def _check(self, rid: str, check) -> set[str]:
        system = check.get("system")
        if system == OCIL_SYSTEM:
            return set()
        if system != OVAL_SYSTEM:
            raise Anywhere(f"rule {rid} uses the check system {system}")
        for export in check.iter(f"{{{XCCDF}}}check-export"):
            self.exports.setdefault(export.get("export-name"), set()).add(
                export.get("value-id"))
        names = set()
        for ref in check.iter(f"{{{XCCDF}}}check-content-ref"):
            if ref.get("name"):
                names.add(ref.get("name"))
                continue
            target = self.component_hrefs.get(self.catalog.get(ref.get("href", ""), ""), "")
            if target.startswith(("http://", "https://")) and not self.remote:
                continue    # oscap does not fetch it (no --fetch-remote-resources): notchecked
            raise Anywhere(f"rule {rid} evaluates the whole OVAL document "
                           f"{ref.get('href', '')[:80]}")
        return names

    def _platform_checks(self, ds) -> set[str]:
        out = {e.get("id-ref") for e in ds.iter(f"{{{CPE_LANG}}}check-fact-ref")}
        out |= {(e.text or "").strip() for e in ds.iter(f"{{{CPE_DICT}}}check")
                if e.get("system") == OVAL_SYSTEM}
        return {d for d in out if d}

    # OVAL: everything the definitions reach
    def _closure(self, start: set[str]) -> set[str]:
        seen: set[str] = set()
        todo = list(start)
        while todo:
            oid = todo.pop()
            if oid in seen:
                continue
            seen.add(oid)
            els = self.items.get(oid)
            if not els:
                if ":def:" in oid or ":obj:" in oid or ":var:" in oid or ":tst:" in oid:
                    raise Anywhere(f"{oid} is referenced but not defined")
                continue
            for el in els:
                for sub in el.iter():
                    if not isinstance(sub.tag, str):
                        continue
                    for attr in ("definition_ref", "test_ref", "object_ref", "state_ref",
                                 "var_ref"):
                        if sub.get(attr):
                            todo.append(sub.get(attr))
                    if _local(sub) in ("object_reference", "filter", "var_ref") and sub.text:
                        todo.append(sub.text.strip())
        return seen

    def _object_reads(self, oid: str) -> set[Spec]:
        if oid in self._obj_reads:
            return self._obj_reads[oid]
        self._obj_reads[oid] = set()        # a reference cycle reads nothing more
        out: set[Spec] = set()
        for el in self.items.get(oid, []):
            kind = _local(el)
            if not kind.endswith("_object"):
                continue
            if any(_local(c) == "set" for c in el):
                for ref in el.iter(f"{{{OVAL_DEF}}}object_reference"):
                    out |= self._object_reads((ref.text or "").strip())
                continue
            if kind in PATH_OBJECTS:
                out |= self._path_reads(oid, el)
            elif kind in PROBE_READS:
                out |= {("p", p, d) for p, d in PROBE_READS[kind]}
            else:
                raise Anywhere(f"{oid} is a {kind}, which the analysis does not know")
        self._obj_reads[oid] = out
        return out

    def _path_reads(self, oid: str, el) -> set[Spec]:
        fields = {_local(c): c for c in el if isinstance(c.tag, str)}
        beh = fields.get("behaviors")
        direction = beh.get("recurse_direction", "none") if beh is not None else "none"
        max_depth = int(beh.get("max_depth", "-1")) if beh is not None else -1
        if direction not in ("none", "down", "up"):
            raise Anywhere(f"{oid} recurses {direction!r}")
        out: set[Spec] = set()
        if "filepath" in fields:
            for kind, value in self._field(oid, fields["filepath"]):
                out.add((kind, value, 0))
            return out
        if "path" not in fields:
            raise Anywhere(f"{oid} names no path")
        fname = fields.get("filename")
        nil = fname is None or fname.get(XSI_NIL) in ("true", "1")
        names = [] if nil else self._field(oid, fname, name=True)
        down = -1 if max_depth < 0 else max_depth + (0 if nil else 1)
        for kind, d in self._field(oid, fields["path"]):
            if direction == "down":
                out.add((kind, d, down))
                continue
            if kind == "r":
                if direction == "up":
                    raise Anywhere(f"{oid} recurses up from a pattern")
                out.add(("r", d, 0 if nil else 1))
                continue
            dirs = [d]
            if direction == "up":
                parts = d.split("/") if d else []
                levels = len(parts) if max_depth < 0 else min(max_depth, len(parts))
                dirs += ["/".join(parts[:len(parts) - k]) for k in range(1, levels + 1)]
            for dd in dirs:
                if nil:
                    out.add(("p", dd, 0))
                for nkind, name in names:
                    if nkind == "p" and "/" not in name and name not in ("", ".", ".."):
                        out.add(("p", f"{dd}/{name}".strip("/"), 0))
                    else:
                        out.add(("p", dd, 1))
        return out

    def _field(self, oid: str, el, *, name: bool = False) -> list[tuple[str, str]]:
        """What a path, filename or filepath field may name: ("p", root-relative path) for a
        value it equals (or a fully literal pattern), ("r", regex) for a pattern. A filename
        is returned as it is (a name, or its pattern)."""
        op = el.get("operation", "equals")
        if op not in ("equals", "pattern match"):
            raise Anywhere(f"{oid} matches {_local(el)} with {op!r}")
        if el.get("var_ref"):
            vals = self._variable(el.get("var_ref"))
            if vals.computed_from:
                log.debug("%s: %s computed from %s", oid, _local(el), sorted(vals.computed_from))
                for src in vals.computed_from:
                    self.triggers |= self._object_reads(src)
            values = sorted(vals.known)
        else:
            values = [el.text or ""]
        out = []
        for v in values:
            if op == "equals":
                out.append(("p", v if name else _rel(oid, v)))
                continue
            exact = literal_exact(v)
            if exact is not None:
                out.append(("p", exact if name else _rel(oid, exact)))
                if not name:        # PCRE's $ also matches before a final newline
                    out.append(("p", _rel(oid, exact) + "\n"))
                continue
            if not name:
                safe_regex(oid, v)
            out.append(("r", v))
        return out

    def _variable(self, vid: str) -> _Values:
        if vid in self._var_memo:
            return self._var_memo[vid]
        self._var_memo[vid] = _Values()     # a cycle adds nothing
        out = _Values()
        for el in self.items.get(vid, []):
            kind = _local(el)
            if kind == "constant_variable":
                out.known |= {v.text or "" for v in el if _local(v) == "value"}
            elif kind == "external_variable":
                ids = self.exports.get(vid)
                if not ids:
                    raise Anywhere(f"external variable {vid} is bound to no XCCDF value")
                for xid in ids:
                    if xid not in self.values:
                        raise Anywhere(f"XCCDF value {xid} is not in the content")
                    out.known |= self.values[xid]
            elif kind == "local_variable":
                comp = next((c for c in el if isinstance(c.tag, str)), None)
                if comp is None:
                    raise Anywhere(f"local variable {vid} has no component")
                part = self._component(vid, comp)
                out.known |= part.known
                out.computed_from |= part.computed_from
            else:
                raise Anywhere(f"variable {vid} is a {kind}")
        self._var_memo[vid] = out
        return out

    def _component(self, vid: str, comp) -> _Values:
        kind = _local(comp)
        if kind == "literal_component":
            return _Values({comp.text or ""})
        if kind == "variable_component":
            return self._variable(comp.get("var_ref"))
        if kind == "object_component":
            return self._object_values(vid, comp.get("object_ref"))
        parts = [self._component(vid, c) for c in comp if isinstance(c.tag, str)]
        computed = set().union(*(p.computed_from for p in parts)) if parts else set()
        if kind == "concat" and not computed:
            vals = {""}
            for p in parts:
                vals = {a + b for a in vals for b in p.known}
                if len(vals) > 4096:
                    raise Anywhere(f"local variable {vid} takes too many values")
            return _Values(vals)
        if kind == "unique" and parts:
            return _Values(set().union(*(p.known for p in parts)), computed)
        if computed:
            # a function of collected values: still bounded by the same triggers
            return _Values(set(), computed)
        raise Anywhere(f"local variable {vid} uses the function {kind}, which the analysis "
                       "does not evaluate")

    def _object_values(self, vid: str, obj: str) -> _Values:
        """Values an object_component yields: a variable_object's are its variables' values
        (known); any other object's are collected from the image (computed from it)."""
        out = _Values()
        for el in self.items.get(obj, []):
            if _local(el) in NEVER_COLLECTS:
                continue
            if _local(el) != "variable_object":
                out.computed_from.add(obj)
                continue
            if any(_local(c) == "set" for c in el):
                for ref in el.iter(f"{{{OVAL_DEF}}}object_reference"):
                    part = self._object_values(vid, (ref.text or "").strip())
                    out.known |= part.known
                    out.computed_from |= part.computed_from
                continue
            for c in el:
                if _local(c) == "var_ref":
                    part = self._variable((c.text or "").strip())
                    out.known |= part.known
                    out.computed_from |= part.computed_from
        if not self.items.get(obj):
            raise Anywhere(f"local variable {vid} names the missing object {obj}")
        return out


def _rel(oid: str, path: str) -> str:
    """A field's absolute path as a root-relative one ("" = the root)."""
    if not path.startswith("/"):
        raise Anywhere(f"{oid} names the relative path {path[:80]!r}")
    parts = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if parts:
                parts.pop()
            continue
        parts.append(p)
    return "/".join(parts)


_META = set(".^$*+?()[]{}|\\")
_QUANT = set("*+?{")


def literal_prefix(pattern: str) -> str | None:
    """The literal text every match of an anchored regex starts with, or None when the regex
    is not anchored at its start or alternates at its top level. Escaped punctuation counts as
    literal; a quantifier takes back the character it applies to."""
    if not pattern.startswith("^"):
        return None
    depth, in_class, i = 0, False, 1
    while i < len(pattern):      # a top-level alternation voids the prefix
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1:i + 2] == "]":
                i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return None
        i += 1
    out, i = [], 1
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1:i + 2]
            if not nxt or nxt.isalnum():
                break
            if pattern[i + 2:i + 3] in _QUANT:
                break
            out.append(nxt)
            i += 2
            continue
        if c in _META:
            if c in _QUANT and out:
                out.pop()
            break
        if pattern[i + 1:i + 2] in _QUANT:
            break
        out.append(c)
        i += 1
    return "".join(out)


def literal_exact(pattern: str) -> str | None:
    r"""The one string an anchored, fully literal regex (^/etc/rsyslog\.conf$) matches."""
    if not pattern.endswith("$") or pattern.endswith("\\$"):
        return None
    prefix = literal_prefix(pattern[:-1])
    if prefix is None or len(prefix) != _literal_len(pattern[1:-1]):
        return None
    return prefix


def _literal_len(body: str) -> int:
    """How many characters a regex body would have if every character were literal (escaped
    punctuation counts once); -1 when it holds anything else."""
    n, i = 0, 0
    while i < len(body):
        if body[i] == "\\":
            if not body[i + 1:i + 2] or body[i + 1].isalnum():
                return -1
            i += 2
        elif body[i] in _META:
            return -1
        else:
            i += 1
        n += 1
    return n


# PCRE and Python's re (on bytes, so . and classes see bytes as PCRE does without UTF) agree
# on this subset; anything else (flags, lookbehind, back references, \\A \\Z \\Q \\x \\p, POSIX
# classes) makes the filter everything rather than risk a regex that matches fewer paths here.
_SAFE_ESCAPES = set("dDwWsSbB") | set(".^$*+?()[]{}|\\/-_ ,:;=!\"'#%&<>@~`")
_UNSAFE = re.compile(r"\(\?(?![:=!])|\[:|\[\[|\\[0-9]")


def safe_regex(oid: str, pattern: str) -> re.Pattern:
    """The pattern compiled for bytes, after checking it uses only syntax PCRE and Python's
    re read alike."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            if pattern[i + 1:i + 2] not in _SAFE_ESCAPES or not pattern[i + 1:i + 2]:
                raise Anywhere(f"{oid} matches the pattern {pattern[:80]!r}, whose escape "
                               f"{pattern[i:i + 2]!r} the analysis does not read")
            i += 2
            continue
        i += 1
    if _UNSAFE.search(pattern) or "++" in pattern or "*+" in pattern or "?+" in pattern:
        raise Anywhere(f"{oid} matches the pattern {pattern[:80]!r}, with syntax the analysis "
                       "does not read")
    try:
        return re.compile(pattern.encode("utf-8", "surrogateescape"))
    except (re.error, UnicodeError) as e:
        raise Anywhere(f"{oid} matches the pattern {pattern[:80]!r}, which does not compile: "
                       f"{e}") from e


@lru_cache(maxsize=1)
def implicit() -> Reach:
    return Reach(frozenset(("p", p, d) for p, d in IMPLICIT))
