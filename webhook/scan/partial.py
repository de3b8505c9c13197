"""Partial unpack: write only the entries an evaluation can read (reach.py), then prove it.

One pass per layer, in order, streams the layer's tar (inflated by ISA-L in a second thread)
through the same guarded header walk as unpack.check_layer — the limits, the refusals, the
per-layer cache — and copies into a filtered, uncompressed layer:
  - every directory, symlink and whiteout (opaque or not): the tree's shape, modes and owners;
  - regular files and hard links whose place the filter admits;
and nothing else. umoci unpacks the filtered layers as it unpacks an image, so whiteouts, opaque
directories, symlinks on the way and ownership keep a full unpack's semantics, and
rootfs.confine() runs on what it wrote, as before.

While streaming, the pass keeps a model of the final tree (every path, its kind, whether its
final version was written). A filter is written in the image's *apparent* paths (what oscap
opens: /lib/systemd/system); entries land at canonical paths (usr/lib/systemd/system with a
merged /usr). The pass admits an entry when its canonical path, or that path reached through a
symlink seen so far, matches. `Model.missing(reach)` then checks the final tree exactly: every
regular file or hard link any apparent path of which the reach admits (apparent paths follow
every directory symlink of the final tree), and the file behind every admitted symlink, must
have had its final version written; a trigger file must not exist; an admitted hard link must
have found its target written. Anything else is a reason, and the caller unpacks in full.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field

from isal import igzip, isal_zlib

from .reach import Reach
from .rootfs import UnpackError, UnpackLimits, confine
from .tarstream import (_BLK, _CHR, _DIR, _FIFO, _HARD, _HEADER_ONLY, _KNOWN, _REGULAR, _SYM,
                        _ZERO, BLOCK, TarEntry, _copy, _Prefetch, _skip, tar_entries)
from .unpack import (MAX_TRAILING, EntryLimits, LayerStats, _checked, _checked_lock,
                     _kill_group, _raise_umoci, check_declared,
                     file_size_limit, image_config, verify_blobs, wait_exit)

MAX_HOPS = 40
MAX_ALIASES = 32            # apparent paths of one directory before the check gives up
WHITEOUT, OPAQUE = ".wh.", ".wh..wh..opq"


class Matcher:
    """Does a reach admit an apparent, root-relative path ("etc/passwd")?"""

    def __init__(self, specs):
        self.lit: dict[str, int] = {}           # path -> depth it covers (-1: the whole tree)
        file_res, dir_res = [], []
        for kind, value, depth in specs:
            if kind == "p":
                old = self.lit.get(value)
                self.lit[value] = -1 if -1 in (old, depth) else max(depth, old or 0)
            elif depth == 0:
                file_res.append(value)
            else:
                dir_res.append((re.compile(value.encode("utf-8", "surrogateescape")), depth))
        self.file_re = (re.compile(b"|".join(b"(?:" + v.encode("utf-8", "surrogateescape")
                                             + b")" for v in sorted(set(file_res))))
                        if file_res else None)
        self.dir_res = dir_res
        self._dir_memo: dict[str, int] = {}
        self._parent_memo: dict[str, bool] = {}

    def __call__(self, path: str) -> bool:
        if self.file_re is not None and self.file_re.search(b"/" + os.fsencode(path)):
            return True
        if not self.lit and not self.dir_res:
            return False
        if path in self.lit:
            return True
        if self.dir_res and self._dir_depth(path) != -2:
            return True
        parent = path.rpartition("/")[0] if path else None
        if parent is None:
            return False
        hit = self._parent_memo.get(parent)
        if hit is None:
            hit = self._covers(parent, 1)
            if len(self._parent_memo) < 1 << 20:
                self._parent_memo[parent] = hit
        return hit

    def _covers(self, path: str, k: int) -> bool:
        """Does a tree spec at path or above cover something k levels below path?"""
        cur = path
        while True:
            d = self.lit.get(cur)
            if d is not None and (d < 0 or k <= d):
                return True
            if self.dir_res:
                d = self._dir_depth(cur)
                if d != -2 and (d < 0 or k <= d):
                    return True
            if not cur:
                return False
            cur = cur.rpartition("/")[0]
            k += 1

    def _dir_depth(self, path: str) -> int:
        """The deepest depth of the regex specs matching a directory path (-2: none)."""
        hit = self._dir_memo.get(path)
        if hit is None:
            raw = b"/" + os.fsencode(path)
            depths = [d for rx, d in self.dir_res if rx.search(raw)]
            hit = -2 if not depths else (-1 if -1 in depths else max(depths))
            if len(self._dir_memo) < 1 << 20:
                self._dir_memo[path] = hit
        return hit


@dataclass
class Model:
    """The final tree as the layers build it: kind per canonical path ("d", "l", "f"),
    link targets, which files' final versions were written, and each path's layer."""
    kind: dict = field(default_factory=lambda: {"": "d"})
    target: dict = field(default_factory=dict)
    written: dict = field(default_factory=dict)
    layer: dict = field(default_factory=dict)
    children: dict = field(default_factory=lambda: {"": set()})
    aliases_of: dict = field(default_factory=dict)   # canonical dir -> links seen to it
    broken_links: int = 0       # admitted hard links whose target was not written
    _parents: dict = field(default_factory=dict)     # raw parent path -> resolved (a memo)

    def resolve_parent(self, parts: list[str]) -> str | None:
        """resolve() of an entry's parent, remembered until the tree's links change."""
        key = "/".join(parts)
        hit = self._parents.get(key, False)
        if hit is False:
            hit = self.resolve(parts)
            if len(self._parents) < 1 << 16:
                self._parents[key] = hit
        return hit

    # umoci resolves each entry's parent inside the root (securejoin): links followed,
    # ".." stopping at the root, a missing component taken as it is.
    def resolve(self, parts: list[str], follow_last: bool = True) -> str | None:
        out: list[str] = []
        todo = list(parts)
        hops = 0
        while todo:
            name = todo.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if out:
                    out.pop()
                continue
            cand = "/".join((*out, name))
            if self.kind.get(cand) == "l" and (todo or follow_last):
                hops += 1
                if hops > MAX_HOPS:
                    return None
                t = self.target[cand]
                if t.startswith("/"):
                    out = []
                todo = t.split("/") + todo
                continue
            out.append(name)
        return "/".join(out)

    def _remove(self, path: str) -> None:
        kind = self.kind.pop(path, None)
        if kind is None:
            return
        self._parents.clear()       # a resolution may have passed through it
        self.target.pop(path, None)
        self.written.pop(path, None)
        self.layer.pop(path, None)
        parent, _, name = path.rpartition("/")
        sib = self.children.get(parent)
        if sib is not None:
            sib.discard(name)
        for child in list(self.children.pop(path, ()) if kind == "d" else ()):
            self._remove(f"{path}/{child}" if path else child)

    def _ensure_dir(self, path: str, layer: int) -> None:
        if not path or self.kind.get(path) == "d":
            return
        parent, _, name = path.rpartition("/")
        self._ensure_dir(parent, layer)
        if path in self.kind:
            self._remove(path)
        self.kind[path] = "d"
        self.layer[path] = layer
        self.children[path] = set()
        self.children[parent].add(name)

    def put(self, path: str, kind: str, layer: int, *, target: str = "",
            written: bool = False) -> None:
        parent, _, name = path.rpartition("/")
        self._ensure_dir(parent, layer)
        old = self.kind.get(path)
        if old is not None and not (old == "d" and kind == "d"):
            self._remove(path)
        if kind == "d":
            if old != "d":
                self.children[path] = set()
        elif kind == "l":
            self.target[path] = target
        else:
            self.written[path] = written
        self.kind[path] = kind
        self.layer[path] = layer
        self.children[parent].add(name)

    def whiteout(self, path: str) -> None:
        self._remove(path)

    def opaque(self, path: str, layer: int) -> None:
        for child in list(self.children.get(path, ())):
            full = f"{path}/{child}" if path else child
            if self.layer.get(full, layer) < layer:
                self._remove(full)

    # what the reach can see in the final tree
    def apparent(self) -> dict[str, list[str]] | None:
        """Apparent paths of every directory: its own path and those through directory
        symlinks, not descending into a link back to a directory already on the way (fts's
        cycle rule). None when a directory has more than MAX_ALIASES of them."""
        seen: dict[str, list[str]] = {"": [""]}
        todo = [("", "", ())]
        while todo:
            canon, app, above = todo.pop()
            for name in self.children.get(canon, ()):
                c = f"{canon}/{name}" if canon else name
                a = f"{app}/{name}" if app else name
                kind = self.kind.get(c)
                if kind == "l":
                    t = self.resolve(c.split("/"))
                    if t is None or self.kind.get(t) != "d" or t in above or t == canon:
                        continue
                    c = t
                elif kind != "d":
                    continue
                got = seen.setdefault(c, [])
                if a in got:
                    continue
                if len(got) >= MAX_ALIASES:
                    return None
                got.append(a)
                todo.append((c, a, (*above, canon)))
        return seen

    def _files_under(self, spec_path: str, depth: int):
        """Canonical files a literal spec reaches: the path resolved (links followed), and
        within `depth` below it every file, directory links followed once each."""
        start = self.resolve(spec_path.split("/")) if spec_path else ""
        if start is None or start not in self.kind:
            return
        todo, seen = [(start, 0)], {start}
        while todo:
            path, k = todo.pop()
            kind = self.kind.get(path)
            if kind == "f":
                yield path
                continue
            if kind != "d" or (depth >= 0 and k >= depth):
                continue
            for name in self.children.get(path, ()):
                c = f"{path}/{name}" if path else name
                if self.kind.get(c) == "l":
                    c = self.resolve(c.split("/"))
                    if c is None:
                        continue
                if c not in seen:
                    seen.add(c)
                    todo.append((c, k + 1))

    def missing(self, reach: Reach) -> str:
        """Why this partial tree cannot stand for the full one under `reach` ("" when it
        can): see the module's docstring."""
        if reach.everything:
            return f"the filter is everything: {reach.everything}"
        if self.broken_links:
            return f"{self.broken_links} admitted hard link(s) point to files not written"
        for kind, value, depth in reach.triggers:
            if kind == "p" and next(self._files_under(value, depth), None) is not None:
                return (f"/{value} exists, and the content computes paths from it: the "
                        "filter is everything for this image")
        for kind, value, depth in reach.reads:
            if kind == "p":
                for path in self._files_under(value, depth):
                    if not self.written.get(path):
                        return f"/{path} is read by the content and was not written"
        regex_reads = [s for s in reach.reads if s[0] == "r"]
        regex_triggers = [s for s in reach.triggers if s[0] == "r"]
        if not regex_reads and not regex_triggers:
            return ""
        dirs = self.apparent()
        if dirs is None:
            return "the image's directory symlinks give some directory too many paths"
        admit = Matcher(regex_reads) if regex_reads else None
        trig = Matcher(regex_triggers) if regex_triggers else None
        for path, kind in self.kind.items():
            if kind == "d":
                continue
            parent, _, name = path.rpartition("/")
            apps = [f"{a}/{name}" if a else name for a in dirs.get(parent, ())]
            if trig is not None and kind == "f" and any(trig(a) for a in apps):
                return (f"/{path} exists, and the content computes paths from it: the filter "
                        "is everything for this image")
            if admit is None or not any(admit(a) for a in apps):
                continue
            t = self.resolve(path.split("/")) if kind == "l" else path
            if t is not None and self.kind.get(t) == "f" and not self.written.get(t):
                return f"/{t} is read by the content and was not written"
        return ""


@dataclass
class Partial:
    """What a partial unpack wrote, and the model to check it against a product's reach."""
    model: Model
    entries: int = 0            # entries in the image's layers
    bytes: int = 0              # their bytes (file sizes)
    written: int = 0            # entries written to the root
    written_bytes: int = 0

    def summary(self, mode: str = "partial", reason: str = "") -> dict:
        out = {"mode": mode, "entries": self.entries, "bytes": self.bytes,
               "written": self.written if mode == "partial" else self.entries,
               "written_bytes": self.written_bytes if mode == "partial" else self.bytes}
        if reason:
            out["reason"] = reason
        return out


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


class _Hashing(io.RawIOBase):
    """A raw blob stream that hashes (sha256) and counts what is read through it; sha is None
    when the source proves its identity itself (GrowingBlob.confirm)."""

    def __init__(self, raw, hash_it: bool = True):
        super().__init__()
        self.raw = raw
        self.sha = hashlib.sha256() if hash_it else None
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self.raw.readinto(b)
        if n:
            if self.sha is not None:
                self.sha.update(memoryview(b)[:n])
            self.count += n
        return n or 0

    def drain(self) -> None:
        buf = bytearray(1 << 20)
        while self.readinto(buf):
            pass


def _open_layer(stack: contextlib.ExitStack, raw) -> tuple[_Hashing, object]:
    """(hashing raw stream, uncompressed stream) of a layer blob; gzip is inflated by ISA-L
    member after member (as Go's reader does, see unpack._uncompressed)."""
    hashing = _Hashing(raw, hash_it=not getattr(raw, "self_verified", False))
    buffered = io.BufferedReader(hashing, 1 << 20)
    magic = buffered.peek(4)[:4]
    if magic[:2] == b"\x1f\x8b":
        return hashing, stack.enter_context(igzip.IGzipFile(fileobj=buffered, mode="rb"))
    if magic == b"\x28\xb5\x2f\xfd":
        raise UnpackError("is zstd-compressed: not supported (umoci 0.4 cannot unpack it)")
    return hashing, buffered


def filter_layers(layers: list[tuple[object, str]], out_dir: str, reach: Reach,
                  limits: UnpackLimits) -> tuple[Partial, list[tuple[str, int]]]:
    """Stream each layer once: check it (as unpack.check_layer does), check its digest, and
    write the filtered layer into out_dir. layers: (opener, digest) in order, opener() giving
    the raw blob (a file, or a download still being written). Returns the Partial and
    [(digest, size)] of the filtered layers."""
    model = Model()
    admit = Matcher(reach.reads)
    part = Partial(model)
    used = LayerStats(0, 0)
    blobs = []
    for index, (opener, digest) in enumerate(layers):
        stats, blob = _filter_layer(opener, digest, index, out_dir, model, admit, part, limits,
                                    used)
        used = LayerStats(used.files + stats.files, used.bytes + stats.bytes)
        with _checked_lock:
            _checked[digest] = stats
        blobs.append(blob)
    part.entries, part.bytes = used.files, used.bytes
    return part, blobs


class BlobMismatch(UnpackError):
    """What was read of a layer does not hash to its digest (a corrupt cached blob, or a
    download read while written that turned out to be another blob)."""

    def __init__(self, message: str):
        super().__init__(message, permanent=False)


def _filter_layer(opener, digest: str, index: int, out_dir: str, model: Model,
                  admit: Matcher, part: Partial, limits: UnpackLimits,
                  used: LayerStats) -> tuple[LayerStats, tuple[str, int]]:
    tmp = tempfile.NamedTemporaryFile(dir=out_dir, prefix=".layer-", delete=False)
    extra: set[str] = set()         # files behind admitted symlinks seen in this pass
    hashing = None
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(tmp.close)
            raw_file = opener()
            stack.callback(raw_file.close)
            hashing, plain = _open_layer(stack, raw_file)
            raw = _Prefetch(plain)
            stack.callback(raw.close)
            stream = io.BufferedReader(raw, 1 << 16)
            out = tmp
            buf = bytearray(1 << 20)
            counted = EntryLimits(digest, limits, used)
            for e in tar_entries(stream):
                if e.type == b"g":              # forwarded where it stands
                    out.write(e.raw)
                    continue
                counted.check(e)
                keep = _place(e, index, model, admit, extra)
                padded = 0 if e.type in _HEADER_ONLY else -(-e.size // BLOCK) * BLOCK
                if keep:
                    out.write(e.raw)
                    _copy(stream, padded, out, buf)
                    if e.type in _REGULAR or e.type == _HARD:
                        part.written += 1
                        part.written_bytes += e.size
                else:
                    _skip(stream, padded, buf)
            out.write(_ZERO * 2)
            if len(stream.read(MAX_TRAILING + 1)) > MAX_TRAILING:
                raise UnpackError(f"has more than {MAX_TRAILING} bytes after the end of its "
                                  "tar archive")
            raw.close()
            hashing.drain()
            if hashing.sha is None:
                raw_file.confirm(hashing.count)
            elif "sha256:" + hashing.sha.hexdigest() != digest:
                raise BlobMismatch(f"layer {digest[:19]} does not match its digest")
    except BlobMismatch:
        os.unlink(tmp.name)
        raise
    except UnpackError as e:
        os.unlink(tmp.name)
        if str(e).startswith(("image ", "layer ")):
            raise
        raise UnpackError(f"layer {digest[:19]} {e}") from e
    except (EOFError, OSError, ValueError, zlib.error,
            isal_zlib.error) as e:
        os.unlink(tmp.name)
        raise UnpackError(f"layer {digest[:19]} is not a valid tar stream: {e}") from e
    except RecursionError as e:
        os.unlink(tmp.name)
        raise UnpackError(f"layer {digest[:19]} nests extended headers too deeply") from e
    except BaseException:
        os.unlink(tmp.name)
        raise
    h = hashlib.sha256()
    with open(tmp.name, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    blob = os.path.join(out_dir, h.hexdigest())
    os.replace(tmp.name, blob)
    return (LayerStats(counted.files, counted.size),
            ("sha256:" + h.hexdigest(), os.path.getsize(blob)))


def _place(e: TarEntry, layer: int, model: Model, admit: Matcher, extra: set[str]) -> bool:
    """Record one entry in the model; True when it goes into the filtered layer."""
    parts = _parts(e.name)
    if e.type not in _KNOWN:
        return True                     # umoci decides about it, as in a full unpack
    if not parts:
        return e.type == _DIR           # the root itself: its mode and owner
    name = parts[-1]
    parent = model.resolve_parent(parts[:-1])
    if parent is None:
        return True                     # a symlink loop: umoci decides, as in a full unpack
    if name.startswith(WHITEOUT):
        if name == OPAQUE:
            model.opaque(parent, layer)
        else:
            model.whiteout(f"{parent}/{name[len(WHITEOUT):]}".lstrip("/"))
        return True
    path = f"{parent}/{name}" if parent else name
    if e.type == _DIR:
        model.put(path, "d", layer)
        return True
    if e.type == _SYM:
        model.put(path, "l", layer, target=e.linkname)
        target = model.resolve(path.split("/"))
        if target is not None:
            model.aliases_of.setdefault(target, set()).add(path)
            if _admitted(path, model, admit, extra):
                extra.add(target)
        return True
    if e.type in (_CHR, _BLK, _FIFO):
        model.whiteout(path)            # confine() removes /dev nodes after a full unpack
        return False
    keep = _admitted(path, model, admit, extra)
    if e.type == _HARD:
        lparts = _parts(e.linkname)
        lparent = model.resolve(lparts[:-1]) if lparts else None
        source = f"{lparent}/{lparts[-1]}".lstrip("/") if lparts and lparent is not None else ""
        if keep and not model.written.get(source):
            model.broken_links += 1
            keep = False
    model.put(path, "f", layer, written=keep)
    return keep


def _admitted(path: str, model: Model, admit: Matcher, extra: set[str]) -> bool:
    """The pass's view: the canonical path, or that path through one link seen so far."""
    if path in extra or admit(path):
        return True
    if not model.aliases_of:
        return False
    cur, rest = path, ""
    while cur:
        for alias in model.aliases_of.get(cur, ()):
            if admit(alias + rest):
                return True
        cur, _, last = cur.rpartition("/")
        rest = f"/{last}{rest}"
    return False


def write_layout(out_dir: str, layout: str, tag: str, blobs: list[tuple[str, int]]) -> str:
    """An OCI layout of the filtered layers (uncompressed: digest = diff id) beside the
    original image's config; returns the layout path."""
    root = os.path.join(out_dir, "oci")
    sha = os.path.join(root, "blobs", "sha256")
    os.makedirs(sha)
    for digest, _ in blobs:
        os.replace(os.path.join(out_dir, digest.split(":", 1)[1]),
                   os.path.join(sha, digest.split(":", 1)[1]))
    try:
        config = json.loads(image_config(layout, tag))
    except ValueError:
        config = {}
    if not isinstance(config, dict):
        config = {}
    config["rootfs"] = {"type": "layers", "diff_ids": [d for d, _ in blobs]}
    config.setdefault("architecture", "amd64")
    config.setdefault("os", "linux")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": _put(sha, json.dumps(config).encode(),
                               "application/vnd.oci.image.config.v1+json"),
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": d, "size": n} for d, n in blobs]}
    desc = _put(sha, json.dumps(manifest).encode(),
                "application/vnd.oci.image.manifest.v1+json")
    desc["annotations"] = {"org.opencontainers.image.ref.name": "image"}
    with open(os.path.join(root, "index.json"), "w") as fh:
        json.dump({"schemaVersion": 2, "manifests": [desc]}, fh)
    with open(os.path.join(root, "oci-layout"), "w") as fh:
        json.dump({"imageLayoutVersion": "1.0.0"}, fh)
    return root


def _put(sha_dir: str, data: bytes, media: str) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(sha_dir, digest), "wb") as fh:
        fh.write(data)
    return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)}


def unpack_partial(layout: str, tag: str, rootfs: str, limits: UnpackLimits,
                   reach: Reach, openers: list | None = None, fetched=None) -> Partial:
    """Unpack into rootfs (which must not exist yet) only what `reach` admits, as described
    above; the caller checks the result with Partial.model.missing(product reach). openers:
    the layers' raw blobs when they are read while being downloaded (fetch.py), else the
    layout's blob files are read. A layer whose bytes do not match its digest is a corrupt
    cached blob (CorruptBlob from verify_blobs, fetched again next time), as in unpack().
    fetched() waits for the download the openers read and returns (layout, tag)."""
    if shutil.which("umoci") is None:
        raise UnpackError("umoci is not installed", permanent=False)
    if openers is None:
        openers = [(lambda p=p: open(p, "rb"), d) for p, d in check_declared(layout, tag,
                                                                           limits)]
    out_dir = tempfile.mkdtemp(prefix="partial-", dir=os.path.dirname(rootfs) or ".")
    try:
        try:
            part, blobs = filter_layers(openers, out_dir, reach, limits)
        except UnpackError:
            if fetched is not None:
                layout, tag = fetched()
            verify_blobs(layout, tag)   # raises CorruptBlob when our cache is at fault
            raise
        if fetched is not None:
            layout, tag = fetched()
            check_declared(layout, tag, limits)
        small = write_layout(out_dir, layout, tag, blobs)
        cmd = ["umoci", "raw", "unpack", "--image", f"{small}:image", rootfs]
        with tempfile.TemporaryFile() as err_fh:
            proc = subprocess.Popen(file_size_limit(cmd, limits.max_bytes),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err_fh, start_new_session=True)
            try:
                wait_exit(proc, limits.timeout_s)
            except subprocess.TimeoutExpired as e:
                raise UnpackError(f"unpacking took longer than {limits.timeout_s:.0f} s",
                                  permanent=False) from e
            finally:
                if proc.returncode is None:
                    _kill_group(proc)
            err_fh.seek(0)
            err = err_fh.read(64 * 1024).decode(errors="replace").strip()
        if proc.returncode != 0:
            _raise_umoci(err, small, "image", limits)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    confine(rootfs, limits)
    return part


class GrowingBlob(io.RawIOBase):
    """A layer blob read while skopeo downloads it, so the partial pass overlaps the fetch.

    skopeo (containers/image's OCI destination) writes each blob to an `oci-put-blob*` file in
    the new layout's directory and renames it into the shared blob directory when complete.
    A layer is read from its final file when it is there; else from the one temporary file
    that can be it — when every other layer is complete and exactly one temporary file is
    larger than the image config. At the end of what was written the reader waits for more
    (bounded polls, woken at once when the fetch ends) until the temporary name is gone. The
    pass hashes what it read: a wrong guess is a BlobMismatch, and the caller reads the
    final file instead."""

    def __init__(self, digest: str, final: str, tmp_dir, others: list[str], config_size: int,
                 fetch_done: threading.Event, deadline_s: float, size: int = -1):
        super().__init__()
        self._fh = None
        self._tmp_path = ""
        t_end = time.monotonic() + deadline_s
        while self._fh is None:
            if os.path.exists(final):
                self._fh = open(final, "rb")
                break
            where = tmp_dir()
            if where and all(os.path.exists(o) for o in others):
                cands = []
                with contextlib.suppress(OSError):
                    for e in os.scandir(where):
                        if e.name.startswith("oci-put-blob") and e.stat().st_size > config_size:
                            cands.append(e.path)
                if len(cands) == 1:
                    with contextlib.suppress(OSError):
                        self._fh = open(cands[0], "rb")
                        self._tmp_path = cands[0]
                        break
            if fetch_done.is_set() and not os.path.exists(final):
                raise UnpackError(f"layer {digest[:19]} was not downloaded", permanent=False)
            if time.monotonic() > t_end:
                raise UnpackError(f"layer {digest[:19]} took longer than {deadline_s:.0f} s "
                                  "to download", permanent=False)
            fetch_done.wait(0.005)
        self._final, self._done, self._t_end = final, fetch_done, t_end
        self._digest, self._size = digest, size
        # read while written: skopeo's own digest check and the rename prove it (confirm);
        # a finished file is hashed by the reader like any cached blob
        self.self_verified = bool(self._tmp_path)

    def confirm(self, count: int) -> None:
        """A file read while skopeo wrote it is the layer when skopeo renamed that very file
        (same inode) to the layer's digest: skopeo verified the digest before the rename. The
        byte count must be the declared size too."""
        try:
            same = os.path.samestat(os.fstat(self._fh.fileno()), os.stat(self._final))
        except OSError:
            same = False
        if not same or count != self._size:
            raise BlobMismatch(f"layer {self._digest[:19]}: the download read was another "
                               "blob")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while True:
            n = self._fh.readinto(b)
            if n or not self._tmp_path:
                return n or 0
            if not os.path.exists(self._tmp_path):      # renamed (complete) or removed
                n = self._fh.readinto(b)
                return n or 0
            if time.monotonic() > self._t_end:
                raise UnpackError("a layer took too long to download", permanent=False)
            self._done.wait(0.002)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        super().close()
