"""The content's filter (scan/reach.py) and the partial pass's model and check (scan/partial.py)
on small inputs: what is bounded, what makes the filter everything, how layers, whiteouts and
symlinks are followed, and when the check sends a scan to a full unpack. End to end, with oscap,
the equality of both ways is tests/scan/test_partial.py."""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from tests.builders import imagebuild as ib
from webhook.scan import content, partial, reach
from webhook.scan.rootfs import UnpackError, UnpackLimits

OVAL_HEAD = """<?xml version="1.0"?>
<oval_definitions xmlns="http://oval.mitre.org/XMLSchema/oval-definitions-5"
  xmlns:ind="http://oval.mitre.org/XMLSchema/oval-definitions-5#independent"
  xmlns:unix="http://oval.mitre.org/XMLSchema/oval-definitions-5#unix"
  xmlns:lin="http://oval.mitre.org/XMLSchema/oval-definitions-5#linux"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<definitions><definition id="oval:t:def:1" version="1" class="compliance">
<metadata><title>t</title></metadata>
<criteria><criterion test_ref="oval:t:tst:1"/></criteria></definition></definitions>
<tests><ind:textfilecontent54_test id="oval:t:tst:1" version="1" check="all">
<ind:object object_ref="oval:t:obj:1"/></ind:textfilecontent54_test></tests>
<objects>{objects}</objects>{variables}</oval_definitions>
"""


def _spec(tmp_path: Path, objects: str, variables: str = "") -> content.ContentSpec:
    oval = tmp_path / "extra.xml"
    oval.write_text(OVAL_HEAD.format(objects=objects, variables=variables))
    ds = str(ib.datastream_path())
    return content.spec(ds, content.profile_id("standard"), oval=(str(oval),))


needs_content = pytest.mark.skipif(not ib.datastream_path().exists(),
                                   reason="needs the SCAP content (make deps)")


@pytest.mark.parametrize("pattern,prefix,exact", [
    (r"^/etc/rsyslog\.conf$", "/etc/rsyslog.conf", "/etc/rsyslog.conf"),
    (r"^/etc/rsyslog.conf$", "/etc/rsyslog", None),          # "." is any character
    (r"^/etc/ssh/sshd_config\.d/.*\.conf$", "/etc/ssh/sshd_config.d/", None),
    (r"^/etc/fo?o/", "/etc/f", None),                         # a quantifier takes its char back
    (r"^/a|^/b", None, None),                                 # top-level alternation
    (r"/etc/x$", None, None),                                 # not anchored
])
def test_literal_prefix_of_path_patterns(pattern, prefix, exact):
    assert reach.literal_prefix(pattern) == prefix
    assert reach.literal_exact(pattern) == exact


@pytest.mark.parametrize("pattern", [r"(?i)^/etc/x", r"^/etc/(?<=a)x", r"^/(a)\1", r"^\Q/etc\E",
                                     r"^/etc/[[:alpha:]]", r"^/a++"])
def test_regex_syntax_pcre_and_python_may_read_differently_is_refused(pattern):
    with pytest.raises(reach.Anywhere):
        reach.safe_regex("oval:t:obj:1", pattern)


def test_safe_regexes_match_on_bytes_as_pcre_does():
    rx = reach.safe_regex("oval:t:obj:1", r"^/etc/(ssh|ssh/sshd_config\.d)$")
    assert rx.search(b"/etc/ssh/sshd_config.d") and not rx.search(b"/etc/sshd")


@needs_content
def test_debian12_standard_is_bounded_and_names_what_it_reads():
    r = reach.analyse(content.spec(str(ib.datastream_path()), content.profile_id("standard")))
    assert not r.everything
    for spec in [("p", "etc/shadow", 0), ("p", "etc/ssh/sshd_config", 0), ("p", "etc/sysctl.d", 1),
                 ("p", "var/lib/dpkg", -1), ("p", "boot", 1)]:
        assert spec in r.reads, spec
    # rsyslog's log files are read from paths in its configuration: a trigger, not a guess
    assert ("p", "etc/rsyslog.conf", 0) in r.triggers


@needs_content
@pytest.mark.parametrize("objects,why", [
    ('<ind:sql57_object id="oval:t:obj:1" version="1"><ind:engine>sqlite</ind:engine>'
     '<ind:version>1</ind:version><ind:connection_string>x</ind:connection_string>'
     '<ind:sql>select 1</ind:sql></ind:sql57_object>', "sql57_object"),
    ('<ind:textfilecontent54_object id="oval:t:obj:1" version="1">'
     '<ind:filepath operation="not equal">/etc/x</ind:filepath>'
     '<ind:pattern operation="pattern match">.*</ind:pattern>'
     '<ind:instance datatype="int">1</ind:instance></ind:textfilecontent54_object>', "not equal"),
    ('<ind:textfilecontent54_object id="oval:t:obj:1" version="1">'
     '<ind:filepath operation="pattern match">.*\\.conf$</ind:filepath>'
     '<ind:pattern operation="pattern match">.*</ind:pattern>'
     '<ind:instance datatype="int">1</ind:instance></ind:textfilecontent54_object>', None),
    ('<unix:file_object id="oval:t:obj:1" version="1"><unix:behaviors recurse_direction="down"/>'
     '<unix:path>/</unix:path><unix:filename xsi:nil="true"/></unix:file_object>', "whole tree"),
])
def test_what_the_analysis_cannot_bound_makes_the_filter_everything(tmp_path, objects, why):
    r = reach.analyse(_spec(tmp_path, objects))
    if why is None:     # an unanchored but safe regex is matched against every path instead
        assert not r.everything and ("r", ".*\\.conf$", 0) in r.reads
    else:
        assert why in r.everything


@needs_content
def test_paths_computed_from_a_file_are_a_trigger_on_that_file(tmp_path):
    objects = (
        '<unix:file_object id="oval:t:obj:1" version="1">'
        '<unix:filepath var_ref="oval:t:var:1" var_check="at least one"/></unix:file_object>'
        '<ind:textfilecontent54_object id="oval:t:obj:2" version="1">'
        '<ind:filepath>/etc/app.conf</ind:filepath>'
        '<ind:pattern operation="pattern match">^log=(.*)$</ind:pattern>'
        '<ind:instance datatype="int" operation="greater than or equal">1</ind:instance>'
        '</ind:textfilecontent54_object>')
    variables = ('<variables><local_variable id="oval:t:var:1" version="1" datatype="string" '
                 'comment="x"><object_component object_ref="oval:t:obj:2" '
                 'item_field="subexpression"/></local_variable></variables>')
    r = reach.analyse(_spec(tmp_path, objects, variables))
    assert not r.everything
    assert ("p", "etc/app.conf", 0) in r.reads and ("p", "etc/app.conf", 0) in r.triggers


# -- the model of the final tree -------------------------------------------------------------

def _model(*layers) -> partial.Model:
    """layers: lists of (op, path, target) applied as the pass applies tar entries."""
    m = partial.Model()
    for i, entries in enumerate(layers):
        for op, path, arg in entries:
            parts = path.split("/")
            parent = m.resolve(parts[:-1])
            full = f"{parent}/{parts[-1]}".lstrip("/")
            if op == "dir":
                m.put(full, "d", i)
            elif op == "link":
                m.put(full, "l", i, target=arg)
            elif op == "file":
                m.put(full, "f", i, written=bool(arg))
            elif op == "whiteout":
                m.whiteout(full)
            elif op == "opaque":
                m.opaque(parent, i)
    return m


STANDARD_LIKE = reach.Reach(frozenset({("p", "lib/systemd/system", -1), ("p", "etc/passwd", 0)}))


def test_a_merged_usr_root_is_read_through_its_symlinks():
    m = _model([("link", "lib", "usr/lib"), ("dir", "usr/lib/systemd/system", None),
                ("file", "usr/lib/systemd/system/ssh.service", False),
                ("file", "etc/passwd", True)])
    assert m.missing(STANDARD_LIKE) == \
        "/usr/lib/systemd/system/ssh.service is read by the content and was not written"
    m.written["usr/lib/systemd/system/ssh.service"] = True
    assert m.missing(STANDARD_LIKE) == ""


def test_whiteouts_and_opaque_directories_remove_lower_files():
    lower = [("file", "etc/passwd", False), ("file", "lib/systemd/system/a.service", False)]
    assert "was not written" in _model(lower).missing(STANDARD_LIKE)
    m = _model(lower, [("whiteout", "etc/passwd", None)])
    assert "a.service" in m.missing(STANDARD_LIKE)      # passwd is gone, a.service is not
    m = _model(lower, [("whiteout", "etc/passwd", None), ("file", "lib/systemd/system/b", True),
                       ("opaque", "lib/systemd/system/x", None)])
    assert m.missing(STANDARD_LIKE) == ""       # the opaque directory hid a.service, not b


def test_a_file_behind_an_admitted_symlink_must_be_written():
    m = _model([("link", "etc/passwd", "/opt/real-passwd"), ("file", "opt/real-passwd", False)])
    assert m.missing(STANDARD_LIKE) == "/opt/real-passwd is read by the content and was not written"


def test_a_trigger_file_makes_the_image_everything():
    r = reach.Reach(frozenset({("p", "etc/passwd", 0)}), frozenset({("p", "etc/rsyslog.conf", 0)}))
    assert _model([("file", "etc/passwd", True)]).missing(r) == ""
    assert "/etc/rsyslog.conf exists" in _model(
        [("file", "etc/passwd", True), ("file", "etc/rsyslog.conf", True)]).missing(r)


def test_symlink_cycles_do_not_multiply_apparent_paths():
    m = _model([("dir", "usr/bin", None), ("link", "usr/bin/X11", "."),
                ("file", "usr/bin/python3", False)])
    assert m.apparent() is not None
    assert m.missing(reach.Reach(frozenset({("r", "^/usr/bin/X11/X11/python3$", 0)}))) == ""


# -- reading a layer while skopeo writes it ----------------------------------------------------

def test_a_layer_is_read_while_it_is_downloaded_and_checked_against_its_digest(tmp_path):
    layer = ib.layer_from_entries(ib.synthetic_debian_entries())
    where = tmp_path / "layout"
    where.mkdir()
    final = tmp_path / "blobs" / layer.digest.split(":")[1]
    final.parent.mkdir()
    tmp_blob = where / "oci-put-blob123"
    done = threading.Event()
    half = len(layer.blob) // 2
    tmp_blob.write_bytes(layer.blob[:half])
    opener = (lambda: partial.GrowingBlob(layer.digest, str(final), lambda: str(where), [],
                                          100, done, 30.0, len(layer.blob)), layer.digest)

    def finish():       # the rest arrives, then skopeo renames the blob into place
        with open(tmp_blob, "ab") as fh:
            fh.write(layer.blob[half:])
        os.rename(tmp_blob, final)
        done.set()

    out = tmp_path / "out"
    out.mkdir()
    first = opener[0]()
    first.close()
    t = threading.Thread(target=finish)
    t.start()
    part, blobs = partial.filter_layers([opener], str(out), reach.implicit(), UnpackLimits())
    t.join()
    assert part.entries == len(list(ib.synthetic_debian_entries()))
    assert part.written > 0 and len(blobs) == 1
    # a download renamed to another digest's place is not taken for this layer
    other = tmp_path / "blobs" / ("f" * 64)
    tmp_blob.write_bytes(layer.blob)
    grow = partial.GrowingBlob(layer.digest, str(other), lambda: str(where), [], 100,
                               threading.Event(), 30.0, len(layer.blob))
    os.rename(tmp_blob, tmp_path / "elsewhere")
    (other).write_bytes(layer.blob)
    with pytest.raises(partial.BlobMismatch):
        grow.confirm(len(layer.blob))
    grow.close()
    # another blob read in its place is caught by the digest
    shutil.copy(final, tmp_path / "other")
    wrong = (lambda: open(tmp_path / "other", "rb"), "sha256:" + "0" * 64)
    with pytest.raises(partial.BlobMismatch):
        partial.filter_layers([wrong], str(out), reach.implicit(), UnpackLimits())


def test_a_download_that_never_arrives_is_an_error_not_a_hang(tmp_path):
    done = threading.Event()
    done.set()
    with pytest.raises(UnpackError, match="was not downloaded"):
        partial.GrowingBlob("sha256:" + "1" * 64, str(tmp_path / "nope"), lambda: "", [], 0,
                            done, 5.0)


# -- the pass's own tar reader reads as Go's archive/tar (umoci) does ---------------------------

def _tar(*members: tuple[str, bytes, bytes], end: bytes = b"\0" * 1024) -> bytes:
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in members:
            ti = tarfile.TarInfo(name)
            ti.type, ti.size = kind, len(data)
            tar.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    body = raw[:raw.rindex(b"\0" * 1024)] if raw.endswith(b"\0" * 1024) else raw
    while body.endswith(b"\0" * 512) and len(body) % 512 == 0 and body[-512:] == b"\0" * 512:
        body = body[:-512]
    return body + end


def _pass(tmp_path: Path, blob: bytes):
    import hashlib
    src = tmp_path / "layer.tar"
    src.write_bytes(blob)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    return partial.filter_layers([(lambda: open(src, "rb"), digest)], str(out),
                                 reach.Reach(frozenset({("p", "etc", -1)})), UnpackLimits())


def test_names_of_long_paths_and_pax_headers_are_read_as_umoci_reads_them(tmp_path):
    deep = "etc/" + "d/" * 80 + "conf"          # longer than ustar's 100 bytes: a PAX path
    part, blobs = _pass(tmp_path, _tar((deep, b"0", b"x"), ("usr/bin/tool", b"0", b"y")))
    assert part.model.written.get(deep) is True
    assert part.model.written.get("usr/bin/tool") is False
    assert (part.entries, part.written) == (2, 1)


def test_an_entry_after_a_single_end_of_archive_block_is_refused(tmp_path):
    tail = _tar(("etc/x", b"0", b"x"))
    with pytest.raises(UnpackError, match="after an end-of-archive block"):
        _pass(tmp_path, _tar(("etc/a", b"0", b"a"), end=b"\0" * 512) + tail)


def test_a_bad_header_checksum_is_refused(tmp_path):
    blob = bytearray(_tar(("etc/a", b"0", b"a")))
    at = 0 if blob[156:157] != b"x" else 1024
    blob[at + 10] ^= 0x01                        # a name byte of the first header
    with pytest.raises(UnpackError, match="checksum"):
        _pass(tmp_path, bytes(blob))
