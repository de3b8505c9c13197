"""The unpacked root, made safe for the tools that read it from the host.

oscap and libapt run on the host with OSCAP_PROBE_ROOT / a Dir prefix, not chrooted, so the
kernel resolves the image's symlinks against the host's `/`. Measured with oscap 1.3.7: an image
whose `var/lib/dpkg/status` links to `/var/lib/dpkg/status` is judged on the *host's* packages,
and one whose `var/cache/apt` links to `/somewhere` makes the dpkginfo probe write its
`pkgcache.bin` there, as root. A container runtime resolves the same links inside the image, so
`confine` rewrites each link that could leave the root to the relative target it has in a
container. The scanner then sees what the container sees, and nothing outside the root.

It also removes device nodes and FIFOs under /dev (a runtime mounts its own /dev over the
image's, so the container never sees them; the host-side scanner must not open host devices or
block on a FIFO through them) and re-checks the limits on what umoci actually wrote, so a tar
parser difference between Python's header walk and umoci's Go reader cannot slip past them.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass

MAX_HOPS = 40       # symlinks followed in one lookup, as Linux does (ELOOP past it)
DANGLING = ".scapgate-dangling"   # a directory never created: links that dangle in a container
LOOP, DANGLES = object(), object()


class UnpackError(Exception):
    """The image cannot be unpacked safely or within limits; `permanent` unless the cause is
    ours (scratch full, umoci missing or slow, a corrupt cached blob)."""

    def __init__(self, message: str, *, permanent: bool = True):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class UnpackLimits:
    max_bytes: int = 4 << 30        # sum of file sizes over all layers; a bomb stops here
    max_files: int = 300_000        # entries over all layers; a debootstrap root has ~10k
    timeout_s: float = 120.0        # umoci raw unpack of a 200 MB root takes 1-4 s
    max_layers: int = 256           # overlayfs runtimes cannot mount more than ~128 anyway


def confine(root: str, limits: UnpackLimits) -> None:
    """Rewrite escaping symlinks, drop /dev nodes, and enforce the limits on the tree on disk."""
    files = size = 0
    seen: set[int] = set()
    stack = [()]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, *rel)) as it:
            entries = list(it)
        for entry in entries:
            files += 1
            st = entry.stat(follow_symlinks=False)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                stack.append((*rel, entry.name))
            elif stat.S_ISLNK(mode):
                _confine_link(root, rel, entry.name, st)
            elif stat.S_ISREG(mode):
                if st.st_ino not in seen:
                    size += st.st_size
                if st.st_nlink > 1:
                    seen.add(st.st_ino)     # hard links share their bytes
            elif rel[:1] == ("dev",):
                os.unlink(entry.path)
            else:
                raise UnpackError(f"the unpacked image holds a special file outside /dev: "
                                  f"{'/'.join((*rel, entry.name))[:120]!r}")
        if files > limits.max_files or size > limits.max_bytes:
            raise UnpackError(f"the unpacked image exceeds the limit of {limits.max_files} files "
                              f"or {limits.max_bytes} bytes")


def _confine_link(root: str, rel: tuple[str, ...], name: str, st: os.stat_result) -> None:
    path = os.path.join(root, *rel, name)
    target = os.readlink(path)
    if not target.startswith("/") and ".." not in target.split("/"):
        return      # descends from its own directory: stays inside (its parts are confined too)
    inside = contained_target(root, rel, target)
    if inside is LOOP:
        new = name                                    # a loop in a container: keep it a loop
    elif inside is DANGLES:
        new = f"{DANGLING}/{name}"
    else:
        new = os.path.relpath(os.path.join("/", inside), os.path.join("/", *rel))
    if new == target:
        return
    os.unlink(path)
    os.symlink(new, path)
    os.lchown(path, st.st_uid, st.st_gid)


def contained_target(root: str, rel: tuple[str, ...], target: str) -> str | object:
    """The root-relative path a link at `rel` pointing to `target` names inside a container:
    `..` stops at the root, absolute targets start at the root, links on the way are followed
    the same way. The last component is not followed (it is a link of its own, confined too).
    LOOP past MAX_HOPS links; DANGLES when a component on the way is missing or not a
    directory (the link dangles in a container too)."""
    parts = [] if target.startswith("/") else list(rel)
    todo = [p for p in target.split("/") if p not in ("", ".")]
    hops = 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            if parts:
                parts.pop()
            continue
        if not todo:
            parts.append(name)
            break
        path = os.path.join(root, *parts, name)
        if os.path.islink(path):
            hops += 1
            if hops > MAX_HOPS:
                return LOOP
            link = os.readlink(path)
            if link.startswith("/"):
                parts = []
            todo = [p for p in link.split("/") if p not in ("", ".")] + todo
        elif os.path.isdir(path):
            parts.append(name)
        else:
            return DANGLES
    return "/".join(parts)
