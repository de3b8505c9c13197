"""Streaming tar reading for the layer walks (unpack.check_layer, partial.filter_layers).

tar_entries reads a layer's entries as Go's archive/tar (umoci) does — names after PAX and GNU
long-name headers, sizes after a PAX size, no data for header-only types, the end at two zero
blocks — one header chain in memory at a time, and refuses what umoci refuses or what would be
unbounded: extended headers over 1 MiB or chained more than 8 deep, more than 1 MiB of global
headers, sparse entries, bad checksums, an entry after a single end-of-archive block. Each entry
carries the raw blocks of its header chain so a filtered layer can forward it unchanged.
_Prefetch inflates in a second thread (ISA-L releases the GIL) while the walk parses.
"""
from __future__ import annotations

import io
import queue
import threading
from dataclasses import dataclass

from .rootfs import UnpackError

MAX_SPECIAL_HEADER = 1 << 20        # umoci (Go's archive/tar) refuses PAX / GNU long names past it
MAX_HEADER_CHAIN = 8                # extended headers before one entry; real tars use at most 3
MAX_GLOBAL_HEADERS = 1 << 20        # PAX global headers: bytes per layer


BLOCK = 512
_ZERO = bytes(BLOCK)
_HARD, _SYM, _CHR, _BLK, _DIR, _FIFO = b"1", b"2", b"3", b"4", b"5", b"6"
_REGULAR = frozenset({b"0", b"\0", b"7"})
_HEADER_ONLY = frozenset({_HARD, _SYM, _CHR, _BLK, _DIR, _FIFO})   # no data, whatever the size
_KNOWN = _REGULAR | _HEADER_ONLY


@dataclass
class TarEntry:
    """One entry of a layer as Go's archive/tar (umoci) reads it: the names after PAX and GNU
    long-name headers, the size after a PAX size, and the raw blocks of the header chain,
    forwarded unchanged when the entry is kept (so umoci reads exactly the original)."""
    name: str
    type: bytes
    size: int
    linkname: str
    raw: bytes


def _num(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:       # base-256 (GNU): big-endian, 0xff is negative
        n = int.from_bytes(field[1:], "big")
        return n - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else n
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise UnpackError(f"has a tar header with an invalid {what} field") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax(data: bytes) -> dict[str, str]:
    """PAX records: "<length> <key>=<value>\\n", each length counting the whole record."""
    out, i = {}, 0
    while i < len(data):
        if data[i] == 0:
            break
        sp = data.find(b" ", i)
        try:
            n = int(data[i:sp])
        except ValueError:
            raise UnpackError("has a malformed PAX header") from None
        if sp < 0 or n <= 0 or i + n > len(data) or data[i + n - 1:i + n] != b"\n":
            raise UnpackError("has a malformed PAX header")
        key, eq, value = data[sp + 1:i + n - 1].partition(b"=")
        if not eq:
            raise UnpackError("has a malformed PAX header")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        i += n
    return out


def _signed_sum(hdr: bytes) -> int:
    """The header checksum as old tars computed it, bytes taken as signed (tarfile and Go
    accept both)."""
    body = hdr[:148] + b" " * 8 + hdr[156:]
    return sum(b - 256 if b > 127 else b for b in body)


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise UnpackError("ends in the middle of an entry (truncated)")
    return data


def tar_entries(stream):
    """The entries of an uncompressed tar stream, refusing what the header walk refuses
    (unpack._GuardedTarInfo): oversized or endless chains of extended headers, too many
    global-header bytes, sparse files, bad checksums. The caller reads or skips each entry's
    data (entry.size bytes, padded to 512) before asking for the next."""
    chain: list[bytes] = []
    pax: dict[str, str] = {}
    long_name = long_link = None
    global_bytes = 0
    while True:
        hdr = stream.read(BLOCK)
        if not hdr:
            if chain:
                raise UnpackError("ends after an extended header (truncated)")
            return
        if len(hdr) != BLOCK:
            raise UnpackError("ends in the middle of a header (truncated)")
        if hdr == _ZERO:
            nxt = stream.read(BLOCK)
            if nxt and nxt != _ZERO:
                raise UnpackError("has an entry after an end-of-archive block")
            if chain:
                raise UnpackError("ends after an extended header (truncated)")
            return
        stored = _num(hdr[148:156], "checksum")
        unsigned = sum(hdr) - sum(hdr[148:156]) + 8 * 32
        if stored != unsigned and stored != _signed_sum(hdr):
            raise UnpackError("has a tar header with a bad checksum")
        kind = hdr[156:157]
        size = _num(hdr[124:136], "size")
        if size < 0:
            raise UnpackError("has a tar entry of negative size")
        if kind in (b"x", b"X", b"g", b"L", b"K"):
            if size > MAX_SPECIAL_HEADER:
                raise UnpackError(f"has an extended tar header of {size} bytes "
                                  f"(limit {MAX_SPECIAL_HEADER})")
            if len(chain) >= MAX_HEADER_CHAIN:
                raise UnpackError(f"chains more than {MAX_HEADER_CHAIN} extended tar headers "
                                  "before one entry")
            padded = -(-size // BLOCK) * BLOCK
            body = _read_exact(stream, padded)
            data = body[:size]
            if kind == b"g":
                global_bytes += size
                if global_bytes > MAX_GLOBAL_HEADERS:
                    raise UnpackError(f"has more than {MAX_GLOBAL_HEADERS} bytes of global tar "
                                      "headers")
                if any(k.startswith("GNU.sparse") for k in _pax(data)):
                    raise UnpackError("holds a sparse file: not supported")
                yield TarEntry("", kind, 0, "", hdr + body)     # Go returns it as an entry
                continue
            chain.append(hdr + body)
            if kind in (b"x", b"X"):
                pax.update(_pax(data))
                if any(k.startswith("GNU.sparse") for k in pax):
                    raise UnpackError("holds a sparse file: not supported")
            elif kind == b"L":
                long_name = _text(data)
            else:
                long_link = _text(data)
            continue
        if kind == b"S":
            raise UnpackError("holds a sparse file: not supported")
        name = _text(hdr[0:100])
        if hdr[257:263] == b"ustar\0":          # POSIX: a prefix field
            prefix = _text(hdr[345:500])
            if prefix:
                name = f"{prefix}/{name}"
        linkname = _text(hdr[157:257])
        if long_name is not None:
            name = long_name
        if long_link is not None:
            linkname = long_link
        if "path" in pax:
            name = pax["path"]
        if "linkpath" in pax:
            linkname = pax["linkpath"]
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise UnpackError("has a PAX header with an invalid size") from None
            if size < 0:
                raise UnpackError("has a tar entry of negative size")
        yield TarEntry(name, kind, size, linkname, b"".join(chain) + hdr)
        chain, pax, long_name, long_link = [], {}, None, None


def _skip(stream, n: int, buf: bytearray) -> None:
    view = memoryview(buf)
    while n > 0:
        got = stream.readinto(view[:min(n, len(buf))])
        if not got:
            raise UnpackError("ends in the middle of an entry (truncated)")
        n -= got


def _copy(stream, n: int, out, buf: bytearray) -> None:
    view = memoryview(buf)
    while n > 0:
        got = stream.readinto(view[:min(n, len(buf))])
        if not got:
            raise UnpackError("ends in the middle of an entry (truncated)")
        out.write(view[:got])
        n -= got


class _Prefetch(io.RawIOBase):
    """Reads a stream in a second thread (ISA-L inflates without the GIL) while the tar walk
    parses headers in this one: on two cores the pass costs about the inflate alone."""

    def __init__(self, src, chunk: int = 1 << 20, depth: int = 3):
        super().__init__()
        self._q: queue.Queue = queue.Queue(depth)
        self._buf = memoryview(b"")
        self._eof = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(src, chunk), daemon=True,
                                        name="scapgate-inflate")
        self._thread.start()

    def _run(self, src, chunk: int) -> None:
        try:
            while not self._stop.is_set():
                data = src.read(chunk)
                self._put(data)
                if not data:
                    return
        except BaseException as e:      # handed to the reader, raised there
            self._put(e)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if not self._buf:
            if self._eof:
                return 0
            item = self._q.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                self._eof = True
                return 0
            self._buf = memoryview(item)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        super().close()
