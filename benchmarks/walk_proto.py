"""A prototype of a cheaper layer walk, for the cold-scan experiment only (not used by scapgate).

unpack.check_layer reads the layer through gzip.GzipFile and tarfile's stream mode, which
moves the member data through Python in small reads. This walk inflates the blob with zlib in
1 MiB chunks and looks only at the 512-byte headers, skipping member data by arithmetic; it
returns the same (files, bytes) so the two can be compared on the same layer.
"""
from __future__ import annotations

import tarfile
import zlib

BLOCK = 512
_SPECIAL = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK}


def walk(path: str) -> tuple[int, int]:
    files = size = 0
    skip = 0                      # member data (padded) still to pass over
    header = bytearray()
    special: bytearray | None = None
    special_left = 0
    pax_size: int | None = None
    ended = False
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as fh:
        while not ended:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            data = d.decompress(chunk)
            while d.eof and d.unused_data:          # gzip members one after another
                rest = d.unused_data
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                data += d.decompress(rest)
            pos, n = 0, len(data)
            while pos < n and not ended:
                if skip:
                    take = min(skip, n - pos)
                    if special is not None and special_left:
                        got = data[pos:pos + min(take, special_left)]
                        special += got
                        special_left -= len(got)
                    skip -= take
                    pos += take
                    if not skip and special is not None:
                        pax_size = _pax_size(bytes(special)) if pax_kind else pax_size
                        special = None
                    continue
                need = BLOCK - len(header)
                header += data[pos:pos + need]
                pos += min(need, n - pos)
                if len(header) < BLOCK:
                    continue
                block, header = bytes(header), bytearray()
                if block == b"\0" * BLOCK:
                    ended = True
                    break
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
                padded = (info.size + BLOCK - 1) // BLOCK * BLOCK
                if info.type in _SPECIAL:
                    pax_kind = info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
                    special, special_left = bytearray(), info.size
                    skip = padded
                    continue
                member_size = pax_size if pax_size is not None else info.size
                pax_size = None
                files += 1
                size += max(member_size, 0)
                if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                    skip = (member_size + BLOCK - 1) // BLOCK * BLOCK
    return files, size


pax_kind = False


def _pax_size(raw: bytes) -> int | None:
    for rec in raw.split(b"\n"):
        _, _, kv = rec.partition(b" ")
        k, _, v = kv.partition(b"=")
        if k == b"size":
            return int(v)
    return None
