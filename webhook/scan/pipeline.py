"""The scan pipeline: fetch → unpack → evaluate → parse, for one platform manifest digest.

Each stage is timed (the numbers go into the ScanResult and the `scapgate scan` progress lines).
Scratch lives on tmpfs when there is one and is removed whatever happened.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from . import oscap, reach as reach_mod
from .diskcache import OciCache, trim_reports
from .feeds import FeedStore, evaluate_snapshot
from .packages import PackageStore
from .identify import (OS_RELEASE, Identity, IdentityError, identify, parse_os_release,
                       read_release_file)
from .images import ImageRef
from .registry import Registry, RegistryError, TooLarge
from .results import ContentSet, ScanKey, ScanResult, error_result, unsupported_result
from .rootfs import UnpackError, UnpackLimits
from . import unpack as unpack_mod
from .partial import BlobMismatch, GrowingBlob, Partial, unpack_partial
from .reach import Reach
from .unpack import CorruptBlob, image_config, unpack

log = logging.getLogger("scapgate.pipeline")
PIPELINE_VERSION = "3"  # 3: content chosen per identified product; 2: image arch given to apt
Progress = Callable[[str, float], None]


def _default_scratch() -> str:
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


@dataclass
class PipelineSettings:
    state_dir: str                                  # OCI layout cache and reports live here
    scratch_dir: str = field(default_factory=_default_scratch)  # tmpfs: unpack is 3-4x faster
    limits: UnpackLimits = field(default_factory=UnpackLimits)
    oscap: oscap.OscapSettings = field(default_factory=oscap.OscapSettings)
    oci_cache_bytes: int = 2 << 30                  # OCI layouts kept for rescans/shared layers
    reports_bytes: int = 512 << 20                  # ARF/HTML reports kept for /reports
    cves: bool = True                               # evaluate the product's kept CVE feed
    packages_bytes: int = 1 << 30                   # package databases kept for re-judging
    feeds_dir: str = ""                             # "" = state_dir (scan --cve-feed: its own)
    cve_feed_max_bytes: int = 1 << 30               # a feed larger than this is refused
    cve_fetch_timeout_s: float = 300.0              # one feed download
    partial: bool = True                            # unpack only what the content can read


class Stages:
    """Runs and times named stages: `stage("unpack", fn, *args)`; times land in `.timings`
    and are reported to `progress` as each stage ends."""

    def __init__(self, progress: Progress | None = None):
        self.progress = progress
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self.timings[name] = round(time.perf_counter() - t0, 3)
        if self.progress:
            self.progress(name, self.timings[name])
        return out


class Pipeline:
    """Turns (image at digest, content) into a ScanResult. Thread-safe; holds no per-scan state."""

    def __init__(self, settings: PipelineSettings, registry: Registry | None = None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.registry = registry or Registry()
        self.clock = clock
        self._oscap_version: str | None = None
        self._keys: dict = {}
        self._layout_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.cache = OciCache(settings.state_dir, settings.oci_cache_bytes)
        self.feeds = FeedStore(settings.feeds_dir or settings.state_dir,
                               max_bytes=settings.cve_feed_max_bytes,
                               timeout_s=settings.cve_fetch_timeout_s)
        self.packages = PackageStore(settings.state_dir, settings.packages_bytes)

    def oscap_version(self) -> str:
        """`oscap --version`, asked once per process (it costs a subprocess)."""
        if self._oscap_version is not None:
            return self._oscap_version
        found = oscap.version()
        if found not in ("missing", "unknown"):    # asked again once oscap is back
            self._oscap_version = found
        return found

    def scanner_version(self) -> str:
        return f"openscap-{self.oscap_version()}+scapgate-pipeline-{PIPELINE_VERSION}"

    def key(self, digest: str, content: ContentSet) -> ScanKey:
        """The scan key of a digest under a policy's content set (remembered: asked for every
        image of every review). The set's digest covers every product's datastream, profile,
        tailoring and OVAL files; profile names the profiles, for people reading keys."""
        memo = (digest, content)
        hit = self._keys.get(memo)
        if hit is not None:
            return hit
        profiles = sorted({s.profile.rsplit("_profile_", 1)[-1] for _, s in content.entries})
        key = ScanKey(digest=digest, content_sha256=content.digest,
                      profile=",".join(profiles), tailoring_sha256="",
                      scanner_version=self.scanner_version())
        if self._oscap_version is not None:      # a key without a known scanner is not kept
            if len(self._keys) >= 10_000:
                self._keys.clear()
            self._keys[memo] = key
        return key

    # -- stages ---------------------------------------------------------------------------
    def layout_path(self, ref: ImageRef) -> str:
        return os.path.join(self.settings.state_dir, "oci", "layouts",
                            ref.digest.replace(":", "-"))

    def fetch(self, ref: ImageRef, docker_config: dict | None = None,
              started: Callable[[str], None] | None = None) -> tuple[str, str]:
        """Copy the platform manifest into the content-addressed cache; returns (layout, tag).
        started(directory) learns where skopeo writes the new layout (partial.GrowingBlob)."""
        assert ref.digest, "fetch needs a digest-pinned reference"
        oci = os.path.join(self.settings.state_dir, "oci")
        blobs = os.path.join(oci, "blobs")
        name = ref.digest.replace(":", "-")
        layout = os.path.join(oci, "layouts", name)
        if os.path.exists(os.path.join(layout, "index.json")):
            self.cache.touch(layout)
            return layout, "image"
        with self._lock_for(name):
            if os.path.exists(os.path.join(layout, "index.json")):
                self.cache.touch(layout)
                return layout, "image"
            os.makedirs(os.path.join(oci, "layouts"), exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.join(oci, "layouts"))
            if started is not None:
                started(tmp)
            try:
                cap = self.download_cap(ref, docker_config)
                self.registry.copy(ref, tmp, "image", blobs, docker_config=docker_config,
                                   max_blob_bytes=cap)
                local = os.path.join(tmp, "blobs")
                if os.path.isdir(local) and not os.path.islink(local):
                    shutil.rmtree(local)   # skopeo leaves an empty blobs/ beside a shared dir
                os.symlink(os.path.relpath(blobs, tmp), local)
                os.rename(tmp, layout)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return layout, "image"

    def download_cap(self, ref: ImageRef, docker_config: dict | None) -> int:
        """Check the manifest's declared layers against the limits before downloading any, and
        return the largest file skopeo may write (the largest declared blob, at least 4 MiB
        for manifests and configs; the byte limit when sizes are not declared)."""
        limits = self.settings.limits
        try:
            doc = json.loads(self.registry.raw_manifest(ref, docker_config=docker_config))
            layers = doc.get("layers")
            sizes = [int(x["size"]) for x in layers] + [int(doc["config"]["size"])]
        except (ValueError, TypeError, KeyError, AttributeError):
            return limits.max_bytes     # an index or an old schema: skopeo decides, capped
        if len(layers) > limits.max_layers:
            raise UnpackError(f"image {ref} has {len(layers)} layers "
                              f"(limit {limits.max_layers})")
        if sum(sizes) > limits.max_bytes or min(sizes) < 0:
            raise TooLarge(f"image {ref} declares {sum(sizes)} bytes of layers, past the "
                           f"unpack limit of {limits.max_bytes} bytes")
        return max(sizes + [4 << 20])

    def forget(self, digest: str) -> None:
        """Drop the cached layout of a digest (its blobs stay shared) so it is fetched again."""
        name = digest.replace(":", "-")
        layout = os.path.join(self.settings.state_dir, "oci", "layouts", name)
        with self._lock_for(name):
            shutil.rmtree(layout, ignore_errors=True)

    def _lock_for(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._layout_locks.setdefault(name, threading.Lock())

    def scan(self, ref: ImageRef, content: ContentSet, *, docker_config: dict | None = None,
             progress: Progress | None = None, key: ScanKey | None = None) -> ScanResult:
        """Scan a digest-pinned image. Failures come back as an error ScanResult (a value),
        so callers store them; only programming errors raise."""
        key = key or self.key(ref.digest, content)
        stage = Stages(progress)
        timings = stage.timings

        work = None
        try:
            os.makedirs(self.settings.scratch_dir, exist_ok=True)
            work = tempfile.mkdtemp(prefix="scapgate-scan-", dir=self.settings.scratch_dir)
            with self.cache.in_use():           # no trim deletes the layout before it is unpacked
                got = self.fetch_unpack(ref, docker_config, work, stage, content)
                if got is None:
                    layout, tag = stage("fetch", self.fetch, ref, docker_config)
                    arch, part = self.unpack(layout, tag, work, stage, content)
                else:
                    layout, tag, arch, part = got
                check = self.check_later(work, content, part, stage)
            try:
                result = self.evaluate(layout, tag, work, ref, content, key, timings, stage,
                                       arch=arch, unpacked=check.summary, ident=check.ident)
            except Exception:
                if not check.reason():      # the partial root was complete: a real failure
                    raise
                result = None
            why = check.reason()
            if not why:
                return result
            with self.cache.in_use():           # the rare case: evaluated again, in full
                if not os.path.exists(os.path.join(layout, "index.json")):
                    layout, tag = stage("fetch", self.fetch, ref, docker_config)
                root = os.path.join(work, "rootfs")
                shutil.rmtree(root, ignore_errors=True)
                stage("unpack-full", unpack, layout, tag, root, self.settings.limits)
            return self.evaluate(layout, tag, work, ref, content, key, timings, stage,
                                 arch=arch, unpacked=part.summary("full", why))
        except CorruptBlob as e:
            self.forget(ref.digest)
            return error_result(key, str(ref), str(e), permanent=False, now=self.clock())
        except (RegistryError, UnpackError, oscap.ScanError, IdentityError) as e:
            permanent = getattr(e, "permanent", isinstance(e, UnpackError))
            return error_result(key, str(ref), str(e), permanent=permanent, now=self.clock())
        except OSError as e:
            what = ("scratch or state disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT)
                    else "scan failed")
            return error_result(key, str(ref), f"{what}: {e}", permanent=False,
                                now=self.clock())
        finally:
            if work:
                shutil.rmtree(work, ignore_errors=True)
            self.trim()

    def trim(self) -> None:
        """Keep the OCI cache and the reports within their byte budgets (diskcache.py)."""
        try:
            self.cache.trim()
            trim_reports(os.path.join(self.settings.state_dir, "reports"),
                         self.settings.reports_bytes)
        except OSError as e:                    # a full or read-only state disk: scans go on
            log.warning("cache trim failed: %s", e)

    def unpack(self, layout: str, tag: str, work: str, stage,
               content: ContentSet | None = None) -> tuple[str, Partial | dict]:
        """Unpack a layout into work/rootfs; returns the image architecture and the Partial
        (what a partial unpack wrote, checked in evaluate against the product's filter) or,
        after a full unpack, its summary."""
        root = os.path.join(work, "rootfs")
        filt = self.pass_filter(content) if content is not None and self.settings.partial \
            else Reach.of_everything("partial unpack is off")
        if filt.everything:
            stats = stage("unpack", unpack, layout, tag, root, self.settings.limits)
            return image_arch(layout, tag), {"mode": "full", "entries": stats.files,
                                             "bytes": stats.bytes, "written": stats.files,
                                             "written_bytes": stats.bytes,
                                             "reason": filt.everything}
        part = stage("unpack", unpack_partial, layout, tag, root, self.settings.limits, filt)
        return image_arch(layout, tag), part

    def fetch_unpack(self, ref: ImageRef, docker_config: dict | None, work: str, stage,
                     content: ContentSet):
        """A layout not cached yet, unpacked partially while skopeo downloads it: the pass
        reads each layer as it arrives (partial.GrowingBlob) instead of after the whole copy.
        None when this does not apply (a cached layout, partial unpack off or a filter that
        is everything, a manifest we cannot read): the caller fetches, then unpacks."""
        if not self.settings.partial or os.path.exists(
                os.path.join(self.layout_path(ref), "index.json")):
            return None
        filt = self.pass_filter(content)
        if filt.everything:
            return None
        try:
            doc = json.loads(self.registry.raw_manifest(ref, docker_config=docker_config))
            layers = [(x["digest"], int(x["size"])) for x in doc["layers"]]
            config_size = int(doc["config"]["size"])
            blobs = [os.path.join(self.settings.state_dir, "oci", "blobs",
                                  *d.split(":", 1)) for d, _ in layers]
            for d, _ in layers:
                unpack_mod._blob_file("", d)           # a well-formed digest
        except (ValueError, TypeError, KeyError, AttributeError, RegistryError, UnpackError):
            return None
        done = threading.Event()
        box: dict = {}
        where: list[str] = []

        def run() -> None:
            try:
                box["layout"] = stage("fetch", self.fetch, ref, docker_config, where.append)
            except BaseException as e:      # raised in this thread by fetched()
                box["error"] = e
            finally:
                done.set()

        def fetched() -> tuple[str, str]:
            thread.join()
            if "error" in box:
                raise box["error"]
            return box["layout"]

        limits = self.settings.limits
        openers = [(lambda i=i: GrowingBlob(
            layers[i][0], blobs[i], lambda: where[0] if where else "",
            [b for j, b in enumerate(blobs) if j != i], config_size, done, limits.timeout_s,
            layers[i][1]),
            layers[i][0]) for i in range(len(layers))]
        thread = threading.Thread(target=run, name="scapgate-fetch", daemon=True)
        thread.start()
        root = os.path.join(work, "rootfs")
        try:
            part = stage("unpack", unpack_partial, "", "image", root, limits, filt, openers,
                         fetched)
        except BlobMismatch:        # a download read while written was another blob
            layout, tag = fetched()
            shutil.rmtree(root, ignore_errors=True)
            part = stage("unpack", unpack_partial, layout, tag, root, limits, filt)
        finally:
            thread.join()
        layout, tag = fetched()
        return layout, tag, image_arch(layout, tag), part

    def check_later(self, work: str, content: ContentSet, part: Partial | dict,
                    stage) -> "_Check":
        """Partial.model.missing against the filter of the product the image is identified
        as, in a thread while oscap evaluates the root; the caller asks check.reason() before
        it keeps the result (and evaluates again after a full unpack when it is not "")."""
        if isinstance(part, dict):
            return _Check(part)
        ident = stage("identify", identify, os.path.join(work, "rootfs"))
        spec = content.for_product(ident.product)
        check = _Check(part.summary("partial"))
        check.ident = ident         # evaluate uses it: no second identification beside the check
        if spec is not None:
            reach = self.reach_of(spec)
            check.start(lambda: stage("check", part.model.missing, reach))
        return check

    def complete(self, layout: str, tag: str, work: str, content: ContentSet,
                 part: Partial | dict, stage) -> dict:
        """Check a partial root against the filter of the product the image is identified as,
        and unpack it again in full when the filter does not cover it (Partial.model.missing
        says why). Returns the unpack summary kept in the ScanResult."""
        if isinstance(part, dict):
            return part
        root = os.path.join(work, "rootfs")
        spec = content.for_product(identify(root).product)
        why = stage("check", part.model.missing, self.reach_of(spec)) if spec else ""
        if why:
            shutil.rmtree(root)
            stage("unpack-full", unpack, layout, tag, root, self.settings.limits)
        return part.summary("full" if why else "partial", why)

    def reach_of(self, spec) -> Reach:
        """The filter of one content spec (reach.py), kept beside the content when its
        directory is writable, else in the state directory."""
        dirs = (os.path.join(os.path.dirname(spec.datastream), ".scapgate-reach"),
                os.path.join(self.settings.state_dir, "reach"))
        return reach_mod.of_spec(spec, dirs, remote=bool(self.settings.oscap.local_files))

    def pass_filter(self, content: ContentSet) -> Reach:
        """What the partial pass writes before the image is identified: scapgate's own reads
        and the filter of every product of the content set whose filter is not everything
        (an image of such a product is unpacked again in full). Everything when none is."""
        reaches = [self.reach_of(spec) for _, spec in content.entries]
        bounded = [r for r in reaches if not r.everything]
        if not bounded:
            return reaches[0] if reaches else Reach.of_everything("no content")
        return reach_mod.implicit().union(*bounded)

    def evaluate(self, layout: str, tag: str, work: str, ref: ImageRef, content: ContentSet,
                 key: ScanKey, timings: dict[str, float], stage, *,
                 arch: str | None = None, unpacked: dict | None = None,
                 ident: Identity | None = None) -> ScanResult:
        """Identify the image in work/rootfs and run its product's content against it,
        unpacking the layout first unless the caller did (arch given). An image no content
        judges is an "unsupported" result, never judged with another distribution's content."""
        root = os.path.join(work, "rootfs")
        if arch is None:
            arch, part = self.unpack(layout, tag, work, stage, content)
            unpacked = self.complete(layout, tag, work, content, part, stage)
        summary = unpacked or {}
        if ident is None:
            ident = stage("identify", identify, root)
        spec = content.for_product(ident.product)
        if spec is None:
            return unsupported_result(key, str(ref), unsupported_message(ident, content),
                                      product=ident.product, identity=ident.to_dict(),
                                      now=self.clock())
        if ident.package_db.startswith("dpkg"):
            stage("prepare", prepare_dpkg, root, ident.package_db)
        rpm_db = ident.package_db.removeprefix("rpm:") if ident.package_db.startswith("rpm:") \
            else ""
        arf = stage("evaluate", oscap.xccdf_eval, root, work, spec, self.settings.oscap, arch,
                    rpm_db)
        rules, score = stage("parse", oscap.parse_arf, arf)
        ovals = []
        for definitions in spec.oval:
            ovals += stage("oval", oscap.oval_eval, root, work, definitions, self.settings.oscap,
                           arch, rpm_db)
        osr = os_release(root)
        verdictless = not any(r.result in ("pass", "fail", "fixed") for r in rules)
        if verdictless:
            raise oscap.ScanError(
                f"content {os.path.basename(spec.datastream)} does not apply to this image "
                f"({ident.describe()}): no rule passed or failed", permanent=True)
        reports = os.path.join(self.settings.state_dir, "reports")
        os.makedirs(reports, exist_ok=True)
        arf_path = stage("store", oscap.compress, arf,
                         os.path.join(reports, f"{key.id()}.arf.xml.gz"))
        cves, feed = [], {}
        if self.settings.cves:
            cves, feed = self.judge_cves(ref, root, work, ident, arch or "", stage)
        return ScanResult(key=key, image=str(ref), rules=rules, oval=ovals, os_release=osr,
                          tools={"oscap": self.oscap_version(), "pipeline": PIPELINE_VERSION,
                                 "content": os.path.basename(spec.datastream),
                                 "content_sha256": spec.datastream_sha256},
                          timings=timings, scanned_at=self.clock(), score=score,
                          arf_path=arf_path, product=ident.product, identity=ident.to_dict(),
                          profile=spec.profile, cves=cves, feed=feed, unpack=summary)

    def judge_cves(self, ref: ImageRef, root: str, work: str, ident: Identity, arch: str,
                   stage) -> tuple[list, dict]:
        """Keep the image's package database (for re-judging when the feed changes) and
        evaluate the product's current feed against that copy — the same files a re-judge
        reads, so both give the same answer."""
        try:
            stage("snapshot", lambda: self.packages.put(
                ref.digest, root, product=ident.product, package_db=ident.package_db,
                arch=arch, image=str(ref)))
        except (UnpackError, OSError) as e:
            return [], {"product": ident.product,
                        "error": f"cannot keep the package database: {e}"}
        st = self.feeds.current_for(ident.product)
        if st is None:
            return [], {"product": ident.product,
                        "error": f"no CVE feed for {ident.product} (scapgate feeds status)"}
        return stage("cves", self.cves_from_snapshot, ref.digest, st, work, ident.product)

    def cves_from_snapshot(self, digest: str, st, work: str, product: str) -> tuple[list, dict]:
        """Evaluate a product's feed against the kept package database of a digest."""
        snap = self.packages.get(digest)
        if snap is None:
            return [], {"product": product, "error": f"no package database kept for {digest}"}
        where = tempfile.mkdtemp(prefix="cves-", dir=work)
        root = self.packages.extract(digest, os.path.join(where, "root"))
        return evaluate_snapshot(self.feeds, st, root, where, product=product,
                                 package_db=snap.package_db, arch=snap.arch,
                                 settings=self.settings.oscap)


class _Check:
    """A partial root's check running beside the evaluation (Pipeline.check_later)."""

    def __init__(self, summary: dict):
        self.summary = summary
        self.ident: Identity | None = None
        self._thread: threading.Thread | None = None
        self._out: list = []

    def start(self, fn) -> None:
        def run() -> None:
            try:
                self._out.append(fn())
            except BaseException as e:      # handed to reason()
                self._out.append(e)
        self._thread = threading.Thread(target=run, name="scapgate-check", daemon=True)
        self._thread.start()

    def reason(self) -> str:
        if self._thread is None:
            return ""
        self._thread.join()
        out = self._out[0]
        if isinstance(out, BaseException):
            raise out
        return out


def unsupported_message(ident: Identity, content: ContentSet) -> str:
    """What the developer reads: what was found, and why nothing judges it."""
    if not ident.product:
        return f"no SCAP content for {ident.describe()}: not judged"
    return (f"the policy names no SCAP content for {ident.product} ({ident.describe()}; it "
            f"judges {', '.join(content.products()) or 'nothing'}): not judged")


DPKG_TABLES = ("cputable", "ostable", "tupletable")
HOST_DPKG = "/usr/share/dpkg"


def prepare_dpkg(root: str, package_db: str) -> None:
    """What oscap's dpkginfo probe needs to see a dpkg root's packages at all: a status file
    (distroless keeps status.d/ instead) and dpkg's architecture tables (images without dpkg,
    distroless again, have none: the probe fails to start and every package rule passes —
    measured). Missing tables are copied from the scanner's own dpkg, in the scratch root."""
    if package_db == "dpkg-status.d":
        merge_status_d(root)
    dest = _inside(root, "usr/share/dpkg")
    if dest is None or (os.path.lexists(dest) and not os.path.isdir(dest)):
        return
    os.makedirs(dest, exist_ok=True)
    for name in DPKG_TABLES:
        target = os.path.join(dest, name)
        src = os.path.join(HOST_DPKG, name)
        if os.path.lexists(target) or not os.path.isfile(src):
            continue
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out, open(src, "rb") as fh:
            shutil.copyfileobj(fh, out)


def merge_status_d(root: str, limit: int = 64 << 20) -> None:
    """Distroless images keep one dpkg status file per package in var/lib/dpkg/status.d/ and
    no var/lib/dpkg/status; oscap 1.3.7's dpkginfo probe reads only the latter and would see
    no package at all (every "package removed" rule passes). Concatenate them, in name order,
    into var/lib/dpkg/status of the scratch root, as dpkg would read them."""
    d = _inside(root, "var/lib/dpkg/status.d")
    status = _inside(root, "var/lib/dpkg/status")
    if not d or not status or not os.path.isdir(d) or os.path.lexists(status):
        return
    parts, total = [], 0
    for name in sorted(os.listdir(d)):
        path = os.path.join(d, name)
        if name.endswith(".md5sums") or os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as fh:
            data = fh.read(limit - total + 1)
        total += len(data)
        if total > limit:
            raise UnpackError(f"var/lib/dpkg/status.d holds more than {limit} bytes")
        parts.append(data.strip(b"\n") + b"\n")
    with open(status, "wb") as fh:
        fh.write(b"\n".join(parts))


def image_arch(layout: str, tag: str) -> str:
    """The architecture in the image config, as Debian names it (amd64, arm64, armhf, …)."""
    try:
        arch = json.loads(image_config(layout, tag)).get("architecture", "")
    except (OSError, ValueError, UnpackError):
        return ""
    return {"arm": "armhf", "386": "i386", "ppc64le": "ppc64el"}.get(arch, arch)


def os_release(root: str) -> dict[str, str]:
    """The image's os-release, read without following links out of the root."""
    for rel in OS_RELEASE:
        text = read_release_file(root, rel)
        if text is not None:
            return parse_os_release(text)
    return {}


def _inside(root: str, rel: str) -> str | None:
    """Resolve rel under root treating root as '/', refusing escapes (links are the image's)."""
    real_root = os.path.realpath(root)
    path = rel
    for _ in range(16):
        full = os.path.join(real_root, path)
        if not os.path.islink(full):
            return full if os.path.realpath(full).startswith(real_root + os.sep) else None
        target = os.readlink(full)
        path = target.lstrip("/") if target.startswith("/") else os.path.normpath(
            os.path.join(os.path.dirname(path), target))
        if path.startswith(".."):
            return None
    return None
