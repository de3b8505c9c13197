"""Which SCAP Security Guide product an unpacked image root is, from its release files.

Scanning with the wrong datastream exits 0 with every rule notapplicable (DESIGN "Pitfalls" 4),
so identification never guesses: evidence that disagrees raises IdentityError, and anything
without SSG content is "unsupported" with a reason. The root stays hostile after
rootfs.confine: every lookup resolves the image's links itself, one component at a time under
directory fds, so nothing outside the root is read, a FIFO or device is never opened, and a
10 MB os-release costs 64 KiB. A dozen small reads: well under a millisecond.
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

MAX_HOPS = 40               # symlinks followed in one lookup, as Linux (and rootfs.MAX_HOPS)
READ_LIMIT = 64 * 1024      # a release file is a few hundred bytes
EVIDENCE_CHARS = 200
FIELD_CHARS = 100           # distro / version / pretty: they end up in messages and logs
REFUSED = "refused: "       # evidence text of a file that exists but was not read

OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
RELEASE_FILES = (
    "etc/lsb-release", "etc/debian_version", "etc/redhat-release", "etc/centos-release",
    "etc/oracle-release", "etc/almalinux-release", "etc/fedora-release", "etc/system-release",
    "etc/SuSE-release", "etc/alpine-release",
)
_NAMED_RELEASE = RELEASE_FILES[2:9]     # files whose first line names a distribution
_RPM_FILES = ("rpmdb.sqlite", "Packages", "Packages.db")

FAMILIES: dict[str, tuple[str, ...]] = {
    "debian": ("debian11", "debian12", "debian13"),
    "ubuntu": ("ubuntu1604", "ubuntu1804", "ubuntu2004", "ubuntu2204", "ubuntu2404"),
    "rhel": ("rhel8", "rhel9", "rhel10"),
    "centos": ("centos8", "cs9", "cs10"),
    "almalinux": ("almalinux9",),
    "ol": ("ol7", "ol8", "ol9", "ol10"),
    "fedora": ("fedora",),
    "sle": ("sle12", "sle15"),
    "opensuse": ("opensuse",),
    "amazon": ("al2023",),
}
_FAMILY_OF = {product: fam for fam, products in FAMILIES.items() for product in products}

# os-release ID -> (product stem, majors of VERSION_ID with content)
_BY_MAJOR = {
    "debian": ("debian", ("11", "12", "13")), "rhel": ("rhel", ("8", "9", "10")),
    "almalinux": ("almalinux", ("9",)), "ol": ("ol", ("7", "8", "9", "10")),
    "sles": ("sle", ("12", "15")), "sled": ("sle", ("12", "15")),
}
_UBUNTU = ("16.04", "18.04", "20.04", "22.04", "24.04")
_RPM_IDS = ("rhel", "centos", "almalinux", "ol", "fedora", "sles", "sled", "opensuse", "amzn")
# words in a release file -> os-release IDs it fits (Oracle Linux ships a RHEL redhat-release)
_CLAIMS = (
    ("centos", ("centos",)), ("almalinux", ("almalinux",)), ("rocky", ("rocky",)),
    ("oracle linux", ("ol",)), ("red hat enterprise linux", ("rhel", "ol")),
    ("fedora", ("fedora",)), ("amazon linux", ("amzn",)), ("opensuse", ("opensuse",)),
    ("suse", ("sles", "sled", "opensuse")),
)
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPED = re.compile(r'\\(["\\$`])')
_NUMERIC = re.compile(r"(\d+)(?:\.\d+)*")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
T = TypeVar("T")


@dataclass(frozen=True)
class Identity:
    """What the root is and why we think so; product "" means no SSG content applies."""

    product: str
    distro: str
    version: str
    pretty: str
    package_db: str
    evidence: tuple[tuple[str, str], ...]
    reason: str = ""

    def describe(self) -> str:
        """One line for messages: "alpine 3.20.3 (ID=alpine VERSION_ID=3.20.3)"."""
        head = " ".join(part for part in (self.distro, self.version) if part)
        return f"{head} ({self._basis()})"

    def _basis(self) -> str:
        if any(p in OS_RELEASE and not t.startswith(REFUSED) for p, t in self.evidence):
            if self.version:
                return f"ID={self.distro} VERSION_ID={self.version}"
            return f"ID={self.distro}, no VERSION_ID"
        if self.evidence:
            return "no os-release; " + ", ".join(p for p, _ in self.evidence)
        return "no os-release, no package database"

    def to_dict(self) -> dict:
        """JSON-able, for ScanResult and the console."""
        return {"product": self.product, "distro": self.distro, "version": self.version,
                "pretty": self.pretty, "package_db": self.package_db,
                "evidence": [[path, text] for path, text in self.evidence],
                "reason": self.reason}


class IdentityError(Exception):
    """Contradictory evidence: the message names both sides; never a guess. Permanent."""

    permanent = True


class _Refused(Exception):
    """A path exists but must not be read (leaves the root, loops, not a regular file)."""


def family_of(product: str) -> str:
    """The FAMILIES key of an SSG product id; "" when unknown."""
    return _FAMILY_OF.get(product, "")


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines as os-release(5) writes them; quotes stripped, comments ignored."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and _KEY.fullmatch(key):
            out[key] = _unquote(value.strip())
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        inner = value[1:-1]
        return _ESCAPED.sub(r"\1", inner) if value[0] == '"' else inner
    return value.strip("\"'")


# ---------------------------------------------------------------- reading inside the root


def read_release_file(root: str, rel: str, limit: int = READ_LIMIT) -> str | None:
    """The text of rel, resolved inside root as a container would; None if missing or odd."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read(root_fd, rel, limit)
    except (OSError, _Refused):
        return None
    finally:
        os.close(root_fd)


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _close_all(fds: list[int]) -> None:
    while fds:
        os.close(fds.pop())


def _lookup(root_fd: int, rel: str, use: Callable[[int, str, os.stat_result], T]) -> T:
    """Resolve rel with root_fd as "/", following the image's links (absolute ones from the
    root), and pass the last component's directory fd, name and lstat to `use`. Raises
    _Refused for an escape or a loop, OSError when a component is missing."""
    dirs: list[int] = []        # fds of the directories walked into, innermost last
    todo, hops = _parts(rel), 0
    try:
        while todo:
            name, here = todo.pop(0), dirs[-1] if dirs else root_fd
            if name == "..":
                if not dirs:
                    raise _Refused("the path leaves the root")
                os.close(dirs.pop())
                continue
            st = os.stat(name, dir_fd=here, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_HOPS:
                    raise _Refused(f"more than {MAX_HOPS} symlinks (a loop)")
                target = os.readlink(name, dir_fd=here)
                if target.startswith("/"):
                    _close_all(dirs)
                todo[:0] = _parts(target)
            elif not todo:
                return use(here, name, st)
            elif stat.S_ISDIR(st.st_mode):
                dirs.append(os.open(name, _DIR_FLAGS, dir_fd=here))
            else:
                raise NotADirectoryError(f"{name} is not a directory")
        raise _Refused("not a regular file (the root directory)")
    finally:
        _close_all(dirs)


def read_file_bytes(root: str, rel: str, limit: int) -> bytes | None:
    """The bytes of rel (at most limit + 1, so callers see what is too big), resolved inside
    root as a container would; None if missing, not a regular file or outside the root."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _lookup(root_fd, rel,
                       lambda dir_fd, name, st: _read_at(dir_fd, name, st, limit + 1))
    except (OSError, _Refused):
        return None
    finally:
        os.close(root_fd)


def list_dir(root: str, rel: str) -> list[str]:
    """Names in directory rel, resolved inside root as a container would ([] if none)."""
    def names(dir_fd: int, name: str, st: os.stat_result) -> list[str]:
        if not stat.S_ISDIR(st.st_mode):
            return []
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        return _lookup(root_fd, rel, names)
    except (OSError, _Refused):
        return []
    finally:
        os.close(root_fd)


def _read(root_fd: int, rel: str, limit: int) -> str:
    return _lookup(root_fd, rel, lambda dir_fd, name, st: _read_at(
        dir_fd, name, st, limit)).decode("utf-8", errors="replace")


def _read_at(dir_fd: int, name: str, st: os.stat_result, limit: int) -> bytes:
    """Open only what lstat called a regular file, and check again on the open fd."""
    if not stat.S_ISREG(st.st_mode):
        raise _Refused(f"not a regular file ({_kind(st.st_mode)})")
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or now.st_ino != st.st_ino:
            raise _Refused("replaced while being opened")
        data = bytearray()
        while len(data) < limit:
            chunk = os.read(fd, min(limit - len(data), 1 << 16))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return bytes(data)


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISDIR, "directory"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _stat(root_fd: int, rel: str) -> os.stat_result | None:
    try:
        return _lookup(root_fd, rel, lambda _fd, _name, st: st)
    except (OSError, _Refused):
        return None


def _is(root_fd: int, rel: str, test: Callable[[int], bool]) -> bool:
    st = _stat(root_fd, rel)
    return st is not None and test(st.st_mode)


# ---------------------------------------------------------------- gathering evidence


@dataclass
class _Facts:
    """Everything read from the root, before any judgement."""

    evidence: list[tuple[str, str]] = field(default_factory=list)
    os_path: str = ""                                   # the os-release actually read
    osr: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # release file -> its text
    dbs: list[tuple[str, str]] = field(default_factory=list)  # (package_db, path) found
    busybox: bool = False

    def note(self, path: str, text: str) -> None:
        self.evidence.append((path, _snippet(text)))

    def kinds(self) -> set[str]:
        return {_db_kind(db) for db, _ in self.dbs}


def identify(root: str) -> Identity:
    """The SSG product of the unpacked root; raises IdentityError on contradictory evidence
    (and OSError when root itself cannot be opened: that is our fault, not the image's)."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        facts = _gather(root_fd)
    finally:
        os.close(root_fd)
    if facts.os_path:
        return _from_os_release(facts)
    return _without_os_release(facts)


def _gather(root_fd: int) -> _Facts:
    facts = _Facts()
    for rel in OS_RELEASE:
        text = _read_evidence(root_fd, rel, facts)
        if text is not None:
            facts.os_path, facts.osr = rel, parse_os_release(text)
            break
    for rel in RELEASE_FILES:
        text = _read_evidence(root_fd, rel, facts)
        if text is not None:
            facts.files[rel] = text
    facts.dbs = _package_dbs(root_fd)
    for _, path in facts.dbs:
        facts.note(path, "package database")
    if not facts.os_path and _is(root_fd, "bin/busybox", stat.S_ISREG):
        facts.busybox = True
        facts.note("bin/busybox", "present")
    return facts


def _read_evidence(root_fd: int, rel: str, facts: _Facts) -> str | None:
    """Read rel and note it; a missing file leaves no evidence, a refused one says why."""
    try:
        text = _read(root_fd, rel, READ_LIMIT)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except _Refused as exc:
        facts.note(rel, f"{REFUSED}{exc}")
        return None
    except OSError as exc:
        facts.note(rel, f"{REFUSED}{exc.strerror or exc}")
        return None
    facts.note(rel, text)
    return text


def _package_dbs(root_fd: int) -> list[tuple[str, str]]:
    found = []
    if _is(root_fd, "var/lib/dpkg/status", stat.S_ISREG):
        found.append(("dpkg", "var/lib/dpkg/status"))
    if _is(root_fd, "var/lib/dpkg/status.d", stat.S_ISDIR):
        found.append(("dpkg-status.d", "var/lib/dpkg/status.d"))
    rpm = _rpm_db(root_fd)
    if rpm:
        found.append(rpm)
    if _is(root_fd, "lib/apk/db/installed", stat.S_ISREG):
        found.append(("apk", "lib/apk/db/installed"))
    return found


def _rpm_db(root_fd: int) -> tuple[str, str] | None:
    """One rpm database: usr/lib/sysimage/rpm when var/lib/rpm is the same directory (a link,
    as on Fedora and RHEL 10), else var/lib/rpm where both exist apart (the older default)."""
    hits = {}
    for where in ("var/lib/rpm", "usr/lib/sysimage/rpm"):
        hits[where] = next((f"{where}/{name}" for name in _RPM_FILES
                            if _is(root_fd, f"{where}/{name}", stat.S_ISREG)), "")
    old, new = hits["var/lib/rpm"], hits["usr/lib/sysimage/rpm"]
    if new and (not old or _same_dir(root_fd, "var/lib/rpm", "usr/lib/sysimage/rpm")):
        return "rpm:usr/lib/sysimage/rpm", new
    return ("rpm:var/lib/rpm", old) if old else None


def _same_dir(root_fd: int, one: str, other: str) -> bool:
    a, b = _stat(root_fd, one), _stat(root_fd, other)
    return a is not None and b is not None and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _db_kind(db: str) -> str:
    """"dpkg-status.d" -> "dpkg", "rpm:var/lib/rpm" -> "rpm"."""
    return db.split(":")[0].split("-")[0]


# ---------------------------------------------------------------- judging


def _from_os_release(facts: _Facts) -> Identity:
    osr = facts.osr
    distro = _clean(osr.get("ID", "").lower()) or "linux"     # os-release(5)'s default
    version = _clean(osr.get("VERSION_ID", ""))
    pretty = _clean(osr.get("PRETTY_NAME") or f"{osr.get('NAME', '')} {osr.get('VERSION', '')}")
    if "ID" in osr:     # without an ID nothing is identified, so nothing can contradict
        _check(facts, distro, version)
    product, reason = _product(distro, version, osr.get("NAME", ""))
    if not product:
        reason = reason or f"no SCAP content for {distro} {version}".strip()
        if "ID" not in osr:
            reason = f"{facts.os_path} has no ID: {reason}"
    return Identity(product, distro, version, pretty or distro, _db_for(distro, facts),
                    tuple(facts.evidence), reason)


def _product(distro: str, version: str, name: str) -> tuple[str, str]:
    """(product, "") or ("", reason) when this distribution/version has no content."""
    major = version.split(".")[0]
    if distro == "debian" and not version:
        return "", "Debian testing/unstable (no VERSION_ID): no SCAP content"
    if distro == "alpine":
        return "", "no SCAP content exists for Alpine Linux"
    if distro == "ubuntu":
        product = f"ubuntu{version.replace('.', '')}" if version in _UBUNTU else ""
    elif distro == "centos":
        stream = "stream" in name.lower()
        product = f"cs{major}" if stream and major in ("9", "10") else (
            "centos8" if major == "8" else "")
    elif distro.startswith("opensuse"):
        product = "opensuse"
    elif distro in ("fedora", "amzn"):
        product = "fedora" if distro == "fedora" else ("al2023" if version == "2023" else "")
    else:
        stem, majors = _BY_MAJOR.get(distro, ("", ()))
        product = f"{stem}{major}" if major in majors else ""
    return product, ""


def _db_for(distro: str, facts: _Facts) -> str:
    """The database of the distribution's own kind (a missing one is fine: minimal images)."""
    want = _expected_db(distro)
    dbs = [db for db, _ in facts.dbs]
    if want:
        return next((db for db in dbs if _db_kind(db) == want), "")
    return dbs[0] if dbs else ""


def _expected_db(distro: str) -> str:
    if distro in ("debian", "ubuntu"):
        return "dpkg"
    if distro == "alpine":
        return "apk"
    return "rpm" if distro in _RPM_IDS or distro.startswith("opensuse") else ""


def _check(facts: _Facts, distro: str, version: str) -> None:
    """Raise IdentityError when another piece of evidence names another system."""
    side = f"{facts.os_path} says ID={distro}" + (f" VERSION_ID={version}" if version else "")
    _check_alpine(facts, distro, side)
    _check_dbs(facts, distro, side)
    if distro == "debian":
        _check_debian(facts, version, side)
    elif distro == "ubuntu":
        _check_ubuntu(facts, version, side)
    _check_release_files(facts, distro, version, side)


def _contradiction(side: str, other: str) -> IdentityError:
    return IdentityError(f"contradictory evidence: {side} but {other}")


def _check_alpine(facts: _Facts, distro: str, side: str) -> None:
    """Alpine's files with only an apk database: the os-release is the odd one out."""
    like = facts.osr.get("ID_LIKE", "").lower().split()
    if distro == "alpine" or "alpine" in like or "etc/alpine-release" not in facts.files:
        return
    if facts.kinds() & {"dpkg", "rpm"} or "apk" not in facts.kinds():
        return
    said = _first_line(facts.files["etc/alpine-release"])
    raise _contradiction(side, f"etc/alpine-release says {said!r} and the only package "
                               f"database is apk (lib/apk/db/installed)")


def _check_dbs(facts: _Facts, distro: str, side: str) -> None:
    want = _expected_db(distro)
    if not want or not facts.dbs or want in facts.kinds():
        return
    found = ", ".join(f"{_db_kind(db)} ({path})" for db, path in facts.dbs)
    raise _contradiction(side, f"the only package database found is {found}, not {want}")


def _check_debian(facts: _Facts, version: str, side: str) -> None:
    """debian_version must agree with VERSION_ID (testing: neither is a number)."""
    if "etc/lsb-release" in facts.files:
        lsb_id = parse_os_release(facts.files["etc/lsb-release"]).get("DISTRIB_ID", "")
        if lsb_id and lsb_id.lower() != "debian":
            raise _contradiction(side, f"etc/lsb-release says DISTRIB_ID={_clean(lsb_id)}")
    if "etc/debian_version" not in facts.files:
        return
    said = _first_line(facts.files["etc/debian_version"])
    numeric = _NUMERIC.fullmatch(said)
    if numeric and numeric.group(1) != version.split(".")[0]:
        raise _contradiction(side, f"etc/debian_version says {said!r}")
    if not numeric and version:
        raise _contradiction(side, f"etc/debian_version says {said!r} (testing/unstable)")


def _check_ubuntu(facts: _Facts, version: str, side: str) -> None:
    """lsb-release is what ubuntu content tests: it must say the same release."""
    if "etc/lsb-release" not in facts.files:
        return
    lsb = parse_os_release(facts.files["etc/lsb-release"])
    lsb_id, release = lsb.get("DISTRIB_ID", ""), lsb.get("DISTRIB_RELEASE", "")
    if lsb_id.lower() != "ubuntu" or release != version:
        raise _contradiction(side, f"etc/lsb-release says DISTRIB_ID={_clean(lsb_id)} "
                                   f"DISTRIB_RELEASE={_clean(release)}")
    codename, ours = lsb.get("DISTRIB_CODENAME", ""), facts.osr.get("VERSION_CODENAME", "")
    if codename and ours and codename != ours:
        raise _contradiction(f"{side} VERSION_CODENAME={_clean(ours)}",
                             f"etc/lsb-release says DISTRIB_CODENAME={_clean(codename)}")


def _check_release_files(facts: _Facts, distro: str, version: str, side: str) -> None:
    """A redhat-release (or similar) naming another distribution or another major."""
    major = version.split(".")[0]
    for rel in _NAMED_RELEASE:
        text = facts.files.get(rel)
        if text is None:
            continue
        claims = _claims(text)
        said = _first_line(text)
        if claims and not any(distro == c or distro.startswith(c + "-") for c in claims):
            raise _contradiction(side, f"{rel} says {said!r}")
        theirs = _release_major(text)
        if claims and theirs and major.isdigit() and theirs != major:
            raise _contradiction(side, f"{rel} says {said!r}")


def _claims(text: str) -> tuple[str, ...]:
    low = text[:EVIDENCE_CHARS].lower()
    return next((ids for words, ids in _CLAIMS if words in low), ())


def _release_major(text: str) -> str:
    found = (re.search(r"\brelease\s+(\d+)", text, re.IGNORECASE)
             or re.search(r"^VERSION\s*=\s*(\d+)", text, re.MULTILINE))
    return found.group(1) if found else ""


def _without_os_release(facts: _Facts) -> Identity:
    """No os-release: never a product, but say as precisely as possible what is there."""
    ev, dbs = tuple(facts.evidence), [db for db, _ in facts.dbs]
    if "etc/alpine-release" in facts.files or "apk" in dbs:
        ver = _clean(_first_line(facts.files.get("etc/alpine-release", "")))
        return Identity("", "alpine", ver, f"Alpine Linux {ver}".strip(),
                        "apk" if "apk" in dbs else "", ev,
                        "no SCAP content exists for Alpine Linux")
    rel = next((r for r in RELEASE_FILES if r in facts.files), "")
    if rel:
        return _from_release_file(facts, rel)
    db = dbs[0] if dbs else ""
    if facts.busybox:
        return Identity("", "busybox", "", "BusyBox", db, ev,
                        "a busybox image without a distribution (no os-release): "
                        "no SCAP content")
    if db:
        return Identity("", "none", "", "unknown operating system", db, ev,
                        f"no os-release or release file: a {_db_kind(db)} package database "
                        f"alone does not name the distribution")
    refused = "; ".join(f"{p} {t}" for p, t in facts.evidence)
    return Identity("", "none", "", "no operating system", "", ev,
                    "no operating system found (no os-release, no package database)"
                    + (f"; {refused}" if refused else ""))


def _from_release_file(facts: _Facts, rel: str) -> Identity:
    """Name what a lone release file says (old CentOS, Debian without os-release)."""
    text, dbs = facts.files[rel], [db for db, _ in facts.dbs]
    line = _clean(_first_line(text))
    if rel == "etc/lsb-release":
        lsb = parse_os_release(text)
        distro = _clean(lsb.get("DISTRIB_ID", "").lower()) or "unknown"
        version = _clean(lsb.get("DISTRIB_RELEASE", ""))
        line = _clean(lsb.get("DISTRIB_DESCRIPTION", "")) or line
    else:
        claims = _claims(text)
        distro = "debian" if rel == "etc/debian_version" else (
            claims[0] if claims else rel[4:].removesuffix("-release").lower())
        numeric = _NUMERIC.search(line)
        version = numeric.group(0) if numeric else ""
    return Identity("", distro, version, line or distro, dbs[0] if dbs else "",
                    tuple(facts.evidence),
                    f"no os-release; {rel} says {line!r}, which alone does not identify "
                    f"an SSG product")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _clean(value: str, limit: int = FIELD_CHARS) -> str:
    """Printable, one line, bounded: image text goes into messages and logs."""
    return "".join(c if c.isprintable() else " " for c in value).strip()[:limit]


def _snippet(text: str) -> str:
    cut = text.strip()[:EVIDENCE_CHARS]
    return "".join(c if c.isprintable() or c in "\n\t" else "?" for c in cut)
