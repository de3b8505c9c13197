"""Build real OCI image layouts byte by byte, for tests.

Why write layers with tarfile/gzip/hashlib instead of using a container engine: tests must
control every byte (numeric uid/gid, exact modes such as a 0666 /etc/shadow, whiteouts,
hostile paths, digests that lie), and an engine would normalise exactly those things away.
No pytest in here, so the same code can build images from a shell or a script.

Verdicts measured with oscap 1.3.7 and ssg-debian 0.1.76 (``ssg-debian12-ds.xml``), profile
``xccdf_org.ssgproject.content_profile_standard`` (44 rules), root with ``/.dockerenv``,
``OSCAP_PROBE_ROOT`` and an empty ``APT_CONFIG`` (see :func:`scan_root`):

* Only 18 rules apply to a container root: ``file_{owner,groupowner,permissions}_etc_{passwd,
  group,shadow,gshadow}`` (12, medium), ``file_permissions_systemmap`` (low) and the dpkg checks
  ``package_{inetutils-telnetd,telnetd,telnetd-ssl}_removed`` (high), ``package_{nis,ntpdate}_
  removed`` (low). The other 26 (sshd, sysctl, auditd, cron, rsyslog, ntp, partitions) sit under
  groups with the ``#system_with_kernel`` platform or need a machine, and are notapplicable.
* Good synthetic root and good debootstrap root: 18 pass, 26 notapplicable, 0 fail, rc 0.
* Bad synthetic root and bad debootstrap root: rc 2, failing
  ``xccdf_org.ssgproject.content_rule_file_permissions_etc_shadow`` (medium) and
  ``xccdf_org.ssgproject.content_rule_package_inetutils-telnetd_removed`` (high). Their
  ``PermitRootLogin yes`` is *not* detected: ``sshd_disable_root_login`` is notapplicable.
* A missing ``/etc/shadow`` or ``var/lib/dpkg/status`` gives *pass* (vacuous), not an error.
* Foreign architecture: a package whose dpkg status says ``Architecture: arm64`` is invisible to
  the dpkginfo probe on an amd64 host (false pass of ``package_*_removed``) unless APT_CONFIG
  also sets ``APT::Architecture "arm64";``. ``scan_root(arch=...)`` does that.
"""
from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tests.builders import REPO

REPO_ROOT = REPO
STANDARD_PROFILE = "xccdf_org.ssgproject.content_profile_standard"
RULE_PREFIX = "xccdf_org.ssgproject.content_rule_"
DATASTREAM_NAME = "ssg-debian12-ds.xml"

MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"

#: Every tar entry gets this mtime, so identical content gives identical digests.
FIXED_MTIME = 1_700_000_000
FIXED_CREATED = "2023-11-14T22:13:20Z"
SHADOW_GID = 42

#: Rules the bad synthetic/debootstrap roots fail (rule id -> severity), measured with oscap.
BAD_ROOT_FAILS = {
    RULE_PREFIX + "file_permissions_etc_shadow": "medium",
    RULE_PREFIX + "package_inetutils-telnetd_removed": "high",
}
SEVERITY_RANK = {"unknown": 0, "info": 0, "low": 1, "medium": 2, "high": 3}


# --------------------------------------------------------------------------- paths

def content_dir() -> Path:
    """Where the SCAP datastreams live: $SCAPGATE_CONTENT_DIR, else <repo>/.state/content."""
    return Path(os.environ.get("SCAPGATE_CONTENT_DIR") or REPO_ROOT / ".state" / "content")


def datastream_path() -> Path:
    """The Debian 12 datastream; scripts/install-content.sh puts it there."""
    return content_dir() / DATASTREAM_NAME


def cache_dir() -> Path:
    """Root of the test image cache: $SCAPGATE_CACHE_DIR, else /var/cache/scapgate-test."""
    return Path(os.environ.get("SCAPGATE_CACHE_DIR") or "/var/cache/scapgate-test")


def sha256_digest(data: bytes) -> str:
    """OCI digest string of some bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- tar entries

@dataclass(frozen=True)
class Entry:
    """One tar member written verbatim: no path cleaning, so hostile names survive.

    kind is one of file, dir, symlink, hardlink, char, block, fifo. ``link`` is the target of
    a symlink or hardlink.
    """
    path: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    link: str = ""
    major: int = 0
    minor: int = 0


_TAR_TYPES = {
    "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def file(path: str, data: bytes | str = b"", mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    """A regular file; str data is UTF-8 encoded."""
    if isinstance(data, str):
        data = data.encode()
    return Entry(path, "file", data, mode, uid, gid)


def directory(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    """A directory entry (tarfile adds the trailing slash)."""
    return Entry(path, "dir", mode=mode, uid=uid, gid=gid)


def symlink(path: str, target: str, uid: int = 0, gid: int = 0) -> Entry:
    """A symlink; target is stored as given (absolute or ../ targets included)."""
    return Entry(path, "symlink", mode=0o777, uid=uid, gid=gid, link=target)


def hardlink(path: str, target: str) -> Entry:
    """A hardlink to an earlier member named target."""
    return Entry(path, "hardlink", link=target)


def chardev(path: str, major: int, minor: int, mode: int = 0o666) -> Entry:
    """A character device node, e.g. chardev('dev/null', 1, 3)."""
    return Entry(path, "char", mode=mode, major=major, minor=minor)


def blockdev(path: str, major: int, minor: int, mode: int = 0o660) -> Entry:
    """A block device node, e.g. blockdev('dev/sda', 8, 0)."""
    return Entry(path, "block", mode=mode, major=major, minor=minor)


def fifo(path: str, mode: int = 0o644) -> Entry:
    """A named pipe."""
    return Entry(path, "fifo", mode=mode)


def whiteout(path: str) -> Entry:
    """OCI whiteout deleting path from lower layers: dir/.wh.name (an empty file)."""
    head, _, name = path.rstrip("/").rpartition("/")
    return Entry(f"{head}/.wh.{name}" if head else f".wh.{name}", "file", mode=0o644)


def opaque(dirpath: str) -> Entry:
    """OCI opaque whiteout: hides everything lower layers put in dirpath."""
    return Entry(dirpath.rstrip("/") + "/.wh..wh..opq", "file", mode=0o644)


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    """TarInfo with numeric ids only, full mode bits and the fixed mtime."""
    info = tarfile.TarInfo(entry.path)
    info.type = _TAR_TYPES[entry.kind]
    info.mode, info.uid, info.gid = entry.mode & 0o7777, entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mtime = FIXED_MTIME
    info.linkname = entry.link
    info.devmajor, info.devminor = entry.major, entry.minor
    info.size = len(entry.data) if entry.kind == "file" else 0
    return info


# --------------------------------------------------------------------------- layers

@dataclass(frozen=True)
class Layer:
    """A layer blob plus what a manifest will *declare* about it.

    digest/size are the declared values; they equal the blob's real ones unless the layer came
    from :func:`mismatched_layer`. diff_id is the sha256 of the uncompressed tar (config).
    """
    blob: bytes
    digest: str
    size: int
    diff_id: str
    media_type: str = MT_LAYER_GZIP

    @property
    def actual_digest(self) -> str:
        """The real digest of the blob bytes (differs from digest when tampered)."""
        return sha256_digest(self.blob)


class _HashingWriter(io.RawIOBase):
    """Write-through that hashes the uncompressed tar stream (diff_id) on its way to gzip."""

    def __init__(self, sink):
        self.sink, self.sha = sink, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.sink.write(b)
        return len(b)


class _LayerWriter:
    """Context manager yielding a streaming TarFile; .layer holds the result afterwards."""

    def __init__(self, compresslevel: int = 6):
        self.compresslevel = compresslevel
        self.layer: Layer | None = None

    def __enter__(self) -> tarfile.TarFile:
        self.buf = io.BytesIO()
        self.gz = gzip.GzipFile(fileobj=self.buf, mode="wb", mtime=0, filename="",
                                compresslevel=self.compresslevel)
        self.hw = _HashingWriter(self.gz)
        self.tar = tarfile.open(fileobj=self.hw, mode="w|", format=tarfile.PAX_FORMAT)
        return self.tar

    def __exit__(self, exc_type, *_):
        self.tar.close()
        self.gz.close()
        if exc_type is None:
            blob = self.buf.getvalue()
            self.layer = Layer(blob, sha256_digest(blob), len(blob),
                               "sha256:" + self.hw.sha.hexdigest())
        return False


def layer_from_entries(entries: Iterable[Entry], *, compresslevel: int = 6) -> Layer:
    """Gzip tar of exactly these entries, in this order, names untouched (hostile ones too)."""
    writer = _LayerWriter(compresslevel)
    with writer as tar:
        for entry in entries:
            data = io.BytesIO(entry.data) if entry.kind == "file" else None
            tar.addfile(_tarinfo(entry), data)
    return writer.layer


def _dir_entries(root: Path, exclude: Sequence[str]) -> Iterable[tuple[str, Path]]:
    """(relative name, path) for everything under root, sorted, parents before children."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames
                             if _rel(rel_dir, d) not in exclude)
        for name in sorted(dirnames + [f for f in filenames if _rel(rel_dir, f) not in exclude]):
            yield _rel(rel_dir, name), Path(dirpath, name)


def _rel(rel_dir: str, name: str) -> str:
    return name if rel_dir == "." else f"{rel_dir}/{name}"


def _tarinfo_from_stat(name: str, path: Path, st: os.stat_result, seen: dict) -> tarfile.TarInfo | None:
    """TarInfo for one on-disk object; hardlinked files after the first become LNKTYPE."""
    kind = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
            stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo"}.get(stat.S_IFMT(st.st_mode))
    if kind is None:  # sockets cannot be in a tar
        return None
    entry = Entry(name, kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                  link=os.readlink(path) if kind == "symlink" else "",
                  major=os.major(st.st_rdev) if kind in ("char", "block") else 0,
                  minor=os.minor(st.st_rdev) if kind in ("char", "block") else 0)
    if kind == "file" and st.st_nlink > 1:
        first = seen.setdefault((st.st_dev, st.st_ino), name)
        if first != name:
            entry = dataclasses.replace(entry, kind="hardlink", link=first)
    info = _tarinfo(entry)
    info.size = st.st_size if entry.kind == "file" else 0
    return info


def layer_from_dir(root: str | os.PathLike, *, exclude: Sequence[str] = (),
                   compresslevel: int = 6) -> Layer:
    """Gzip tar of a directory tree, keeping numeric uid/gid, all mode bits (setuid, 0666),
    symlinks, hardlinks and device nodes exactly; mtimes fixed so the digest is reproducible.

    exclude holds relative paths to leave out (with everything below them). xattrs are not
    copied. The root directory itself is not an entry, as in images built by engines.
    """
    root, seen = Path(root), {}
    writer = _LayerWriter(compresslevel)
    with writer as tar:
        for name, path in _dir_entries(root, tuple(exclude)):
            info = _tarinfo_from_stat(name, path, path.lstat(), seen)
            if info is None:
                continue
            if info.type == tarfile.REGTYPE:
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return writer.layer


def mismatched_layer(layer: Layer, *, what: str = "digest", size: int | None = None) -> Layer:
    """A layer whose manifest entry lies about its blob, to test digest verification.

    what="digest": the blob is swapped for another valid gzip tar (an extra file) while the
    declared digest and diff_id stay the original's; declared size matches the new blob, so
    only the digest check can catch it. what="size": true blob and digest, declared size
    wrong (default real size + 1, or ``size``).
    """
    if what == "size":
        return dataclasses.replace(layer, size=layer.size + 1 if size is None else size)
    if what != "digest":
        raise ValueError(f"what must be 'digest' or 'size', not {what!r}")
    evil = layer_from_entries([file("tampered", b"this blob is not the one the manifest names\n")])
    return dataclasses.replace(layer, blob=evil.blob, size=len(evil.blob))


def read_layer_names(layer: Layer) -> list[str]:
    """Member names of a layer in order, for assertions about what was written."""
    with tarfile.open(fileobj=io.BytesIO(layer.blob), mode="r:gz") as tar:
        return [m.name for m in tar.getmembers()]


# --------------------------------------------------------------------------- OCI layout

def _blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexpart = digest.partition(":")
    return layout / "blobs" / algo / hexpart


def _put_blob(layout: Path, data: bytes, digest: str | None = None) -> tuple[str, int]:
    """Store bytes under their digest (or a declared, possibly false, one)."""
    digest = digest or sha256_digest(data)
    path = _blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)
    return digest, len(data)


def _canonical_json(obj) -> bytes:
    """Deterministic JSON so the same image always has the same digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _load_index(layout: Path) -> dict:
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    path = layout / "index.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}


def _tag(layout: Path, descriptor: dict, tag: str | None) -> None:
    """Add a descriptor to index.json, replacing whatever held the same tag."""
    index = _load_index(layout)
    if tag is not None:
        descriptor = {**descriptor, "annotations": {REF_NAME: tag}}
        index["manifests"] = [m for m in index["manifests"]
                              if m.get("annotations", {}).get(REF_NAME) != tag]
    index["manifests"].append(descriptor)
    (layout / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))


def _platform(os_: str, arch: str) -> dict:
    """OCI platform object; arch may carry a variant as 'arm64/v8'."""
    arch, _, variant = arch.partition("/")
    return {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}


def write_image(layout_dir: str | os.PathLike, tag: str | None, layers: Sequence[Layer], *,
                os: str = "linux", arch: str = "amd64", config: dict | None = None) -> str:
    """Write config, manifest and layer blobs into an OCI layout; tag it (None = untagged).

    Returns the manifest digest, which is what the registry will report for the pushed tag
    (push with --preserve-digests). ``config`` overrides the image's runtime config section.
    """
    layout = Path(layout_dir)
    _load_index(layout)
    for layer in layers:
        _put_blob(layout, layer.blob, layer.digest)
    cfg = {"created": FIXED_CREATED, **_platform(os, arch),
           "config": config or {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                                "Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
           "history": [{"created": FIXED_CREATED, "created_by": "tests/imagebuild.py"} for _ in layers]}
    cfg_digest, cfg_size = _put_blob(layout, _canonical_json(cfg))
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
                "config": {"mediaType": MT_CONFIG, "digest": cfg_digest, "size": cfg_size},
                "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
                           for layer in layers]}
    digest, size = _put_blob(layout, _canonical_json(manifest))
    _tag(layout, {"mediaType": MT_MANIFEST, "digest": digest, "size": size,
                  "platform": _platform(os, arch)}, tag)
    return digest


def write_index(layout_dir: str | os.PathLike, tag: str,
                manifests: Sequence[tuple[str, str, str]]) -> str:
    """Write a multi-platform image index over manifests already in the layout.

    manifests: (manifest digest, os, arch) triples; arch may be 'arm64/v8'. Returns the index
    digest.
    """
    layout = Path(layout_dir)
    entries = [{"mediaType": MT_MANIFEST, "digest": digest,
                "size": _blob_path(layout, digest).stat().st_size,
                "platform": _platform(os_, arch)} for digest, os_, arch in manifests]
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries}
    digest, size = _put_blob(layout, _canonical_json(index))
    _tag(layout, {"mediaType": MT_INDEX, "digest": digest, "size": size}, tag)
    return digest


# --------------------------------------------------------------------------- synthetic roots

OS_RELEASE_BOOKWORM = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"""

OS_RELEASE_ALPINE = """\
NAME="Alpine Linux"
ID=alpine
VERSION_ID=3.20.3
PRETTY_NAME="Alpine Linux v3.20"
HOME_URL="https://alpinelinux.org/"
BUG_REPORT_URL="https://gitlab.alpinelinux.org/alpine/aports/-/issues"
"""

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUP = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nshadow:x:42:\nnogroup:x:65534:\n"
SHADOW = "".join(f"{u}:*:19800:0:99999:7:::\n" for u in ("root", "daemon", "bin", "sys", "nobody"))
GSHADOW = "".join(f"{g}:*::\n" for g in ("root", "daemon", "bin", "sys", "shadow", "nogroup"))
LOGIN_DEFS = """\
MAIL_DIR        /var/mail
FAILLOG_ENAB    yes
ENV_SUPATH      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV_PATH        PATH=/usr/local/bin:/usr/bin:/bin
TTYGROUP        tty
TTYPERM         0600
UMASK           022
PASS_MAX_DAYS   99999
PASS_MIN_DAYS   0
PASS_WARN_AGE   7
UID_MIN         1000
UID_MAX         60000
GID_MIN         1000
GID_MAX         60000
ENCRYPT_METHOD  SHA512
"""
SSHD_CONFIG_BAD = "Include /etc/ssh/sshd_config.d/*.conf\nPermitRootLogin yes\nUsePAM yes\n"


def dpkg_stanza(package: str, version: str, arch: str = "amd64", source: str = "") -> str:
    """One 'install ok installed' paragraph of var/lib/dpkg/status."""
    src = f"Source: {source}\n" if source else ""
    return (f"Package: {package}\nStatus: install ok installed\nPriority: optional\n"
            f"Section: misc\nInstalled-Size: 100\nMaintainer: Debian <debian@example.org>\n"
            f"Architecture: {arch}\n{src}Version: {version}\nDescription: {package}\n"
            f" Synthetic entry written by tests/imagebuild.py.\n\n")


def dpkg_status(arch: str = "amd64", *, telnetd: bool = False, sshd: bool = False) -> str:
    """A small dpkg status; telnetd/sshd add the packages the bad root is caught with."""
    text = (dpkg_stanza("base-files", "12.4+deb12u11", arch)
            + dpkg_stanza("login", "1:4.13+dfsg1-1+b1", arch, "shadow")
            + dpkg_stanza("passwd", "1:4.13+dfsg1-1+b1", arch, "shadow"))
    if sshd:
        text += dpkg_stanza("openssh-server", "1:9.2p1-2+deb12u6", arch, "openssh")
    if telnetd:
        text += dpkg_stanza("inetutils-telnetd", "2:2.4-2+deb12u1", arch, "inetutils")
    return text


def _host_dpkg_tables() -> list[Entry]:
    """dpkg's cputable/ostable/tupletable: libapt (dpkginfo probe) needs them in the root."""
    src = Path("/usr/share/dpkg")
    return [file(f"usr/share/dpkg/{name}", (src / name).read_bytes())
            for name in ("cputable", "ostable", "tupletable")]


def _debian_dirs() -> list[Entry]:
    return [directory(d) for d in ("etc", "usr", "usr/lib", "usr/share", "usr/share/dpkg",
                                   "var", "var/lib", "var/lib/dpkg")]


def synthetic_debian_entries(*, bad: bool = False, arch: str = "amd64") -> list[Entry]:
    """Entries of the ~13-file Debian 12 root (see :func:`synthetic_debian_root`)."""
    shadow_mode = 0o666 if bad else 0o640
    entries = _debian_dirs() + [
        file("etc/debian_version", "12.11\n"),
        file("usr/lib/os-release", OS_RELEASE_BOOKWORM),
        symlink("etc/os-release", "../usr/lib/os-release"),
        file("etc/passwd", PASSWD), file("etc/group", GROUP),
        file("etc/shadow", SHADOW, shadow_mode, 0, SHADOW_GID),
        file("etc/gshadow", GSHADOW, 0o640, 0, SHADOW_GID),
        file("etc/login.defs", LOGIN_DEFS),
        file("var/lib/dpkg/status", dpkg_status(arch, telnetd=bad, sshd=bad)),
    ] + _host_dpkg_tables()
    if bad:
        entries += [directory("etc/ssh"), file("etc/ssh/sshd_config", SSHD_CONFIG_BAD)]
    return entries


def non_debian_entries() -> list[Entry]:
    """An Alpine-like root: the Debian content must find nothing applicable in it."""
    return [directory("etc"), directory("lib"), directory("lib/apk"), directory("lib/apk/db"),
            file("etc/os-release", OS_RELEASE_ALPINE), file("etc/alpine-release", "3.20.3\n"),
            file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            file("etc/group", "root:x:0:root\nshadow:x:42:\n"),
            file("etc/shadow", "root:*::0:::::\n", 0o666, 0, SHADOW_GID),
            file("lib/apk/db/installed", "P:musl\nV:1.2.5-r0\nA:x86_64\n\n")]


def materialize(entries: Iterable[Entry], root: str | os.PathLike) -> Path:
    """Create entries on disk under root with their exact owner and mode (needs root for
    chown and device nodes). Whiteout entries become plain files: this writes, not applies."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for e in entries:
        if ".." in Path(e.path).parts:
            raise ValueError(f"refusing to materialize {e.path!r} outside {root}")
        path = root / e.path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        _create(e, path, root)
        if e.kind != "hardlink":
            os.chown(path, e.uid, e.gid, follow_symlinks=False)
        if e.kind not in ("symlink", "hardlink"):
            os.chmod(path, e.mode)
    return root


def _create(e: Entry, path: Path, root: Path) -> None:
    if e.kind == "dir":
        path.mkdir(exist_ok=True)
    elif e.kind == "file":
        path.write_bytes(e.data)
    elif e.kind == "symlink":
        path.symlink_to(e.link)
    elif e.kind == "hardlink":
        os.link(root / e.link, path)
    else:
        fmt = {"char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}[e.kind]
        os.mknod(path, fmt | e.mode, os.makedev(e.major, e.minor))


def synthetic_debian_root(dir: str | os.PathLike, *, bad: bool = False, arch: str = "amd64") -> Path:
    """Write the synthetic Debian 12 root that reproduces the standard-profile verdicts in
    about a second. Good: 18 pass, 0 fail. bad=True: /etc/shadow 0666 and inetutils-telnetd
    (+ openssh-server with PermitRootLogin yes) -> fails BAD_ROOT_FAILS. No /.dockerenv: the
    scanner adds the container marker, not the image."""
    return materialize(synthetic_debian_entries(bad=bad, arch=arch), dir)


def non_debian_root(dir: str | os.PathLike) -> Path:
    """Write the Alpine-like root: every Debian 12 rule is notapplicable and oscap exits 0."""
    return materialize(non_debian_entries(), dir)


# --------------------------------------------------------------------------- scenarios

@dataclass(frozen=True)
class BuiltImage:
    """An image in a local OCI layout and the verdict it must get (pass/fail/notapplicable)."""
    name: str
    layout: Path
    tag: str
    digest: str
    expect: str
    fails: dict = field(default_factory=dict)


def _replace(entries: list[Entry], path: str, **changes) -> list[Entry]:
    return [dataclasses.replace(e, **changes) if e.path == path else e for e in entries]


def two_layer_fix_layers() -> list[Layer]:
    """Lower layer ships /etc/shadow 0666 (fails); the upper one rewrites it 0640 root:shadow.
    A scanner that reads only the base layer, or merges wrongly, sees a fail; right is pass."""
    lower = _replace(synthetic_debian_entries(), "etc/shadow", mode=0o666)
    upper = [directory("etc"), file("etc/shadow", SHADOW, 0o640, 0, SHADOW_GID)]
    return [layer_from_entries(lower), layer_from_entries(upper)]


def whiteout_layers() -> list[Layer]:
    """Lower: /etc/shadow 0666 (fails). Upper: etc/.wh.shadow deletes it. Without shadow the
    shadow rules pass (vacuously), so ignoring the whiteout is the only way to fail."""
    lower = _replace(synthetic_debian_entries(), "etc/shadow", mode=0o666)
    return [layer_from_entries(lower), layer_from_entries([directory("etc"), whiteout("etc/shadow")])]


def opaque_layers() -> list[Layer]:
    """Lower: inetutils-telnetd in the dpkg status (high fail). Upper: only
    var/lib/dpkg/.wh..wh..opq (plus an empty info/), as when a final stage strips the
    package database. The verdict depends on the marker alone: ignored, the stale status
    fails; applied, no status is left and the package rules pass (vacuously)."""
    lower = _replace(synthetic_debian_entries(), "var/lib/dpkg/status",
                     data=dpkg_status(telnetd=True).encode())
    lower += [directory("var/lib/dpkg/info"),
              file("var/lib/dpkg/info/inetutils-telnetd.list", "/usr/sbin/telnetd\n")]
    upper = [directory("var"), directory("var/lib"), directory("var/lib/dpkg"),
             opaque("var/lib/dpkg"), directory("var/lib/dpkg/info")]
    return [layer_from_entries(lower), layer_from_entries(upper)]


def build_synthetic_images(layout_dir: str | os.PathLike) -> dict[str, BuiltImage]:
    """All synthetic scenario images in one OCI layout, each under its own tag."""
    layout = Path(layout_dir)
    good = [layer_from_entries(synthetic_debian_entries())]
    bad = [layer_from_entries(synthetic_debian_entries(bad=True))]
    plain = {"good": (good, "pass", {}), "bad": (bad, "fail", BAD_ROOT_FAILS),
             "two_layer": (two_layer_fix_layers(), "pass", {}),
             "whiteout": (whiteout_layers(), "pass", {}), "opaque": (opaque_layers(), "pass", {}),
             "nondebian": ([layer_from_entries(non_debian_entries())], "notapplicable", {})}
    built = {name: BuiltImage(name, layout, name, write_image(layout, name, layers), expect, fails)
             for name, (layers, expect, fails) in plain.items()}
    built["multiarch"] = _multiarch(layout, good)
    return built


def _multiarch(layout: Path, good: list[Layer]) -> BuiltImage:
    """Index: linux/amd64 -> good root, linux/arm64 -> bad root (dpkg arch arm64). Per-arch
    manifests are also tagged multiarch-amd64 / multiarch-arm64 (umoci unpacks by tag)."""
    bad_arm = [layer_from_entries(synthetic_debian_entries(bad=True, arch="arm64"))]
    amd = write_image(layout, "multiarch-amd64", good, arch="amd64")
    arm = write_image(layout, "multiarch-arm64", bad_arm, arch="arm64")
    digest = write_index(layout, "multiarch", [(amd, "linux", "amd64"), (arm, "linux", "arm64")])
    return BuiltImage("multiarch", layout, "multiarch", digest, "pass (amd64) / fail (arm64)",
                      {"arm64": BAD_ROOT_FAILS})


# --------------------------------------------------------------------------- scanning

@dataclass(frozen=True)
class RuleResult:
    result: str
    severity: str


@dataclass(frozen=True)
class Scan:
    """rc of oscap xccdf eval and each rule's result, keyed by full rule id."""
    rc: int
    rules: dict

    def with_result(self, result: str) -> dict:
        return {k: v.severity for k, v in self.rules.items() if v.result == result}

    def failing(self, min_severity: str = "medium") -> dict:
        """Failing rules at or above a severity: what a gate would deny on."""
        floor = SEVERITY_RANK[min_severity]
        return {k: sev for k, sev in self.with_result("fail").items()
                if SEVERITY_RANK.get(sev, 0) >= floor}


def scan_root(root: str | os.PathLike, datastream: str | os.PathLike | None = None, *,
              profile: str = STANDARD_PROFILE, arch: str | None = None) -> Scan:
    """Run oscap on an unpacked root the way DESIGN.md says is right, independently of the
    webhook code: /.dockerenv marker, OSCAP_PROBE_ROOT, neutral APT_CONFIG (+ the image's
    dpkg architecture when given). Note: the dpkginfo probe writes var/cache/apt/*.bin."""
    root = Path(root)
    (root / ".dockerenv").touch()
    with tempfile.TemporaryDirectory(prefix="scan-") as tmp:
        apt_conf = _neutral_apt_config(Path(tmp), arch)
        arf = Path(tmp) / "arf.xml"
        env = {**os.environ, "OSCAP_PROBE_ROOT": str(root), "APT_CONFIG": str(apt_conf)}
        proc = subprocess.run(
            ["oscap", "xccdf", "eval", "--skip-valid", "--profile", profile, "--results-arf",
             str(arf), str(datastream or datastream_path())],
            env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode not in (0, 2):
            raise RuntimeError(f"oscap rc={proc.returncode}: {proc.stderr[-2000:]}")
        return Scan(proc.returncode, parse_arf(arf))


def _neutral_apt_config(tmp: Path, arch: str | None) -> Path:
    """APT config that ignores the host's apt.conf.d (docker-clean hides every package)."""
    parts = tmp / "apt.conf.d"
    parts.mkdir()
    text = f'Dir::Etc::parts "{parts}";\nDir::Etc::main "/dev/null";\n'
    if arch:
        text += f'APT::Architecture "{arch}";\n'
    path = tmp / "apt.conf"
    path.write_text(text)
    return path


def parse_arf(path: str | os.PathLike) -> dict:
    """rule id -> RuleResult from the ARF's TestResult, without the ~1,000 notselected rules
    (the ARF lists every rule of the benchmark, not only the profile's)."""
    from lxml import etree  # runtime dependency of the project; imported lazily

    ns = {"arf": "http://scap.nist.gov/schema/asset-reporting-format/1.1",
          "xccdf": "http://checklists.nist.gov/xccdf/1.2"}
    tree = etree.parse(str(path))
    results = {rr.get("idref"): RuleResult(rr.findtext("xccdf:result", namespaces=ns),
                                           rr.get("severity", "unknown"))
               for rr in tree.iterfind(".//arf:report//xccdf:TestResult/xccdf:rule-result", ns)}
    return {k: v for k, v in results.items() if v.result != "notselected"}


def umoci_unpack(layout: str | os.PathLike, tag: str, dest: str | os.PathLike) -> Path:
    """Apply an image's layers (whiteouts included) into dest/ with umoci raw unpack, as the
    pipeline does; run as root so ownership is kept. dest must not exist yet."""
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(dest)],
                   check=True, capture_output=True, text=True, timeout=600)
    return Path(dest)


# --------------------------------------------------------------------------- debootstrap

DEBIAN_SUITE = "bookworm"
BAD_PACKAGES = ("openssh-server", "inetutils-telnetd")
RECIPE_VERSION = 1  # bump when layer writing or the cache format changes

#: Turns a fresh debootstrap into the bad root. $1 = root, remaining args = packages.
BAD_SCRIPT = r"""
set -eu
root=$1; shift
chr() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
chr apt-get -q update
chr apt-get -q -y --no-install-recommends install "$@"
rm -f "$root/usr/sbin/policy-rc.d"
sed -i 's/^#\?PermitRootLogin.*/PermitRootLogin yes/' "$root/etc/ssh/sshd_config"
grep -qx 'PermitRootLogin yes' "$root/etc/ssh/sshd_config"
chmod 666 "$root/etc/shadow"
"""

#: Makes a root look like a published image: no device nodes, no apt lists or .debs.
FINISH_SCRIPT = r"""
set -eu
root=$1
rm -rf "$root"/dev/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
rm -f "$root"/var/cache/apt/archives/*.deb
"""


@dataclass(frozen=True)
class CachedImage:
    """A finished image in the cache: skopeo source is oci:<layout>:<tag>."""
    kind: str
    layout: Path
    tag: str
    digest: str
    fails: dict

    @property
    def expect(self) -> str:
        """Verdict under the standard profile: the bad image fails, the good one passes."""
        return "fail" if self.fails else "pass"


def debian_mirror() -> str:
    """The Debian archive URI the system's apt already uses (never hard-coded here)."""
    for src in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for para in src.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", para, re.M)
            suites = re.search(r"^Suites:(.*)$", para, re.M)
            if uris and suites and "security" not in uris.group(1) and DEBIAN_SUITE in suites.group(1):
                return uris.group(1)
    legacy = Path("/etc/apt/sources.list")
    for line in legacy.read_text().splitlines() if legacy.exists() else []:
        m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + DEBIAN_SUITE + r"\s", line + " ")
        if m and "security" not in m.group(1):
            return m.group(1)
    raise RuntimeError("no Debian mirror for %s in /etc/apt/sources.list(.d)" % DEBIAN_SUITE)


def _host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def debian_recipe(kind: str) -> dict:
    """Everything that changes the built image; its hash names the cache entry."""
    base = {"version": RECIPE_VERSION, "tool": "debootstrap", "variant": "minbase",
            "suite": DEBIAN_SUITE, "mirror": debian_mirror(), "arch": _host_arch(),
            "finish": FINISH_SCRIPT, "compresslevel": 1}
    if kind == "good":
        return base
    if kind == "bad":
        return {**base, "bad_script": BAD_SCRIPT, "packages": list(BAD_PACKAGES)}
    raise ValueError(f"kind must be 'good' or 'bad', not {kind!r}")


def recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(_canonical_json(recipe)).hexdigest()


def _load_cached(kind: str, path: Path) -> CachedImage | None:
    meta = path / "image.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    return CachedImage(kind, path, info["tag"], info["digest"], BAD_ROOT_FAILS if kind == "bad" else {})


def debootstrap_root(kind: str = "good", *, cache: str | os.PathLike | None = None) -> CachedImage:
    """The real Debian 12 image (good, or bad = + openssh-server, inetutils-telnetd,
    PermitRootLogin yes, shadow 0666) as a cached OCI layout, built on first use.

    Bad fails BAD_ROOT_FAILS with the standard profile; its sshd setting is not checked
    (notapplicable on images). Measured: both kinds built in 59 s on an idle 2-core machine
    (debootstrap 35 s, chroot apt 9 s, two gzip-1 layers; 97 s under load); layers 51 MB
    good, 73 MB bad; a cache hit is a JSON read (6 ms).
    """
    return debootstrap_roots((kind,), cache=cache)[kind]


def debootstrap_roots(kinds: Sequence[str] = ("good", "bad"), *,
                      cache: str | os.PathLike | None = None) -> dict[str, CachedImage]:
    """Cached debootstrap images by kind; missing ones share a single debootstrap run. A
    file lock serialises concurrent builders; each entry appears by atomic rename."""
    images = Path(cache or cache_dir()) / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = {k: images / recipe_hash(debian_recipe(k)) for k in kinds}
    found = {k: _load_cached(k, p) for k, p in paths.items()}
    if all(found.values()):
        return found
    with open(images / ".debootstrap.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [k for k, p in paths.items() if _load_cached(k, p) is None]
        if missing:
            _build_debian(missing, paths, images)
    return {k: _load_cached(k, p) for k, p in paths.items()}


def _build_debian(kinds: list[str], paths: dict[str, Path], images: Path) -> None:
    """debootstrap once into a temp dir beside the cache, derive each kind, publish."""
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=images))
    try:
        base = work / "base"
        _debootstrap(base)
        for kind in kinds:
            root = work / kind
            subprocess.run(["cp", "-a", "--", str(base), str(root)], check=True)
            if kind == "bad":
                _sh(BAD_SCRIPT, root, *BAD_PACKAGES)
            _sh(FINISH_SCRIPT, root)
            _publish(kind, layer_from_dir(root, compresslevel=1), paths[kind], work)
    finally:
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def _debootstrap(target: Path) -> None:
    """The ≈35-60 s step; a separate function so tests can substitute a fake root."""
    proc = subprocess.run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(target),
                           debian_mirror()], capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"debootstrap failed rc={proc.returncode}: {proc.stdout[-3000:]}")


def _sh(script: str, *args) -> None:
    proc = subprocess.run(["sh", "-c", script, "sh", *map(str, args)],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"image script failed rc={proc.returncode}: {proc.stderr[-3000:]}")


def _publish(kind: str, layer: Layer, final: Path, work: Path) -> None:
    """Write the layout in the work dir, then rename it into place (all or nothing)."""
    staging = work / f"oci-{kind}"
    digest = write_image(staging, kind, [layer])
    recipe = debian_recipe(kind)
    (staging / "recipe.json").write_text(json.dumps(recipe, indent=1, sort_keys=True))
    (staging / "image.json").write_text(json.dumps(
        {"tag": kind, "digest": digest, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    if final.exists():  # a half entry cannot exist (rename is atomic); a stale one can be replaced
        shutil.rmtree(final)
    os.rename(staging, final)


def unmount_below(path: Path) -> None:
    """Lazy-unmount anything an interrupted debootstrap left mounted (proc, sys) before rmtree."""
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as fh:
        points = [line.split()[1] for line in fh if line.split()[1].startswith(prefix)]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)



# --------------------------------------------------------------------------- large debootstrap image

LARGE_PACKAGES = ("python3", "build-essential", "default-jre-headless")
LARGE_MIN_BYTES = 400_000_000   # installed size the benchmark's "large image" must reach

#: Turns an unpacked good root into the large one. $1 = root, remaining args = packages.
#: The good layout has no /dev nodes (FINISH_SCRIPT): maintainer scripts need a few, and
#: ca-certificates-java runs java, which wants /proc.
LARGE_SCRIPT = r"""
set -eu
root=$1; shift
chr() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }
mkdir -p "$root/dev" "$root/proc"
mknod -m 666 "$root/dev/null" c 1 3
mknod -m 666 "$root/dev/zero" c 1 5
mknod -m 666 "$root/dev/full" c 1 7
mknod -m 666 "$root/dev/random" c 1 8
mknod -m 666 "$root/dev/urandom" c 1 9
mknod -m 666 "$root/dev/tty" c 5 0
mount -t proc proc "$root/proc"
trap 'umount -l "$root/proc" 2>/dev/null || :' EXIT
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
chr apt-get -q update
chr apt-get -q -y --no-install-recommends install "$@"
chr apt-get -q clean
rm -f "$root/usr/sbin/policy-rc.d"
"""


def large_recipe() -> dict:
    """The large image: the good debootstrap recipe + LARGE_SCRIPT's packages."""
    return {**debian_recipe("good"), "derived": "large", "large_script": LARGE_SCRIPT,
            "packages": list(LARGE_PACKAGES), "min_bytes": LARGE_MIN_BYTES}


def debootstrap_large(*, cache: str | os.PathLike | None = None) -> CachedImage:
    """Debian 12 with python3, build-essential and default-jre-headless installed (≥ 400 MB
    on disk: a "large image" for the benchmarks), one gzip-1 layer, tag "large", cached like
    debootstrap_root under its recipe hash. Built from the cached good image (umoci raw
    unpack, then apt-get in a chroot), so a debootstrap run is needed only if that is missing.
    image.json also records build_seconds, installed_bytes (regular files, hardlinks once),
    du_bytes (`du -sb`), files (entries) and layer_bytes. Needs root.

    Measured: see image.json of the entry (the benchmark prints it)."""
    images = Path(cache or cache_dir()) / "images"
    images.mkdir(parents=True, exist_ok=True)
    recipe = large_recipe()
    key = recipe_hash(recipe)
    final = images / key
    hit = _load_cached("large", final)
    if hit:
        return hit
    good = debootstrap_root("good", cache=cache)
    with open(images / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _load_cached("large", final) is None:
            _build_large(good, recipe, final, images)
    return _load_cached("large", final)


def large_image_info(img: CachedImage) -> dict:
    """What debootstrap_large recorded about its image (sizes, file count, build time)."""
    return json.loads((Path(img.layout) / "image.json").read_text())


def _tree_stats(root: Path) -> tuple[int, int]:
    """(entries, bytes of regular files counting each hardlinked inode once) under root."""
    entries = size = 0
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            entries += 1
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                size += st.st_size
    return entries, size


def _build_large(good: CachedImage, recipe: dict, final: Path, images: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=images))
    try:
        start = time.monotonic()
        root = umoci_unpack(good.layout, good.tag, work / "root")
        _sh(LARGE_SCRIPT, root, *LARGE_PACKAGES)
        _sh(FINISH_SCRIPT, root)
        entries, size = _tree_stats(root)
        du = subprocess.run(["du", "-sb", str(root)], capture_output=True, text=True, check=True)
        du_bytes = int(du.stdout.split()[0])
        if du_bytes < LARGE_MIN_BYTES:
            raise RuntimeError(f"large root is only {du_bytes} bytes (du -sb), "
                               f"want ≥ {LARGE_MIN_BYTES}")
        layer = layer_from_dir(root, compresslevel=1)
        staging = work / "oci-large"
        digest = write_image(staging, "large", [layer])
        (staging / "recipe.json").write_text(json.dumps(recipe, indent=1, sort_keys=True))
        (staging / "image.json").write_text(json.dumps(
            {"tag": "large", "digest": digest, "built": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                     time.gmtime()),
             "build_seconds": round(time.monotonic() - start, 1), "installed_bytes": size,
             "du_bytes": du_bytes, "files": entries, "layer_bytes": layer.size,
             "packages": list(LARGE_PACKAGES)}))
        if final.exists():  # only a stale entry can be there (rename is atomic)
            shutil.rmtree(final)
        os.rename(staging, final)
    finally:
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)

def main(argv: Sequence[str] | None = None) -> int:
    """CLI to warm caches or look at images by hand:
    ``python tests/imagebuild.py synthetic DIR`` / ``python tests/imagebuild.py debian [good|bad]``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("what", choices=["synthetic", "debian"])
    parser.add_argument("arg", nargs="*")
    args = parser.parse_args(argv)
    if args.what == "synthetic":
        built = build_synthetic_images(args.arg[0] if args.arg else "oci-synthetic")
        rows = [(b.name, f"oci:{b.layout}:{b.tag}", b.digest, b.expect) for b in built.values()]
    else:
        built = debootstrap_roots(tuple(args.arg) or ("good", "bad"))
        rows = [(k, f"oci:{b.layout}:{b.tag}", b.digest, b.expect) for k, b in built.items()]
    for row in rows:
        print("\t".join(map(str, row)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
