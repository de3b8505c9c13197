"""The part of an image CVE matching reads, kept per digest: release files and package database.

A CVE feed changes every day; images do not. So when an image is scanned, the few files a
vulnerability feed's tests read — release files (os-release, debian_version, lsb-release,
redhat-release, …), dpkg's status (distroless status.d already merged by the pipeline) and
architecture tables, or the rpm database — are copied out of the unpacked root into
state/packages/<digest>.tar.gz (a few hundred KB for Debian, a few MB for an rpm database).
A new feed is evaluated from that, with no registry access and no unpack.

Files are read with identify's confined reader (the image's links resolved inside its root,
regular files only, each size bounded), written with fixed modes, so a hostile image can make
a snapshot neither escape nor grow past PER_FILE_LIMIT / TOTAL_LIMIT. The directory is bounded
like the reports: least recently used snapshots go first past `max_bytes`.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass

from .identify import list_dir, read_file_bytes
from .unpack import UnpackError

RELEASE_FILES = (
    "etc/os-release", "usr/lib/os-release", "etc/debian_version", "etc/lsb-release",
    "etc/redhat-release", "etc/system-release", "etc/system-release-cpe", "etc/centos-release",
    "etc/almalinux-release", "etc/rocky-release", "etc/oracle-release", "etc/fedora-release",
    "etc/SuSE-release", "etc/alpine-release",
)
DPKG_FILES = ("var/lib/dpkg/status", "usr/share/dpkg/cputable", "usr/share/dpkg/ostable",
              "usr/share/dpkg/tupletable")
PER_FILE_LIMIT = 256 << 20     # an rpmdb.sqlite of a big image is ~100 MB
TOTAL_LIMIT = 512 << 20
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Snapshot:
    """What is kept about one image besides its files."""

    digest: str
    product: str
    package_db: str          # dpkg | dpkg-status.d | rpm:var/lib/rpm | rpm:usr/lib/sysimage/rpm
    arch: str
    image: str
    taken_at: float
    files: int = 0
    bytes: int = 0


def files_of(root: str, package_db: str) -> list[str]:
    """Paths (inside the root) a snapshot keeps for this package database."""
    names = list(RELEASE_FILES)
    if package_db.startswith("dpkg"):
        names += DPKG_FILES
    elif package_db.startswith("rpm:"):
        db = package_db.removeprefix("rpm:").strip("/")
        names += [f"{db}/{n}" for n in list_dir(root, db)
                  if re.fullmatch(r"[A-Za-z0-9_.-]+", n) and not n.startswith("__db")]
    return names


class PackageStore:
    """state/packages: one tar.gz and one JSON sidecar per digest."""

    def __init__(self, state_dir: str, max_bytes: int = 1 << 30):
        self.dir = os.path.join(state_dir, "packages")
        self.max_bytes = max_bytes

    def _paths(self, digest: str) -> tuple[str, str]:
        if not _DIGEST.match(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        name = digest.replace(":", "-")
        return os.path.join(self.dir, f"{name}.tar.gz"), os.path.join(self.dir, f"{name}.json")

    def put(self, digest: str, root: str, *, product: str, package_db: str, arch: str,
            image: str) -> Snapshot:
        """Copy the CVE-relevant files of an unpacked root (written aside, then renamed)."""
        tar_path, meta_path = self._paths(digest)
        os.makedirs(self.dir, exist_ok=True)
        total, count = 0, 0
        fd, tmp = tempfile.mkstemp(prefix=".snap-", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz",
                                                          compresslevel=1) as tar:
                for rel in files_of(root, package_db):
                    data = read_file_bytes(root, rel, PER_FILE_LIMIT)
                    if data is None:
                        continue
                    if len(data) > PER_FILE_LIMIT:
                        raise UnpackError(f"{rel} is larger than {PER_FILE_LIMIT} bytes")
                    total += len(data)
                    if total > TOTAL_LIMIT:
                        raise UnpackError(f"the package database is larger than {TOTAL_LIMIT}"
                                          " bytes")
                    info = tarfile.TarInfo(rel)
                    info.size, info.mode, info.mtime = len(data), 0o644, 0
                    tar.addfile(info, io.BytesIO(data))
                    count += 1
            snap = Snapshot(digest, product, package_db, arch, image, time.time(), count, total)
            os.replace(tmp, tar_path)
            with open(f"{meta_path}.tmp", "w") as fh:
                json.dump(asdict(snap), fh)
            os.replace(f"{meta_path}.tmp", meta_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.trim()
        return snap

    def get(self, digest: str) -> Snapshot | None:
        tar_path, meta_path = self._paths(digest)
        try:
            with open(meta_path) as fh:
                meta = json.load(fh)
            if not os.path.exists(tar_path):
                return None
            return Snapshot(**{k: v for k, v in meta.items()
                               if k in Snapshot.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return None

    def extract(self, digest: str, dest: str) -> str:
        """Write the snapshot's files under dest (a fresh scratch directory): the root a CVE
        evaluation runs against. oscap's dpkginfo probe writes apt caches into it."""
        tar_path, _ = self._paths(digest)
        os.utime(tar_path)                       # recently used: trimmed last
        with tarfile.open(tar_path, "r:gz") as tar:
            tar.extractall(dest, filter="data")
        return dest

    def known(self) -> list[Snapshot]:
        """Every kept snapshot (the images a feed update re-judges), newest first."""
        out = []
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        for name in names:
            if name.endswith(".json") and name.startswith("sha256-"):
                snap = self.get(name[:-5].replace("-", ":", 1))
                if snap:
                    out.append(snap)
        return sorted(out, key=lambda s: -s.taken_at)

    def trim(self) -> int:
        """Least recently used snapshots go until the directory fits max_bytes."""
        files = []
        try:
            with os.scandir(self.dir) as it:
                for e in it:
                    if e.name.endswith(".tar.gz") and e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        files.append((st.st_mtime, st.st_size, e.path))
        except FileNotFoundError:
            return 0
        total, removed = sum(f[1] for f in files), 0
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            for p in (path, path[:-len(".tar.gz")] + ".json"):
                try:
                    os.unlink(p)
                except OSError:
                    pass
            total -= size
            removed += 1
        return removed
