"""Bounds for what scans leave on the state disk: the OCI layout cache and the reports.

The OCI cache (state/oci: one layout per platform digest, blobs shared by content address) is
what makes a rescan or an image sharing base layers cheap; reports (state/reports: gzipped ARF
and the HTML rendered from it) are what denial messages point developers to. Both grow with
every new image, so both are trimmed to a byte budget after each scan, least recently used
first.

Several scan processes share one state dir. A scan holds a shared flock on state/oci/.lock from
its fetch until its unpack ends (the only stages that read the layout); trimming the OCI cache
takes the lock exclusively and without waiting — when another scan holds it, this trim is
skipped and the next scan to finish tries again. Blobs no kept layout references (a fetch that
failed half-way, an evicted image's layers) are deleted only under that exclusive lock, so a
fetch in progress never loses a blob it has just written or decided to reuse.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from dataclasses import dataclass, field

log = logging.getLogger("scapgate.diskcache")


@dataclass
class TrimReport:
    """What one trim did (bytes are blob bytes on disk)."""

    before: int = 0
    after: int = 0
    layouts_removed: list[str] = field(default_factory=list)
    blobs_removed: int = 0
    skipped: bool = False


class OciCache:
    def __init__(self, state_dir: str, max_bytes: int):
        self.root = os.path.join(state_dir, "oci")
        self.blobs = os.path.join(self.root, "blobs", "sha256")
        self.layouts = os.path.join(self.root, "layouts")
        self.max_bytes = max_bytes

    def _lockfile(self):
        os.makedirs(self.root, exist_ok=True)
        return open(os.path.join(self.root, ".lock"), "a+b")

    @contextlib.contextmanager
    def in_use(self):
        """Held by a scan while it fetches and unpacks: no trim deletes anything meanwhile."""
        with self._lockfile() as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def touch(self, layout: str) -> None:
        """Mark a layout used now (eviction is least recently used first)."""
        try:
            os.utime(layout)
        except OSError:
            pass

    def trim(self) -> TrimReport:
        """Evict least recently used layouts until the blobs they keep fit max_bytes; delete
        every blob no kept layout references. Skipped (report.skipped) while a scan uses the
        cache."""
        report = TrimReport()
        with self._lockfile() as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                report.skipped = True
                return report
            try:
                self._trim_locked(report)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        if report.layouts_removed or report.blobs_removed:
            log.info("OCI cache trimmed from %d to %d bytes: %d layouts, %d blobs removed",
                     report.before, report.after, len(report.layouts_removed),
                     report.blobs_removed)
        return report

    def _sizes(self) -> dict[str, int]:
        sizes = {}
        try:
            with os.scandir(self.blobs) as it:
                for e in it:
                    try:
                        sizes[e.name] = e.stat(follow_symlinks=False).st_size
                    except OSError:
                        pass
        except FileNotFoundError:
            pass
        return sizes

    def _trim_locked(self, report: TrimReport) -> None:
        sizes = self._sizes()
        report.before = sum(sizes.values())
        entries = []
        try:
            with os.scandir(self.layouts) as it:
                for e in it:
                    if e.name.startswith("."):          # a fetch that died half-way
                        shutil.rmtree(e.path, ignore_errors=True)
                        continue
                    try:
                        entries.append((e.stat(follow_symlinks=False).st_mtime, e.path))
                    except OSError:
                        pass
        except FileNotFoundError:
            pass
        entries.sort(reverse=True)                      # most recently used first
        kept: set[str] = set()
        used = 0
        for _, path in entries:
            refs = self.references(path)
            extra = sum(sizes.get(h, 0) for h in refs - kept) if refs is not None else 0
            if refs is not None and used + extra <= self.max_bytes:
                kept |= refs
                used += extra
            else:
                shutil.rmtree(path, ignore_errors=True)
                report.layouts_removed.append(os.path.basename(path))
        for name in sizes.keys() - kept:
            try:
                os.unlink(os.path.join(self.blobs, name))
                report.blobs_removed += 1
            except OSError:
                pass
        report.after = used

    def references(self, layout: str) -> set[str] | None:
        """Hex digests of every blob a layout needs: manifests, configs, layers; None for a
        layout that cannot be read (it is evicted). Only manifests and indexes are opened."""
        refs: set[str] = set()
        try:
            with open(os.path.join(layout, "index.json"), encoding="utf-8") as fh:
                todo = list(json.load(fh).get("manifests", []))
            while todo:
                hexd = _hex(todo.pop()["digest"])
                if hexd in refs:
                    continue
                refs.add(hexd)
                with open(os.path.join(self.blobs, hexd), "rb") as fh:
                    doc = json.loads(fh.read(4 << 20))
                todo += doc.get("manifests", [])        # an index: its platform manifests
                if "config" in doc:
                    refs.add(_hex(doc["config"]["digest"]))
                refs.update(_hex(la["digest"]) for la in doc.get("layers", []))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return refs


def _hex(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexd


def trim_reports(reports_dir: str, max_bytes: int) -> int:
    """Delete the least recently written reports until the directory fits max_bytes; a
    denial pointing at a deleted report gets a 404 naming `scapgate scan` to reproduce it.
    Returns the number of files removed."""
    files = []
    try:
        with os.scandir(reports_dir) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if e.is_file(follow_symlinks=False):
                    files.append((st.st_mtime, st.st_size, e.path))
    except FileNotFoundError:
        return 0
    total = sum(f[1] for f in files)
    removed = 0
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        try:
            os.unlink(path)
            total -= size
            removed += 1
        except OSError:
            pass
    return removed
