"""CVEs: a distribution's OVAL vulnerability feed evaluated by oscap against an image's packages.

A feed is tens of megabytes (Debian's: ~50 MB, tens of thousands of definitions); libxml2 holds
about four times that, and oscap evaluates every definition. So a feed is indexed once, when it
is fetched (FeedIndex.build: an SQLite file of every definition, test, object, state and
variable as XML, with each definition's closure and the package names it tests), and each
image is evaluated against a *slice*: the definitions that can be true for it. The slice is
sound, not a guess: a definition is left out only when every way it could be true needs a
package test on a package the image does not have (`_decides_absent`); anything else — a
negation, a `none_exist` test, a pattern-matched name, a definition without a package test —
is always kept. tests/scan/test_cve.py proves the slice's true definitions equal the whole
feed's on every test image.

Two rewrites close traps that make plain oscap miss vulnerable packages (DESIGN.md):
- *Source names* (Debian): the feed's dpkginfo objects name SOURCE packages (glibc, openssl);
  images install binaries with other names (libc6, libssl3). Each test of a source name becomes
  an OR of the same test on every installed binary built from that source (dpkg status
  `Source:`; a binary without it is its own source).
- *Signature key* (Red Hat): oscap 1.3.7 reads `signature_keyid` only from header+payload (v3)
  signatures and reports "0" otherwise, so every "signed with Red Hat's key" test is false for
  packages signed header-only. A key id of "0" (unreadable) is accepted as well as the feed's
  key: a package named like Red Hat's whose signature cannot be read is judged as Red Hat's.
  That can report a CVE for a rebuilt package; it can never hide one.

Definitions oscap cannot decide offline (the running kernel via uname, running-system state)
come back "not applicable", "unknown" or "error": they are never read as "not vulnerable";
each is counted by kind in the result (`unevaluated`), so reports say what was not checked.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from dataclasses import dataclass, field

from lxml import etree

from .results import CveFinding

OVAL_DEF = "http://oval.mitre.org/XMLSchema/oval-definitions-5"
OVAL_RES = "http://oval.mitre.org/XMLSchema/oval-results-5"
OVAL_SC = "http://oval.mitre.org/XMLSchema/oval-system-characteristics-5"
SECTIONS = ("definitions", "tests", "objects", "states", "variables")
PACKAGE_OBJECTS = frozenset({"dpkginfo_object", "rpminfo_object"})
# Test check_existence values under which a package that is not installed makes the test false.
_NEEDS_ITEMS = frozenset({None, "at_least_one_exists", "all_exist", "only_one_exists"})
INDEX_VERSION = 1
SLICE_NS = "org.scapgate.slice"     # ids of tests and objects the rewrites add
UNREADABLE_KEY_ID = "0"             # what oscap 1.3.7 reports for a header-only signature
_PARSER = etree.XMLParser(huge_tree=True, resolve_entities=False, no_network=True,
                          remove_blank_text=True)
SEVERITIES = {  # the feed's words → scapgate's; the order of CVE_SEVERITY_ORDER decides
    "critical": "critical", "important": "high", "high": "high", "moderate": "medium",
    "medium": "medium", "low": "low", "negligible": "negligible", "untriaged": "unknown",
    "unknown": "unknown", "": "unknown", "none": "unknown",
}


class FeedError(Exception):
    """A feed that is not a usable OVAL definitions document (or its index is unreadable)."""


def _local(tag) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


# --------------------------------------------------------------------------------- index
@dataclass
class _Item:
    kind: str                # definition | test | object | state | variable
    local: str               # element name, e.g. dpkginfo_test
    xml: bytes
    refs: list[str]


def build_index(feed_path: str, index_path: str) -> dict:
    """Index an OVAL definitions file into an SQLite file (written aside, then renamed).
    Raises FeedError for what is not an OVAL definitions document. Returns what it found:
    definition count, the root's namespaces, the generator block."""
    tmp = f"{index_path}.{os.getpid()}.tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    items: dict[str, _Item] = {}
    root_tag, nsmap, generator = None, {}, b""
    try:
        for event, el in etree.iterparse(feed_path, events=("start", "end"), huge_tree=True,
                                         resolve_entities=False, no_network=True,
                                         remove_blank_text=True):
            if event == "start":
                if root_tag is None:
                    root_tag = el.tag
                    nsmap = {k or "": v for k, v in el.nsmap.items()}
                    if root_tag != f"{{{OVAL_DEF}}}oval_definitions":
                        raise FeedError(f"not an OVAL definitions document (root element "
                                        f"{_local(root_tag) or root_tag})")
                continue
            parent = el.getparent()
            if parent is None:
                continue
            if parent.tag == root_tag and _local(el.tag) == "generator":
                generator = etree.tostring(el)
                el.clear()
                continue
            grand = parent.getparent()
            if grand is None or grand.tag != root_tag:
                continue
            section = _local(parent.tag)
            if section not in SECTIONS:
                continue
            iid = el.get("id")
            if iid:
                items[iid] = _Item(section[:-1], _local(el.tag), etree.tostring(el),
                                   _refs_of(el))
            el.clear()
            while el.getprevious() is not None:
                del parent[0]
    except etree.XMLSyntaxError as e:
        raise FeedError(f"not well-formed XML: {e}") from e
    except OSError as e:
        raise FeedError(f"cannot read the feed: {e}") from e
    if root_tag is None:
        raise FeedError("empty document")
    defs = [i for i, it in items.items() if it.kind == "definition"]
    if not defs:
        raise FeedError("an OVAL document without definitions")
    db = sqlite3.connect(tmp)
    try:
        db.executescript("""
            CREATE TABLE items(id TEXT PRIMARY KEY, kind TEXT, xml BLOB);
            CREATE TABLE closure(def TEXT, item TEXT);
            CREATE TABLE packages(name TEXT, def TEXT);
            CREATE INDEX packages_name ON packages(name);
            CREATE INDEX closure_def ON closure(def);
            CREATE TABLE meta(k TEXT PRIMARY KEY, v TEXT);
            CREATE TABLE trees(def TEXT PRIMARY KEY, tree TEXT);
            CREATE TABLE tests(test TEXT PRIMARY KEY, info TEXT);
            CREATE TABLE probe_closure(test TEXT, item TEXT);
        """)
        db.executemany("INSERT INTO items VALUES (?,?,?)",
                       ((i, it.kind, it.xml) for i, it in items.items()))
        rows, pkgs = [], []
        for d in defs:
            members = _closure(d, items)
            rows += [(d, m) for m in members]
            names = _package_names(d, members, items)
            pkgs += [(n, d) for n in names] if names is not None else [("", d)]
        db.executemany("INSERT INTO closure VALUES (?,?)", rows)
        db.executemany("INSERT INTO packages VALUES (?,?)", pkgs)
        probes = _write_trees(db, [d for n, d in pkgs if not n], items)
        meta = {"version": INDEX_VERSION, "definitions": len(defs), "nsmap": nsmap,
                "generator": generator.decode(), "always": sum(1 for n, _ in pkgs if not n),
                "probe_tests": probes}
        db.executemany("INSERT INTO meta VALUES (?,?)",
                       ((k, json.dumps(v)) for k, v in meta.items()))
        db.commit()
    finally:
        db.close()
    os.replace(tmp, index_path)
    return meta


PROBE_MIN_SHARE = 2     # a non-package test in this many package-independent definitions


def _write_trees(db, always: list[str], items: dict[str, _Item]) -> list[str]:
    """For the definitions every slice would keep (they can be true without a package: Red
    Hat's "must be installed" criterion), their criteria as small trees and what each test
    is, so a slice can drop those that cannot be true for an image once the tests they share
    (the release checks: "probe" tests) are evaluated on it. Returns the probe tests."""
    uses: dict[str, int] = {}
    info: dict[str, dict] = {}
    for d in always:
        el = etree.fromstring(items[d].xml)
        crit = el.find("{*}criteria")
        tree = _tree(crit) if crit is not None else ["U"]
        db.execute("INSERT INTO trees VALUES (?,?)", (d, json.dumps(tree)))
        for tid in set(_tree_tests(tree)):
            uses[tid] = uses.get(tid, 0) + 1
            if tid not in info:
                info[tid] = _test_info(tid, items)
    db.executemany("INSERT INTO tests VALUES (?,?)",
                   ((t, json.dumps(i)) for t, i in info.items()))
    probes = sorted(t for t, n in uses.items()
                    if n >= PROBE_MIN_SHARE and info[t]["pkg"] is None and t in items)
    for t in probes:
        db.executemany("INSERT INTO probe_closure VALUES (?,?)",
                       ((t, m) for m in _closure(t, items)))
    return probes


def _tree(el) -> list:
    """criteria → ["AND"|"OR"|"ONE"|"XOR", negate, [children]]; criterion → ["T", negate,
    test id]; extend_definition → ["D", negate, definition id]."""
    neg = el.get("negate") == "true"
    local = _local(el.tag)
    if local == "criterion":
        return ["T", neg, el.get("test_ref", "")]
    if local == "extend_definition":
        return ["D", neg, el.get("definition_ref", "")]
    kids = [_tree(k) for k in el if _local(k.tag) in ("criteria", "criterion",
                                                      "extend_definition")]
    return [el.get("operator", "AND"), neg, kids]


def _tree_tests(tree: list):
    if tree[0] == "T":
        yield tree[2]
    elif tree[0] not in ("D", "U"):
        for k in tree[2]:
            yield from _tree_tests(k)


def _test_info(tid: str, items: dict[str, _Item]) -> dict:
    """{"pkg": literal package names or None, "needs": a missing package makes it false}."""
    it = items.get(tid)
    if it is None:
        return {"pkg": None, "needs": False}
    el = etree.fromstring(it.xml)
    obj = el.find("{*}object")
    target = items.get(obj.get("object_ref", "")) if obj is not None else None
    if target is None or target.local not in PACKAGE_OBJECTS:
        return {"pkg": None, "needs": False}
    names = _object_names(target, items)
    return {"pkg": sorted(names) if names else None,
            "needs": el.get("check_existence") in _NEEDS_ITEMS}


def _value(tree: list, tests: dict, names: set[str], probe: dict[str, str],
           trees: dict, depth: int = 0) -> str:
    """Three-valued: "T", "F" or "U" (could be either) for an image with these packages and
    these probe test results."""
    kind, neg = tree[0], tree[1] if len(tree) > 1 else False
    if kind == "U" or depth > 32:
        v = "U"
    elif kind == "T":
        info = tests.get(tree[2]) or {"pkg": None, "needs": False}
        r = probe.get(tree[2])
        if r in ("true", "false"):
            v = "T" if r == "true" else "F"
        elif info["pkg"] is not None and info["needs"] and not names & set(info["pkg"]):
            v = "F"
        else:
            v = "U"
    elif kind == "D":
        sub = trees.get(tree[2])
        v = _value(sub, tests, names, probe, trees, depth + 1) if sub else "U"
    else:
        vals = [_value(k, tests, names, probe, trees, depth + 1) for k in tree[2]]
        if kind == "AND":
            v = "F" if "F" in vals else ("T" if vals and all(x == "T" for x in vals) else "U")
        elif kind == "OR":
            v = "T" if "T" in vals else ("F" if vals and all(x == "F" for x in vals) else "U")
        else:
            v = "U"
    if neg and v != "U":
        v = "F" if v == "T" else "T"
    return v


def _refs_of(el) -> list[str]:
    out = []
    for sub in el.iter():
        for attr in ("test_ref", "definition_ref", "object_ref", "state_ref", "var_ref"):
            v = sub.get(attr)
            if v:
                out.append(v)
    return out


def _closure(start: str, items: dict[str, _Item]) -> list[str]:
    seen, todo = {start}, [start]
    while todo:
        it = items.get(todo.pop())
        for r in it.refs if it else ():
            if r not in seen:
                seen.add(r)
                todo.append(r)
    return sorted(seen)


def _package_names(d: str, members: list[str], items: dict[str, _Item]) -> set[str] | None:
    """The package names a definition can only be true with (one of them installed), or None
    when it can be true without any (then every slice keeps it)."""
    tests: dict[str, tuple[set[str], bool]] = {}   # package test id → (names, needs items)
    for m in members:
        it = items.get(m)
        if it is None or it.kind != "test":
            continue
        el = etree.fromstring(it.xml)
        obj = el.find("{*}object")
        target = items.get(obj.get("object_ref", "")) if obj is not None else None
        if target is None or target.local not in PACKAGE_OBJECTS:
            continue
        names = _object_names(target, items)
        if names is None:
            continue
        tests[m] = (names, el.get("check_existence") in _NEEDS_ITEMS)
    if not tests:
        return None
    found: set[str] = set()
    if not _decides_absent(d, items, tests, found, set()):
        return None
    return found


def _object_names(obj: _Item, items: dict[str, _Item]) -> set[str] | None:
    """Literal names an rpminfo/dpkginfo object matches, or None (pattern, set, unknown var)."""
    el = etree.fromstring(obj.xml)
    if el.find("{*}set") is not None or el.find("{*}filter") is not None:
        return None
    name = el.find("{*}name")
    if name is None or name.get("operation", "equals") != "equals":
        return None
    if name.get("var_ref"):
        var = items.get(name.get("var_ref"))
        if var is None or var.local != "constant_variable":
            return None
        values = [v.text or "" for v in etree.fromstring(var.xml).iterfind("{*}value")]
        return set(values) or None
    return {name.text or ""}


def _decides_absent(node_id_or_el, items, tests, found: set[str], seen: set[str]) -> bool:
    """True when the definition (or criteria element) is false whenever none of the packages
    its package tests name is installed; collects those names into found."""
    if isinstance(node_id_or_el, str):
        if node_id_or_el in seen:
            return False
        seen = seen | {node_id_or_el}
        it = items.get(node_id_or_el)
        if it is None or it.kind != "definition":
            return False
        crit = etree.fromstring(it.xml).find("{*}criteria")
        return crit is not None and _decides_absent(crit, items, tests, found, seen)
    el = node_id_or_el
    if el.get("negate") == "true":
        return False
    local = _local(el.tag)
    if local == "criterion":
        t = tests.get(el.get("test_ref", ""))
        if t is None or not t[1]:
            return False
        found.update(t[0])
        return True
    if local == "extend_definition":
        return _decides_absent(el.get("definition_ref", ""), items, tests, found, seen)
    if local != "criteria":
        return False
    kids = [k for k in el if _local(k.tag) in ("criteria", "criterion", "extend_definition")]
    op = el.get("operator", "AND")
    if op == "AND":
        # false as soon as one child is false: one child that decides is enough
        for k in kids:
            sub: set[str] = set()
            if _decides_absent(k, items, tests, sub, seen):
                found.update(sub)
                return True
        return False
    if op == "OR":
        subs = []
        for k in kids:
            sub = set()
            if not _decides_absent(k, items, tests, sub, seen):
                return False
            subs.append(sub)
        for s in subs:
            found.update(s)
        return bool(kids)
    return False            # ONE, XOR: a false child can make them true


class FeedIndex:
    """A read-only view of an index file: slices of the feed for one image's packages."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise FeedError(f"no feed index at {path}")
        self.path = path
        try:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                       check_same_thread=False)
            self.meta = {k: json.loads(v) for k, v in self._db.execute("SELECT k, v FROM meta")}
        except sqlite3.Error as e:
            raise FeedError(f"unreadable feed index {path}: {e}") from e
        if self.meta.get("version") != INDEX_VERSION:
            raise FeedError(f"feed index {path} has version {self.meta.get('version')}")

    def close(self) -> None:
        self._db.close()

    def definitions_for(self, names: set[str], probe: dict[str, str] | None = None) -> list[str]:
        """Every definition that can be true for an image with these packages. Without probe
        results every package-independent definition is kept; with them (test id → oscap's
        result on this image) those that cannot be true are left out."""
        always = [d for (d,) in self._db.execute("SELECT def FROM packages WHERE name = ''")]
        if probe is not None and always:
            trees = {d: json.loads(t) for d, t in self._db.execute("SELECT def, tree FROM trees")}
            tests = {t: json.loads(i) for t, i in self._db.execute("SELECT test, info FROM tests")}
            present = set(names)
            always = [d for d in always if d not in trees
                      or _value(trees[d], tests, present, probe, trees) != "F"]
        out = set(always)
        names = sorted(names)
        for i in range(0, len(names), 500):
            chunk = names[i:i + 500]
            q = f"SELECT def FROM packages WHERE name IN ({','.join('?' * len(chunk))})"
            out.update(d for (d,) in self._db.execute(q, chunk))
        return sorted(out)

    def probe_document(self) -> etree._Element | None:
        """One inventory definition per probe test (with what it refers to), to learn their
        results on an image in one oscap run; None when the feed has none."""
        probes = self.meta.get("probe_tests") or []
        if not probes:
            return None
        ids: set[str] = set()
        for t in probes:
            ids.update(x for (x,) in self._db.execute(
                "SELECT item FROM probe_closure WHERE test = ?", (t,)))
        root = self._root()
        defs = etree.SubElement(root, f"{{{OVAL_DEF}}}definitions")
        for n, t in enumerate(probes, 1):
            d = etree.SubElement(defs, f"{{{OVAL_DEF}}}definition", {
                "class": "inventory", "id": f"oval:{SLICE_NS}:def:{n}", "version": "1"})
            meta = etree.SubElement(d, f"{{{OVAL_DEF}}}metadata")
            etree.SubElement(meta, f"{{{OVAL_DEF}}}title").text = f"probe {t}"
            etree.SubElement(meta, f"{{{OVAL_DEF}}}description").text = "scapgate slice probe"
            crit = etree.SubElement(d, f"{{{OVAL_DEF}}}criteria")
            etree.SubElement(crit, f"{{{OVAL_DEF}}}criterion", test_ref=t)
        self._append_items(root, ids)
        return root

    def _root(self) -> etree._Element:
        nsmap = {k or None: v for k, v in self.meta["nsmap"].items()}
        root = etree.Element(f"{{{OVAL_DEF}}}oval_definitions", nsmap=nsmap)
        if self.meta.get("generator"):
            root.append(etree.fromstring(self.meta["generator"].encode()))
        return root

    def _append_items(self, root, ids: set[str]) -> None:
        by_kind: dict[str, list[bytes]] = {k[:-1]: [] for k in SECTIONS}
        ids_l = sorted(ids)
        for i in range(0, len(ids_l), 500):
            chunk = ids_l[i:i + 500]
            q = f"SELECT kind, xml FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            for kind, xml in self._db.execute(q, chunk):
                by_kind[kind].append(xml)
        for section in SECTIONS:
            blobs = by_kind[section[:-1]]
            if not blobs:
                continue
            sec = root.find(f"{{{OVAL_DEF}}}{section}")
            if sec is None:
                sec = etree.SubElement(root, f"{{{OVAL_DEF}}}{section}")
            # one parse of all the section's items (each kept with its own namespace
            # declarations) instead of one per item: a third of the time
            wrapper = etree.fromstring(b"<w>" + b"".join(blobs) + b"</w>", _PARSER)
            sec.extend(list(wrapper))

    def all_definitions(self) -> list[str]:
        return [d for (d,) in self._db.execute("SELECT id FROM items WHERE kind='definition'")]

    def document(self, definitions: list[str]) -> etree._Element:
        """An OVAL definitions document holding these definitions and all they refer to."""
        ids: set[str] = set()
        for i in range(0, len(definitions), 500):
            chunk = definitions[i:i + 500]
            q = f"SELECT item FROM closure WHERE def IN ({','.join('?' * len(chunk))})"
            ids.update(x for (x,) in self._db.execute(q, chunk))
        root = self._root()
        self._append_items(root, ids)
        return root


# ---------------------------------------------------------------------------- packages
@dataclass
class Packages:
    """What an image has installed, as the feed's matching needs it."""

    kind: str                                  # dpkg | rpm
    names: set[str] = field(default_factory=set)               # binary package names
    sources: dict[str, set[str]] = field(default_factory=dict)  # source → installed binaries

    def match_names(self) -> set[str]:
        """Names a feed may test for this image: binaries, and (dpkg) their sources."""
        return self.names | set(self.sources)


_FIELD = re.compile(rb"^([A-Za-z][A-Za-z0-9-]*):[ \t]*(.*)$")


def dpkg_packages(status: bytes) -> Packages:
    """Installed packages of a dpkg status file (stanzas of deb822 fields), with each
    binary's source (`Source: name (version)`, else the binary's own name)."""
    out = Packages("dpkg")
    for stanza in re.split(rb"\n\s*\n", status):
        fields: dict[bytes, bytes] = {}
        for line in stanza.splitlines():
            m = _FIELD.match(line)
            if m:
                fields[m.group(1).lower()] = m.group(2).strip()
        name = fields.get(b"package", b"").decode(errors="replace")
        state = fields.get(b"status", b"install ok installed").split()
        if not name or (state and state[-1] not in (b"installed", b"half-configured",
                                                    b"unpacked", b"triggers-awaited",
                                                    b"triggers-pending")):
            continue
        source = fields.get(b"source", b"").split(b" ")[0].decode(errors="replace") or name
        out.names.add(name)
        out.sources.setdefault(source, set()).add(name)
    return out


# ----------------------------------------------------------------------------- rewrites
class _Ids:
    def __init__(self):
        self.n = 0

    def next(self, kind: str) -> str:
        self.n += 1
        return f"oval:{SLICE_NS}:{kind}:{self.n}"


def map_sources(doc: etree._Element, packages: Packages) -> dict[str, str]:
    """Debian's trap: a dpkginfo test of an object named after a SOURCE package tests, instead,
    every installed binary built from it: its object becomes one named by a constant variable
    of those binaries (var_check "at least one", the shape Ubuntu's feeds use) and the test
    holds when at least one of them is below the fix (check "at least one"). One object per
    source, shared by all its tests: oscap collects each binary once. Test ids are kept, so
    criteria need no change. Returns test id → the source it names (findings name both)."""
    ns = {"d": OVAL_DEF}
    tests_sec = doc.find("d:tests", ns)
    objects_sec = doc.find("d:objects", ns)
    if tests_sec is None or objects_sec is None:
        return {}
    objects = {o.get("id"): o for o in objects_sec}
    ids, sourced, by_source = _Ids(), {}, {}
    variables = None
    for test in tests_sec:
        if _local(test.tag) != "dpkginfo_test":
            continue
        ref = test.find("{*}object")
        obj = objects.get(ref.get("object_ref")) if ref is not None else None
        name_el = obj.find("{*}name") if obj is not None else None
        if (name_el is None or name_el.get("var_ref")
                or name_el.get("operation", "equals") != "equals"):
            continue
        source = name_el.text or ""
        binaries = packages.sources.get(source, set())
        if not binaries or binaries == {source}:
            continue
        oid = by_source.get(source)
        if oid is None:
            if variables is None:
                variables = doc.find("d:variables", ns)
                if variables is None:
                    variables = etree.SubElement(doc, f"{{{OVAL_DEF}}}variables")
            var = etree.SubElement(variables, f"{{{OVAL_DEF}}}constant_variable", {
                "id": ids.next("var"), "version": "1", "datatype": "string",
                "comment": f"installed binaries built from source {source}"})
            for binary in sorted(binaries):
                etree.SubElement(var, f"{{{OVAL_DEF}}}value").text = binary
            o = etree.SubElement(objects_sec, obj.tag, {
                "id": ids.next("obj"), "version": "1",
                "comment": f"binaries of source {source}"})
            etree.SubElement(o, name_el.tag, {"var_ref": var.get("id"),
                                              "var_check": "at least one"})
            oid = by_source[source] = o.get("id")
        ref.set("object_ref", oid)
        test.set("check", "at least one")
        sourced[test.get("id")] = source
    return sourced


def accept_unreadable_key(doc: etree._Element) -> int:
    """Red Hat's trap: a `signature_keyid equals KEY` state also accepts the key id oscap
    reports when it cannot read one ("0"). Returns how many states were rewritten."""
    n = 0
    for el in doc.iter("{*}signature_keyid"):
        if el.get("operation", "equals") != "equals" or el.get("var_ref") or not el.text:
            continue
        key = el.text.strip()
        el.set("operation", "pattern match")
        el.text = f"^({re.escape(key)}|{UNREADABLE_KEY_ID})$"
        n += 1
    return n


# ------------------------------------------------------------------------------ results
@dataclass
class Evaluation:
    findings: list[CveFinding]
    unevaluated: dict[str, int]       # kind → definitions oscap could not decide offline
    definitions: int                   # evaluated (in the slice)
    true: set[str]                     # true definition ids (for equality tests)


def severity_of(text: str) -> str:
    return SEVERITIES.get((text or "").strip().lower(), "unknown")


def _strip_epoch(evr: str) -> str:
    return evr[2:] if evr.startswith("0:") else evr


def parse_results(results_path: str, sourced: dict[str, str] | None = None) -> Evaluation:
    """Findings from an `oscap oval eval --results` file: one per true definition and
    vulnerable package, with the installed version (the item oscap collected), the fixed
    version (the state's "less than" value) and the feed's severity."""
    sourced = sourced or {}
    tree = etree.parse(results_path, _PARSER)
    ns = {"d": OVAL_DEF, "r": OVAL_RES}
    root = tree.getroot()
    defs_el = {d.get("id"): d for d in root.iterfind(".//d:definitions/d:definition", ns)}
    tests_el = {t.get("id"): t for t in root.iterfind(".//d:tests/*", ns)}
    objects_el = {o.get("id"): o for o in root.iterfind(".//d:objects/*", ns)}
    states_el = {s.get("id"): s for s in root.iterfind(".//d:states/*", ns)}
    system = root.find(".//r:results/r:system", ns)
    if system is None:
        raise FeedError("oscap wrote OVAL results without a system section")
    items = {i.get("id"): i for i in system.iterfind(f".//{{{OVAL_SC}}}system_data/*")}
    test_res = {t.get("test_id"): t for t in system.iterfind("r:tests/r:test", ns)}
    for tid, t in tests_el.items():
        res = test_res.get(tid)
        if (res is not None and res.get("result") == "true" and t.get("check") == "none satisfy"
                and "must be installed" in (t.get("comment") or "")):
            raise FeedError(f"the feed does not apply to this image: its check "
                            f"\"{t.get('comment')}\" is true (another distribution owns the "
                            f"release file), and every definition would be true")
    findings, unevaluated, true = [], {}, set()
    for d in system.iterfind("r:definitions/r:definition", ns):
        did, result = d.get("definition_id"), d.get("result", "unknown")
        defn = defs_el.get(did)
        if defn is None or defn.get("class") not in ("vulnerability", "patch"):
            continue
        if result == "false":
            continue
        if _running_kernel(defn, tests_el):
            # Decided by the running kernel: the node's, never the image's. Offline oscap
            # drops the uname test (not applicable), so an unfixed kernel CVE would come back
            # true for every image (measured): counted, never reported or hidden silently.
            unevaluated["kernel"] = unevaluated.get("kernel", 0) + 1
            continue
        if result != "true":
            kind = _undecided_kind(defn, tests_el)
            unevaluated[kind] = unevaluated.get(kind, 0) + 1
            continue
        true.add(did)
        findings += _findings_of(defn, tests_el, objects_el, states_el, test_res, items,
                                 sourced)
    return Evaluation(findings, unevaluated, len(defs_el), true)


def _running_kernel(defn, tests_el) -> bool:
    """A definition that tests the running kernel: a variable_test (Ubuntu's kernel version
    computed from uname) or a uname_test with a state. Debian's stateless "architecture
    independent" uname test is not one."""
    for c in defn.iter(f"{{{OVAL_DEF}}}criterion"):
        t = tests_el.get(c.get("test_ref"))
        if t is None:
            continue
        local = _local(t.tag)
        if local == "variable_test" or (local == "uname_test" and t.find("{*}state") is not None):
            return True
    return False


def _undecided_kind(defn, tests_el) -> str:
    kinds = set()
    for c in defn.iter(f"{{{OVAL_DEF}}}criterion"):
        t = tests_el.get(c.get("test_ref"))
        kinds.add(_local(t.tag) if t is not None else "missing")
    if "uname_test" in kinds or "variable_test" in kinds:
        return "kernel"           # the running kernel: the node's, never the image's
    if kinds & {"rpminfo_test", "dpkginfo_test"}:
        return "package"
    return "other"


def _findings_of(defn, tests_el, objects_el, states_el, test_res, items, sourced) -> list:
    meta = defn.find(f"{{{OVAL_DEF}}}metadata")
    title = (meta.findtext(f"{{{OVAL_DEF}}}title") or "").strip() if meta is not None else ""
    refs = [r for r in meta.iterfind(f"{{{OVAL_DEF}}}reference")] if meta is not None else []
    cves = tuple(dict.fromkeys(
        [r.get("ref_id", "") for r in refs if r.get("source", "").upper() == "CVE"]
        + [(c.text or "").strip() for c in defn.iterfind(f".//{{{OVAL_DEF}}}advisory/"
                                                          f"{{{OVAL_DEF}}}cve")]))
    cves = tuple(c for c in cves if c)
    advisory_ids = [r.get("ref_id", "") for r in refs if r.get("source", "").upper()
                    in ("RHSA", "USN", "DSA", "DLA", "RHBA", "RHEA", "ELSA", "ALSA")]
    ident = (advisory_ids[0] if advisory_ids else (cves[0] if cves else defn.get("id")))
    sev_text = ""
    if meta is not None:
        sev_text = meta.findtext(f".//{{{OVAL_DEF}}}advisory/{{{OVAL_DEF}}}severity") or ""
    severity = severity_of(sev_text)
    out, seen = [], set()
    for c in defn.iter(f"{{{OVAL_DEF}}}criterion"):
        tid = c.get("test_ref")
        res = test_res.get(tid)
        test = tests_el.get(tid)
        if res is None or test is None or res.get("result") != "true":
            continue
        if _local(test.tag) not in ("dpkginfo_test", "rpminfo_test"):
            continue
        refs_st = [states_el.get(s.get("state_ref")) for s in test.iterfind("{*}state")]
        fixed = ""
        for st in refs_st:
            evr = st.find("{*}evr") if st is not None else None
            if evr is not None and evr.get("operation") == "less than" and evr.text:
                fixed = _strip_epoch(evr.text.strip())
        if refs_st and not fixed:
            continue   # a release or signature test; a test with no state: present, unfixed
        obj = objects_el.get((test.find("{*}object") if test.find("{*}object") is not None
                              else etree.Element("x")).get("object_ref", ""))
        feed_pkg = sourced.get(tid, "")
        for ti in res.iterfind(f"{{{OVAL_RES}}}tested_item"):
            if refs_st and ti.get("result") != "true":
                continue        # (a test without a state: every item found counts)
            item = items.get(ti.get("item_id"))
            if item is None:
                continue
            binary = item.findtext("{*}name") or ""
            installed = _strip_epoch(item.findtext("{*}evr") or _version_of(item))
            package = feed_pkg or binary or ((obj.findtext("{*}name") or "") if obj is not None
                                             else "")
            k = (package, binary, installed)
            if k in seen:
                continue
            seen.add(k)
            out.append(CveFinding(id=ident, package=package, installed=installed, fixed=fixed,
                                  severity=severity, title=title, definition=defn.get("id"),
                                  binary=binary if binary != package else "", cves=cves))
    return out


def _version_of(item) -> str:
    v, r = item.findtext("{*}version") or "", item.findtext("{*}release") or ""
    return f"{v}-{r}" if v and r else v


# ---------------------------------------------------------------------------- evaluating
def rpm_packages(root: str, rpm_db: str, timeout_s: float = 60.0) -> Packages:
    """Installed rpm names, read by rpm itself from the image's database (chroots into the
    root, like oscap's rpminfo probe: needs CAP_SYS_CHROOT)."""
    dbpath = "/" + (rpm_db or "var/lib/rpm").strip("/")
    try:
        proc = subprocess.run(["rpm", "--root", root, "--dbpath", dbpath, "-qa", "--qf",
                               "%{NAME}\\n"], capture_output=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FeedError(f"cannot list the image's rpm packages: {e}") from e
    if proc.returncode != 0:
        raise FeedError("cannot list the image's rpm packages: "
                        + proc.stderr.decode(errors="replace").strip()[-300:])
    names = {n for n in proc.stdout.decode(errors="replace").split() if n}
    return Packages("rpm", names, {n: {n} for n in names})


def packages_of(root: str, package_db: str) -> Packages:
    if package_db.startswith("rpm:"):
        return rpm_packages(root, package_db.removeprefix("rpm:"))
    from .identify import read_file_bytes
    status = read_file_bytes(root, "var/lib/dpkg/status", 256 << 20) or b""
    return dpkg_packages(status)


def _write(doc: etree._Element, path: str) -> None:
    # Indented: oscap 1.3.7's OVAL reader segfaults on the same document without whitespace
    # between elements (measured: SIGSEGV; pretty-printed, it evaluates).
    etree.ElementTree(doc).write(path, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _probe(index: FeedIndex, work: str, env: dict, settings) -> dict[str, str]:
    """oscap's result on this image for each probe test of the feed (one short run)."""
    from . import oscap
    doc = index.probe_document()
    path = os.path.join(work, "cve-probe.xml")
    _write(doc, path)
    results = os.path.join(work, "cve-probe-results.xml")
    proc = oscap._run(["oscap", "oval", "eval", "--skip-valid", "--results", results, path],
                      env, settings.timeout_s, "oscap oval eval (CVE feed probe)", work)
    if proc.returncode != 0 or not os.path.exists(results):
        raise oscap.failure("oscap oval eval of the CVE feed's release checks", proc)
    tree = etree.parse(results, _PARSER)
    return {t.get("test_id"): t.get("result", "unknown") for t in tree.iterfind(
        f".//{{{OVAL_RES}}}results/{{{OVAL_RES}}}system/{{{OVAL_RES}}}tests/{{{OVAL_RES}}}test")}


def evaluate(root: str, work: str, index: FeedIndex, *, kind: str, package_db: str,
             arch: str = "", settings=None, whole: bool = False) -> Evaluation:
    """Evaluate the feed's slice for this root's packages with `oscap oval eval` (whole=True:
    every definition, for the equality tests), the source-name and signature-key rewrites
    applied. Raises FeedError or oscap.ScanError."""
    from . import oscap
    settings = settings or oscap.OscapSettings()
    packages = packages_of(root, package_db)
    rpm_db = package_db.removeprefix("rpm:") if package_db.startswith("rpm:") else ""
    env = oscap._env(root, work, arch, rpm_db)
    if whole:
        defs = index.all_definitions()
    else:
        probe = _probe(index, work, env, settings) if index.meta.get("probe_tests") else None
        defs = index.definitions_for(packages.match_names(), probe)
    doc = index.document(defs)
    sourced = map_sources(doc, packages) if kind == "debian" else {}
    if kind == "redhat" or package_db.startswith("rpm:"):
        accept_unreadable_key(doc)
    slice_path = os.path.join(work, "cve-definitions.xml")
    _write(doc, slice_path)
    del doc
    results = os.path.join(work, "cve-results.xml")
    proc = oscap._run(["oscap", "oval", "eval", "--skip-valid", "--results", results,
                       slice_path], env, settings.timeout_s, "oscap oval eval (CVE feed)", work)
    if proc.returncode != 0 or not os.path.exists(results):
        raise oscap.failure("oscap oval eval of the CVE feed", proc)
    try:
        return parse_results(results, sourced)
    except etree.XMLSyntaxError as e:
        raise FeedError(f"oscap wrote unreadable OVAL results: {e}") from e
