"""Unpack an OCI image into a scratch root exactly as a runtime would, within limits.

umoci (as root) keeps uid, gid and mode exactly, applies whiteouts and refuses to write through
symlinks outside the root. Before it runs, each layer's tar headers are walked in a stream so a
decompression bomb, a flood of tiny files, or device nodes outside /dev are refused early with a
clear error; the check is remembered per layer digest, so shared layers are checked once. The
walk (tarstream.py, reading as Go's archive/tar does) holds one header chain at a time and
refuses oversized PAX / GNU long-name headers and sparse entries before reading them. umoci runs with RLIMIT_FSIZE at the byte
limit, and rootfs.confine() checks what it wrote (see there) before any scanner reads it.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import zlib
from dataclasses import dataclass

from cachetools import LRUCache
from isal import igzip, isal_zlib

from .rootfs import UnpackError, UnpackLimits, confine
from .tarstream import _BLK, _CHR, _FIFO, _HEADER_ONLY, BLOCK, _Prefetch, _skip, tar_entries

STDERR_LIMIT = 600
# After the end-of-archive marker tar pads at most a 10 KiB record, but umoci still inflates
# whatever follows (1 GiB of zeros in a 1 MB gzip cost it 7 s of CPU): refuse long trailers.
MAX_TRAILING = 1 << 20


class CorruptBlob(UnpackError):
    """A cached blob no longer matches its digest: it was removed, the next attempt refetches."""

    def __init__(self, message: str):
        super().__init__(message, permanent=False)


@dataclass(frozen=True)
class LayerStats:
    files: int
    bytes: int


_checked: LRUCache = LRUCache(maxsize=4096)
_checked_lock = threading.Lock()


def manifest_of(layout: str, tag: str) -> dict:
    """The image manifest of `tag` in an OCI layout (via index.json)."""
    with open(os.path.join(layout, "index.json")) as fh:
        index = json.load(fh)
    for m in index.get("manifests", []):
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return json.loads(_blob(layout, m["digest"]))
    raise UnpackError(f"tag {tag} not in layout {layout}")


def layers_of(layout: str, tag: str) -> list[dict]:
    """Layer descriptors of `tag` in an OCI layout; a malformed list is an UnpackError."""
    layers = manifest_of(layout, tag).get("layers", [])
    if not isinstance(layers, list) or not all(
            isinstance(x, dict) and isinstance(x.get("digest"), str) for x in layers):
        raise UnpackError("the image manifest's layer list is malformed")
    return layers


def image_config(layout: str, tag: str) -> bytes:
    """The raw image config blob (architecture, os, …)."""
    return _blob(layout, manifest_of(layout, tag).get("config", {}).get("digest", ""))


def _blob(layout: str, digest: str) -> bytes:
    with open(_blob_file(layout, digest), "rb") as fh:
        return fh.read()


def check_layer(path: str, digest: str, limits: UnpackLimits, budget: LayerStats) -> LayerStats:
    """Stream a layer's headers; raise UnpackError past the remaining budget."""
    with _checked_lock:
        hit = _checked.get(digest)
    if hit is not None:
        _within(hit, budget, limits, digest)
        return hit
    try:
        with contextlib.ExitStack() as stack:
            raw = _Prefetch(_uncompressed(stack, path))
            stack.callback(raw.close)
            stream = io.BufferedReader(raw, 1 << 16)
            buf = bytearray(1 << 20)
            counted = EntryLimits(digest, limits, budget)
            for e in tar_entries(stream):
                if e.type == b"g":
                    continue
                counted.check(e)
                _skip(stream, 0 if e.type in _HEADER_ONLY else -(-e.size // BLOCK) * BLOCK, buf)
            files, size = counted.files, counted.size
            if len(stream.read(MAX_TRAILING + 1)) > MAX_TRAILING:
                raise UnpackError(f"has more than {MAX_TRAILING} bytes after the end of its "
                                  "tar archive")
    except UnpackError as e:
        if str(e).startswith(("image ", "layer ")):
            raise
        raise UnpackError(f"layer {digest[:19]} {e}") from e
    except (EOFError, OSError, ValueError, zlib.error, isal_zlib.error) as e:
        raise UnpackError(f"layer {digest[:19]} is not a valid tar stream: {e}") from e
    stats = LayerStats(files, size)
    with _checked_lock:
        _checked[digest] = stats
    return stats


def _uncompressed(stack: contextlib.ExitStack, path: str):
    """The layer's tar stream. Gzip is read member after member, as Go's reader (umoci) does:
    tarfile's own stream mode stops after the first member and would miss the rest. Inflated
    with ISA-L (isal.igzip: the gzip module's interface, half its CPU on a 51 MB layer)."""
    fh = stack.enter_context(open(path, "rb"))
    magic = fh.read(4)
    fh.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return stack.enter_context(igzip.IGzipFile(fileobj=fh, mode="rb"))
    if magic == b"\x28\xb5\x2f\xfd":
        raise UnpackError("is zstd-compressed: not supported (umoci 0.4 cannot unpack it)")
    return fh


class EntryLimits:
    """The header walk's checks of each entry (check_layer, partial._filter_layer): counts
    files and bytes against the limits, with what earlier layers used, and refuses device
    nodes and FIFOs outside /dev."""

    def __init__(self, digest: str, limits: UnpackLimits, used: LayerStats):
        self.digest, self.limits, self.used = digest, limits, used
        self.files = self.size = 0

    def check(self, e) -> None:
        self.files += 1
        self.size += e.size
        if e.type in (_CHR, _BLK, _FIFO) and not _under_dev(e.name):
            what = "a FIFO" if e.type == _FIFO else "a device node"
            raise UnpackError(f"holds {what} outside /dev: {e.name[:120]!r}")
        _within(LayerStats(self.files, self.size), self.used, self.limits, self.digest)


def _under_dev(name: str) -> bool:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return len(parts) >= 2 and parts[0] == "dev" and ".." not in parts


def _within(stats: LayerStats, used: LayerStats, limits: UnpackLimits, digest: str) -> None:
    if used.bytes + stats.bytes > limits.max_bytes:
        raise UnpackError(f"image unpacks to more than the limit of {limits.max_bytes} bytes "
                          f"(at layer {digest[:19]})")
    if used.files + stats.files > limits.max_files:
        raise UnpackError(f"image holds more than the limit of {limits.max_files} files "
                          f"(at layer {digest[:19]})")


def check_limits(layout: str, tag: str, limits: UnpackLimits) -> LayerStats:
    """Walk every layer's headers against the limits (after check_declared)."""
    return walk(check_declared(layout, tag, limits), limits)


def walk(layers: list[tuple[str, str]], limits: UnpackLimits) -> LayerStats:
    used = LayerStats(0, 0)
    for path, digest in layers:
        stats = check_layer(path, digest, limits, used)
        used = LayerStats(used.files + stats.files, used.bytes + stats.bytes)
    return used


def check_declared(layout: str, tag: str, limits: UnpackLimits) -> list[tuple[str, str]]:
    """The layers' (blob path, digest), after the cheap checks: the number of layers, and
    each blob's size on disk against the size its manifest declares (umoci would fail later,
    with a vaguer message)."""
    layers = layers_of(layout, tag)
    if len(layers) > limits.max_layers:
        raise UnpackError(f"image has {len(layers)} layers (limit {limits.max_layers})")
    out = []
    for layer in layers:
        digest = layer.get("digest", "")
        path = _blob_file(layout, digest)
        declared, actual = layer.get("size"), os.path.getsize(path)
        if declared != actual:
            verify_blobs(layout, tag)   # a truncated cached blob is ours to fetch again
            raise UnpackError(f"layer {digest[:19]} is {actual} bytes but the image manifest "
                              f"declares {declared!r:.20}: the manifest does not match its layers")
        out.append((path, digest))
    return out


def known_stats(layers: list[tuple[str, str]]) -> LayerStats | None:
    """The walked totals when every layer was walked before (shared or rescanned layers)."""
    with _checked_lock:
        hits = [_checked.get(digest) for _, digest in layers]
    if any(h is None for h in hits):
        return None
    return LayerStats(sum(h.files for h in hits), sum(h.bytes for h in hits))


def verify_blobs(layout: str, tag: str) -> None:
    """Hash every layer blob of `tag`; remove those that do not match their digest (a corrupt
    cache: skopeo verified them when they were fetched) and raise CorruptBlob naming them."""
    bad = []
    for layer in layers_of(layout, tag):
        digest = layer["digest"]
        path = _blob_file(layout, digest)
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except FileNotFoundError:
            bad.append(digest)
            continue
        if "sha256:" + h.hexdigest() != digest:
            bad.append(digest)
            os.unlink(os.path.realpath(path))
    if bad:
        with _checked_lock:
            for digest in bad:
                _checked.pop(digest, None)
        raise CorruptBlob(f"cached layer {', '.join(d[:19] for d in bad)} did not match its "
                          "digest and was removed; the next attempt fetches it again")


def _blob_file(layout: str, digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise UnpackError(f"invalid layer digest {digest!r:.80}")
    return os.path.join(layout, "blobs", algo, hexd)


def file_size_limit(cmd: list[str], max_bytes: int) -> list[str]:
    """Run cmd with RLIMIT_FSIZE: no single file it writes can pass max_bytes (util-linux's
    prlimit; preexec_fn is unsafe in our threaded workers)."""
    prlimit = shutil.which("prlimit")
    return [prlimit, f"--fsize={max_bytes}", "--", *cmd] if prlimit else cmd


def unpack(layout: str, tag: str, rootfs: str, limits: UnpackLimits) -> LayerStats:
    """`umoci raw unpack` into rootfs (which must not exist yet) while the layers' headers are
    walked against the limits, then confine the root (rootfs.confine) so host-side tools
    cannot be led out of it.

    The walk and umoci run side by side (the walk reads headers about twice as fast as umoci
    writes files): umoci is killed the moment the walk refuses the image, and nothing reads
    the root before both have finished. Layers walked before (shared base layers, rescans)
    are not walked again, and then the free scratch space is checked before umoci starts."""
    layers = check_declared(layout, tag, limits)
    if shutil.which("umoci") is None:
        raise UnpackError("umoci is not installed", permanent=False)
    free = _free_bytes(rootfs)
    known = known_stats(layers)
    if known is not None:
        stats = walk(layers, limits)    # from the cache, against today's limits
        _check_space(stats, free)
    cmd = ["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", rootfs]
    with tempfile.TemporaryFile() as err_fh:
        proc = subprocess.Popen(file_size_limit(cmd, limits.max_bytes), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err_fh, start_new_session=True)
        try:
            if known is None:
                stats = walk(layers, limits)
                _check_space(stats, free)
            wait_exit(proc, limits.timeout_s)
        except subprocess.TimeoutExpired as e:
            raise UnpackError(f"unpacking took longer than {limits.timeout_s:.0f} s",
                              permanent=False) from e
        finally:
            if proc.returncode is None:     # the walk refused the image, or time ran out
                _kill_group(proc)
        err_fh.seek(0)
        err = err_fh.read(64 * 1024).decode(errors="replace").strip()
    if proc.returncode != 0:
        _raise_umoci(err, layout, tag, limits)
    confine(rootfs, limits)
    return stats


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    """proc.wait(timeout) without its polling (sleeps growing to 50 ms after a long run): a
    pidfd becomes readable the moment the process exits (Linux 5.3+; else Popen.wait)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout=timeout)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(max(0, int(timeout * 1000))):
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait()


def _check_space(stats: LayerStats, free: int) -> None:
    need = stats.bytes + stats.files * 4096
    if need > free:     # umoci 0.4.7 may panic instead of saying ENOSPC: say it first
        raise UnpackError(f"scratch space is full: the image needs up to {need} bytes, "
                          f"{free} are free", permanent=False)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _raise_umoci(err: str, layout: str, tag: str, limits: UnpackLimits) -> None:
    low = err.lower()
    if "no space left" in low or "disk quota" in low:
        raise UnpackError("scratch space is full while unpacking the image", permanent=False)
    if "panic:" in low:     # umoci 0.4.7 also panics ("d.nx != 0") on some write errors
        first = next((ln for ln in err.splitlines() if "panic:" in ln), "")
        raise UnpackError(f"umoci crashed: {first.strip()[:200]}", permanent=False)
    if "file too large" in low:
        raise UnpackError(f"a file in the image is larger than the limit of "
                          f"{limits.max_bytes} bytes")
    if "verified reader" in low:
        verify_blobs(layout, tag)   # raises CorruptBlob when our cache is at fault
        raise UnpackError("a layer does not match the digest or size its image manifest "
                          f"declares: {_umoci_error(err)}")
    raise UnpackError(f"umoci could not unpack the image: {_umoci_error(err)}")


def _free_bytes(path: str) -> int:
    """Bytes available to us on the filesystem that will hold path (its nearest parent)."""
    probe = path
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    st = os.statvfs(probe or "/")
    return st.f_bavail * st.f_frsize


def _umoci_error(stderr: str) -> str:
    """umoci's failure lines (marked ⨯) without its progress output, cut short."""
    lines = [ln.strip().lstrip("⨯").strip() for ln in stderr.splitlines() if "⨯" in ln]
    return ("; ".join(lines) or stderr.strip())[-STDERR_LIMIT:]
