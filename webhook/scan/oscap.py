"""Run OpenSCAP against an unpacked root and read what it found.

Every known way for oscap to report a silent pass is closed here (DESIGN.md, pitfalls): the
container marker, an isolated APT_CONFIG so the host's apt settings cannot hide packages, a
private HOME whose .rpmmacros names the image's RPM database (Debian's rpm looks in ~/.rpmdb
and would find no package in an RPM-based root), OSCAP_PROBE_ROOT always set, exit codes read
(0 / 2 / 1), and a scan where no rule passed or failed is an error, never a pass.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass

from isal import igzip
from lxml import etree

from .results import ContentSpec, OvalResult, RuleResult

NS = {
    "arf": "http://scap.nist.gov/schema/asset-reporting-format/1.1",
    "xccdf": "http://checklists.nist.gov/xccdf/1.2",
    "oval-res": "http://oval.mitre.org/XMLSchema/oval-results-5",
    "oval-def": "http://oval.mitre.org/XMLSchema/oval-definitions-5",
}
STDERR_LIMIT = 600
# Rules whose result says nothing about the image (still kept, for reports).
_PARSER = etree.XMLParser(huge_tree=True, resolve_entities=False, no_network=True)


class ScanError(Exception):
    """oscap could not evaluate the image; `permanent` when retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class OscapSettings:
    timeout_s: float = 300.0     # anssi high takes ~3 s on a minbase root; generous for big roots
    local_files: str | None = None  # --local-files DIR: offline copies of remote OVAL feeds


def version() -> str:
    """`oscap --version` first line's version, e.g. '1.3.7' (part of every scan key)."""
    try:
        out = subprocess.run(["oscap", "--version"], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    m = re.search(r"\(oscap\)\s+(\S+)", out)
    return m.group(1) if m else "unknown"


def prepare_root(root: str, work: str, arch: str = "") -> str:
    """Mark the root as a container and write an APT config that ignores the host's apt.conf.d.

    The image's architecture is given to apt: otherwise the dpkginfo probe cannot see packages
    of another architecture (an arm64 image scanned on amd64 would pass every package rule).
    Returns the APT_CONFIG path. Both live in the scan's scratch directory.
    """
    marker = os.path.join(root, ".dockerenv")
    if os.path.islink(marker) or (os.path.exists(marker) and not os.path.isfile(marker)):
        _remove(marker)
    with open(marker, "a"):
        pass
    empty = os.path.join(work, "apt-parts")
    os.makedirs(empty, exist_ok=True)
    conf = os.path.join(work, "apt.conf")
    with open(conf, "w") as fh:
        fh.write(f'Dir::Etc::parts "{empty}";\nDir::Etc::main "/dev/null";\n')
        if arch and arch.replace("-", "").isalnum():
            fh.write(f'APT::Architecture "{arch}";\n')
    return conf


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def rpm_home(work: str, rpm_db: str) -> str:
    """A HOME for oscap whose .rpmmacros points librpm at the image's database (a path inside
    the image: var/lib/rpm or usr/lib/sysimage/rpm). Debian's rpm macros set %_dbpath to
    ~/.rpmdb: without this the rpminfo probe sees no package in an RPM root and every package
    rule and OS check is silently false or notapplicable (measured: 249 of 249 rules)."""
    home = os.path.join(work, "home")
    os.makedirs(home, exist_ok=True)
    dbpath = "/" + (rpm_db or "var/lib/rpm").strip("/")
    if not re.fullmatch(r"/[A-Za-z0-9_./-]+", dbpath) or ".." in dbpath:
        dbpath = "/var/lib/rpm"
    with open(os.path.join(home, ".rpmmacros"), "w") as fh:
        fh.write(f"%_dbpath {dbpath}\n")
    return home


def _env(root: str, work: str, arch: str, rpm_db: str) -> dict[str, str]:
    """The environment every oscap run gets: the prepared root, the isolated APT config and
    the HOME whose .rpmmacros names the image's RPM database."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
    env.update(OSCAP_PROBE_ROOT=root, APT_CONFIG=prepare_root(root, work, arch),
               HOME=rpm_home(work, rpm_db))
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float, what: str,
         cwd: str) -> subprocess.CompletedProcess:
    """Run in its own process group, killed whole on timeout: children it started (a wrapper
    script's, a probe helper's) would otherwise live on after the timeout, unbounded."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True)
    except FileNotFoundError as e:
        raise ScanError("oscap is not installed") from e
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise ScanError(f"{what} took longer than {timeout:g} s") from e
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


_PERMANENT = ("no profile matching", "unable to parse xml", "parser error", "no such file",
              "unknown profile")


def failure(what: str, proc: subprocess.CompletedProcess) -> ScanError:
    """The ScanError for a failed oscap run: a crash or a full disk may pass (transient); broken
    content or a wrong profile fails the same way every time for this key (permanent)."""
    err = proc.stderr.decode(errors="replace").strip()[-STDERR_LIMIT:]
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = str(-proc.returncode)
        return ScanError(f"{what} was killed by signal {name}: {err}".rstrip(": "))
    if "no space left on device" in err.lower():
        return ScanError(f"scratch space is full while running {what}: {err}")
    permanent = any(s in err.lower() for s in _PERMANENT)
    return ScanError(f"{what} failed (exit {proc.returncode}): {err}", permanent=permanent)


def xccdf_eval(root: str, work: str, content: ContentSpec, settings: OscapSettings,
               arch: str = "", rpm_db: str = "") -> str:
    """Evaluate the profile; returns the ARF path. Exit 0 = no fail, 2 = some fail, else error."""
    env = _env(root, work, arch, rpm_db)
    arf = os.path.join(work, "results-arf.xml")
    cmd = ["oscap", "xccdf", "eval", "--skip-valid", "--profile", content.profile,
           "--results-arf", arf]
    if content.tailoring:
        cmd += ["--tailoring-file", content.tailoring]
    if settings.local_files:
        cmd += ["--local-files", settings.local_files]
    cmd.append(content.datastream)
    proc = _run(cmd, env, settings.timeout_s, "oscap xccdf eval", work)
    if proc.returncode not in (0, 2) or not os.path.exists(arf):
        raise failure("oscap xccdf eval", proc)
    return arf


def parse_arf(arf: str) -> tuple[list[RuleResult], float | None]:
    """Rule results with titles and severities from an ARF report."""
    try:
        tree = etree.parse(arf, _PARSER)
    except etree.XMLSyntaxError as e:
        raise ScanError(f"oscap wrote an unreadable ARF: {e}") from e
    titles = {}
    for rule in tree.iterfind(".//xccdf:Benchmark//xccdf:Rule", NS):
        t = rule.find("xccdf:title", NS)
        titles[rule.get("id")] = " ".join((t.text or "").split()) if t is not None else ""
    out = []
    for rr in tree.iterfind(".//arf:report//xccdf:TestResult/xccdf:rule-result", NS):
        rid = rr.get("idref")
        res = rr.find("xccdf:result", NS)
        if res is not None and res.text == "notselected":
            continue  # ~550 rules outside the profile: nothing about the image, only bytes
        out.append(RuleResult(id=rid, title=titles.get(rid, ""),
                              severity=rr.get("severity", "unknown"),
                              result=(res.text or "").strip() if res is not None else "unknown"))
    score_el = tree.find(".//arf:report//xccdf:TestResult/xccdf:score", NS)
    score = float(score_el.text) if score_el is not None and score_el.text else None
    return out, score


def oval_eval(root: str, work: str, definitions: str, settings: OscapSettings,
              arch: str = "", rpm_db: str = "") -> list[OvalResult]:
    """Evaluate an OVAL definitions file (a CVE feed); oscap exits 0 whatever the results, so
    the verdict is read from definition/@result in the results file."""
    env = _env(root, work, arch, rpm_db)
    results = os.path.join(work, f"oval-{os.path.basename(definitions)}.results.xml")
    cmd = ["oscap", "oval", "eval", "--skip-valid", "--results", results, definitions]
    proc = _run(cmd, env, settings.timeout_s, "oscap oval eval", work)
    if proc.returncode != 0 or not os.path.exists(results):
        raise failure(f"oscap oval eval of {os.path.basename(definitions)}", proc)
    return parse_oval(results)


def parse_oval(results: str) -> list[OvalResult]:
    try:
        tree = etree.parse(results, _PARSER)
    except etree.XMLSyntaxError as e:
        raise ScanError(f"oscap wrote unreadable OVAL results: {e}") from e
    meta = {}
    for d in tree.iterfind(".//oval-def:definitions/oval-def:definition", NS):
        title = d.findtext("oval-def:metadata/oval-def:title", "", NS).strip()
        refs = tuple(r.get("ref_id", "") for r in d.iterfind("oval-def:metadata/oval-def:reference", NS))
        meta[d.get("id")] = (title, d.get("class", ""), refs)
    out = []
    for d in tree.iterfind(".//oval-res:results//oval-res:definition", NS):
        title, klass, refs = meta.get(d.get("definition_id"), ("", "", ()))
        out.append(OvalResult(id=d.get("definition_id"), title=title, klass=klass,
                              result=d.get("result", "unknown"), references=refs))
    return out


def compress(path: str, dest: str) -> str:
    """Keep the ARF gzip-compressed (it embeds the 10 MB datastream): ISA-L at level 1, about
    a fifth of zlib level 6's time for a file 1.4x larger; written aside, then renamed, so a
    report being read is never half a file."""
    tmp = f"{dest}.{os.getpid()}.tmp"
    try:
        with open(path, "rb") as src, igzip.open(tmp, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def html_report(arf_gz: bytes, work: str, timeout: float = 120.0) -> bytes:
    """Render the HTML report from a stored ARF on demand (+2.7 s, so never during a scan)."""
    arf = os.path.join(work, "arf.xml")
    with open(arf, "wb") as fh:
        fh.write(gzip.decompress(arf_gz))
    out = os.path.join(work, "report.html")
    proc = _run(["oscap", "xccdf", "generate", "report", "--output", out, arf],
                {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, timeout, "oscap report", work)
    if proc.returncode != 0 or not os.path.exists(out):
        raise ScanError(f"oscap could not render the report: "
                        f"{proc.stderr.decode(errors='replace')[-STDERR_LIMIT:]}")
    with open(out, "rb") as fh:
        return fh.read()
