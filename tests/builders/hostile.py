"""Tools for the hardening tests: run `scapgate scan` and measure it, canaries on the host,
decompression bombs built in O(1), and small fake registries that misbehave on purpose.

Why a subprocess per scan: memory is measured per process tree (the peak RSS of the scan and
its skopeo, umoci and oscap children), and a hostile image must not be able to take the test
runner down with it.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests import builders
from tests.builders import imagebuild

REPO = builders.REPO
POLICY = REPO / "policies" / "default.yaml"
MiB = 1 << 20


# -- running a scan --------------------------------------------------------------------------

# Runs the scan as its child and writes the child tree's peak RSS (RUSAGE_CHILDREN, in KiB).
# Why a launcher: Linux keeps a process's peak RSS across fork and exec, so a scan forked
# straight from pytest would report pytest's own size; forked from this small process, it
# reports its own.
LAUNCHER = """import resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc)
"""

@dataclass
class ScanRun:
    """What one `scapgate scan --json` did: exit code, output, and what it cost."""

    rc: int
    stdout: str
    stderr: str
    seconds: float
    maxrss_mb: float            # peak RSS of the largest process in the scan's tree (launcher)
    peak_scratch_bytes: int     # most bytes the scratch dir held at any sample
    doc: dict = field(default_factory=dict)

    @property
    def error(self) -> str:
        return self.doc.get("result", {}).get("error") or self.doc.get("error", "")

    @property
    def permanent(self) -> bool | None:
        return self.doc.get("result", {}).get("permanent")

    def __str__(self) -> str:
        return (f"rc={self.rc} {self.seconds:.1f}s rss={self.maxrss_mb:.0f}MB "
                f"scratch={self.peak_scratch_bytes}\n{self.stdout[-1500:]}\n{self.stderr[-1500:]}")


def _du(path: str) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_blocks * 512
    return total


class Meter(threading.Thread):
    """Samples the disk use of a directory every few milliseconds while a scan runs."""

    def __init__(self, path: str, every_s: float = 0.01):
        super().__init__(daemon=True)
        self.path, self.every_s, self.peak = path, every_s, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, _du(self.path))
            self._done.wait(self.every_s)

    def stop(self) -> int:
        self._done.set()
        self.join()
        self.peak = max(self.peak, _du(self.path))
        return self.peak


class Scanner:
    """`scapgate scan` with its own state and scratch dirs, as an operator would run it."""

    def __init__(self, base: Path, registry_hosts=(), content_dir: Path | None = None):
        self.base = Path(base)
        self.state = self.base / "state"
        self.scratch = self.base / "scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "SCAPGATE_STATE_DIR": str(self.state),
                    "SCAPGATE_SCRATCH_DIR": str(self.scratch),
                    "SCAPGATE_INSECURE_REGISTRIES": ",".join(registry_hosts)}
        if content_dir:
            self.env["SCAPGATE_CONTENT_DIR"] = str(content_dir)

    def scan(self, image: str, *args: str, env: dict | None = None, timeout: float = 300,
             policy: str | os.PathLike = POLICY, meter: Path | None = None) -> ScanRun:
        """Run one scan; `meter` is the directory whose disk use is sampled (scratch)."""
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        (meter or self.scratch).mkdir(parents=True, exist_ok=True)
        meter = Meter(str(meter or self.scratch))
        meter.start()
        t0 = time.monotonic()
        rss_file = self.base / "maxrss"
        cmd = [sys.executable, "-m", "webhook", "scan", image, "--json", "--policy", str(policy),
               *args]
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(rss_file), *cmd],
                                stdout=out, stderr=err, env={**self.env, **(env or {})},
                                cwd=REPO, start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        seconds = time.monotonic() - t0
        peak = meter.stop()
        maxrss_kb = int(rss_file.read_text()) if rss_file.exists() else -1
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        try:
            doc = json.loads(stdout)
        except ValueError:
            doc = {}
        return ScanRun(proc.returncode, stdout, stderr, seconds, maxrss_kb / 1024, peak, doc)

    def scratch_is_empty(self) -> bool:
        return not any(self.scratch.iterdir())


# -- canaries ---------------------------------------------------------------------------------

class Canary:
    """A unique directory under /tmp that hostile images aim at; snapshot() records every
    entry's type, mode, owner, size, link count, content hash and link target."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="scapgate-canary-", dir="/tmp"))
        (self.path / "secret").write_text("host secret\n")
        (self.path / "victim").write_text("whiteouts must not delete me\n")
        (self.path / "dir").mkdir()
        self.before = self.snapshot()

    def snapshot(self) -> dict:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.path):
            for name in sorted(dirnames + filenames):
                p = Path(dirpath, name)
                st = p.lstat()
                digest = (hashlib.sha256(p.read_bytes()).hexdigest()
                          if stat.S_ISREG(st.st_mode) else "")
                link = os.readlink(p) if p.is_symlink() else ""
                out[str(p.relative_to(self.path))] = (st.st_mode, st.st_uid, st.st_gid,
                                                      st.st_size, st.st_nlink, digest, link)
        return out

    def untouched(self) -> bool:
        return self.snapshot() == self.before

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# -- layers built byte by byte ----------------------------------------------------------------

ZEROS_16M = gzip.compress(b"\0" * (16 * MiB), 9, mtime=0)   # ~16 KB


def _tar_header(name: str, size: int, type_: bytes = tarfile.REGTYPE, **kw) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, type_, imagebuild.FIXED_MTIME
    for k, v in kw.items():
        setattr(info, k, v)
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _pad(n: int) -> int:
    return (512 - n % 512) % 512


def multi_member_layer(head: bytes, zeros: int, tail: bytes = b"") -> imagebuild.Layer:
    """A gzip layer: `head`, then `zeros` zero bytes (a multiple of 16 MiB, as repeated gzip
    members: 1 GiB costs 1 MB and no CPU to build), then `tail`. Go's gzip reader (umoci) and
    ours read every member."""
    assert zeros % (16 * MiB) == 0
    blob = (gzip.compress(head, 6, mtime=0) + ZEROS_16M * (zeros // (16 * MiB))
            + (gzip.compress(tail, 6, mtime=0) if tail else b""))
    h = hashlib.sha256(head)
    chunk = b"\0" * (16 * MiB)
    for _ in range(zeros // (16 * MiB)):
        h.update(chunk)
    h.update(tail)
    return imagebuild.Layer(blob, imagebuild.sha256_digest(blob), len(blob),
                            "sha256:" + h.hexdigest())


def file_bomb(size: int) -> imagebuild.Layer:
    """One regular file of `size` zero bytes: a classic decompression bomb."""
    return multi_member_layer(_tar_header("bomb", size), size,
                              b"\0" * 1024)    # size is a multiple of 512: no padding


def single_member_layer(head: bytes, zeros: int, tail: bytes = b"") -> imagebuild.Layer:
    """Like multi_member_layer, as one gzip member (a few seconds per GiB to build): what every
    tar reader reads, however it treats gzip members."""
    buf, h = io.BytesIO(), hashlib.sha256()
    chunk = b"\0" * MiB
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1, mtime=0) as gz:
        for part in [head] + [chunk] * (zeros // MiB) + [b"\0" * (zeros % MiB), tail]:
            gz.write(part)
            h.update(part)
    blob = buf.getvalue()
    return imagebuild.Layer(blob, imagebuild.sha256_digest(blob), len(blob),
                            "sha256:" + h.hexdigest())


def header_bomb(size: int, type_: bytes) -> imagebuild.Layer:
    """An extended header (PAX 'x' or GNU long name 'L') of `size` bytes: tarfile would read it
    whole into memory; its data are zeros."""
    return single_member_layer(_tar_header("././@LongLink", size, type_), size,
                               _tar_header("after", 0) + b"\0" * 1024)


def _tar_bytes(entries) -> bytes:
    """Tar members of entries, without the end-of-archive blocks."""
    out = io.BytesIO()
    for e in entries:
        info = imagebuild._tarinfo(e)
        out.write(info.tobuf(format=tarfile.PAX_FORMAT))
        if e.kind == "file" and e.data:
            out.write(e.data + b"\0" * _pad(len(e.data)))
    return out.getvalue()


def hidden_layer(visible, hidden=(), bomb: int = 0) -> imagebuild.Layer:
    """`visible` entries in the first gzip member; `hidden` entries (and a `bomb`-byte file of
    zeros, a multiple of 16 MiB) only in later members. A reader that stops after the first
    member (Python's tarfile stream mode does, silently) never sees the hidden part; umoci
    unpacks it."""
    head = gzip.compress(_tar_bytes(visible), 6, mtime=0)
    rest = gzip.compress(_tar_bytes(hidden), 6, mtime=0) if hidden else b""
    h = hashlib.sha256(_tar_bytes(visible) + _tar_bytes(hidden))
    if bomb:
        header = _tar_header("hidden-bomb", bomb)
        rest += gzip.compress(header, 6, mtime=0) + ZEROS_16M * (bomb // (16 * MiB))
        h.update(header)
        chunk = b"\0" * (16 * MiB)
        for _ in range(bomb // (16 * MiB)):
            h.update(chunk)
    rest += gzip.compress(b"\0" * 1024, 6, mtime=0)
    h.update(b"\0" * 1024)
    blob = head + rest
    return imagebuild.Layer(blob, imagebuild.sha256_digest(blob), len(blob),
                            "sha256:" + h.hexdigest())


def split_layer(entries, parts: int = 3) -> imagebuild.Layer:
    """A valid layer whose tar is cut across several gzip members (as parallel compressors
    write): Go's reader and ours must read all of them."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            tar.addfile(imagebuild._tarinfo(e), io.BytesIO(e.data) if e.kind == "file" else None)
    data = raw.getvalue()
    step = -(-len(data) // parts)
    blob = b"".join(gzip.compress(data[i:i + step], 6, mtime=0)
                    for i in range(0, len(data), step))
    return imagebuild.Layer(blob, imagebuild.sha256_digest(blob), len(blob),
                            imagebuild.sha256_digest(data))


def trailing_bomb(entries, zeros: int) -> imagebuild.Layer:
    """A valid tar of `entries` followed, inside the gzip, by `zeros` bytes after its end."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            tar.addfile(imagebuild._tarinfo(e), io.BytesIO(e.data) if e.kind == "file" else None)
    return multi_member_layer(raw.getvalue(), zeros)


def sparse_layer() -> imagebuild.Layer:
    """An old-GNU sparse entry ('S'), which we refuse: no image builder writes one, and its map
    is unbounded."""
    raw = _tar_header("sparse", 0, tarfile.GNUTYPE_SPARSE) + b"\0" * 1024
    return multi_member_layer(raw, 0)


# -- misbehaving registries -------------------------------------------------------------------

class FakeRegistry:
    """An HTTP server on 127.0.0.1 that answers like a broken registry.

    mode: "500" (every request), "hang" (accepts, never answers), "endless" (a valid manifest
    whose 1-byte layer is served as an endless stream of random bytes).
    """

    def __init__(self, mode: str):
        self.mode = mode
        self.served = 0
        self._socks: list[socket.socket] = []
        if mode == "hang":
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen(64)
            self.port = self.sock.getsockname()[1]
            self.server = None
            return
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
        else:
            self.sock.close()

    def _handler(self):
        fake = self
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}
                            ).encode()
        layer = "sha256:" + "1" * 64
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": imagebuild.MT_MANIFEST,
            "config": {"mediaType": imagebuild.MT_CONFIG, "size": len(config),
                       "digest": imagebuild.sha256_digest(config)},
            "layers": [{"mediaType": imagebuild.MT_LAYER_GZIP, "digest": layer, "size": 1}],
        }).encode()
        chunk = os.urandom(MiB)     # incompressible, so it lands on disk as sent

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if code == 200:
                    self.send_header("Docker-Content-Digest", imagebuild.sha256_digest(body))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                if fake.mode == "500":
                    return self._send(500, b'{"errors":[{"code":"UNKNOWN"}]}')
                if self.path == "/v2/":
                    return self._send(200, b"{}")
                if "/manifests/" in self.path:
                    return self._send(200, manifest, imagebuild.MT_MANIFEST)
                if self.path.endswith(imagebuild.sha256_digest(config)):
                    return self._send(200, config, "application/octet-stream")
                if self.path.endswith(layer):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    self.close_connection = True
                    try:
                        while fake.served < (4 << 30):
                            self.wfile.write(chunk)
                            fake.served += len(chunk)
                    except OSError:
                        pass
                    return
                return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')

            do_HEAD = do_GET

        return Handler


def dead_port() -> int:
    """A port with no listener (bound then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
