"""webhook/serve/gworker.py: requests are read in the event loop and reach a thread only when whole.

The slow-client load itself is in tests/test_fuzz.py (80 connections trickling the handshake,
the headers or the body). Here: what counts as a whole request, the read deadline, and that
the ordinary ways a client sends a request — fragmented, pipelined, chunked, kept alive past
the deadline — are still answered, over TLS against the real gunicorn server.
"""
from __future__ import annotations

import json
import select
import socket
import ssl
import time

import pytest

from tests.builders.webhooks import (  # noqa: F401
    HEADERS,
    SERVER_NAME,
    make_review,
    pod_spec,
    server,
    slow_registry,
    standalone_server,
    webhook_policies,
    workload,
)
from webhook.serve.gworker import MAX_HEADER_BYTES, MAX_PREREAD, request_complete

HEAD = b"POST /validate HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize("buf, whole", [
    (b"", False),
    (HEAD, False),                                                     # headers not ended
    (HEAD + b"\r\n", True),                                            # no body
    (HEAD + b"Content-Length: 5\r\n\r\nabc", False),
    (HEAD + b"Content-Length: 5\r\n\r\nabcde", True),
    (HEAD + b"content-LENGTH:5\r\n\r\nabcde", True),                   # case, no space
    (HEAD + b"Content-Length: 0\r\n\r\n", True),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", False),
    (HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", True),
    (HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", True),
    (HEAD + b"Content-Length: 99999999999\r\n\r\n" + b"x" * 10, False),
    (HEAD + b"Content-Length: nonsense\r\n\r\n", True),                # the parser answers 400
    (b"X" * MAX_HEADER_BYTES, True),                                   # gunicorn refuses it
    (HEAD + b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n", True),  # waits for 100
])
def test_whole_request(buf, whole):
    assert request_complete(buf) is whole


def test_huge_declared_body_is_handed_over_at_the_cap():
    """A body larger than the buffer cap goes to a thread once the cap is buffered: the app
    refuses it by Content-Length; memory per connection stays at MAX_PREREAD."""
    head = HEAD + b"Content-Length: 99999999\r\n\r\n"
    assert not request_complete(head + b"x" * (MAX_PREREAD - 1))
    assert request_complete(head + b"x" * MAX_PREREAD)


def _tls(port: int, ca: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=ca)
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    return ctx.wrap_socket(s, server_hostname=SERVER_NAME)


def _read_response(f) -> tuple[int, dict, bytes]:
    status = f.readline()
    assert status.startswith(b"HTTP/1.1 "), status
    headers = {}
    for line in iter(f.readline, b"\r\n"):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return int(status.split()[1]), headers, body


def _post(body: bytes, extra: str = "", length: bool = True) -> bytes:
    head = "POST /validate?timeout=10s HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in HEADERS.items() if k != "Accept-Encoding")
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


def _review_body(uid: str) -> bytes:
    return json.dumps(make_review(workload("Pod", pod_spec([])), uid=uid)).encode()


def test_pipelined_requests_are_both_answered(server):
    """Two requests in one write: the second sits in the parser's buffer behind the first."""
    s = _tls(server.port, server.ca)
    with s, s.makefile("rb") as f:
        s.sendall(_post(_review_body("pipe-1")) + _post(_review_body("pipe-2")))
        uids = []
        for _ in range(2):
            status, _, body = _read_response(f)
            assert status == 200
            uids.append(json.loads(body)["response"]["uid"])
    assert uids == ["pipe-1", "pipe-2"]


def test_fragmented_request_is_answered(server):
    """A request arriving in pieces (headers split mid-line, body split) is reassembled."""
    raw = _post(_review_body("fragments"))
    cuts = [0, 10, len(raw) // 3, len(raw) - 7, len(raw)]
    s = _tls(server.port, server.ca)
    with s, s.makefile("rb") as f:
        for a, b in zip(cuts, cuts[1:]):
            s.sendall(raw[a:b])
            time.sleep(0.05)     # separate TLS records arriving apart: the case under test
        status, _, body = _read_response(f)
    assert status == 200
    assert json.loads(body)["response"]["uid"] == "fragments"


def test_chunked_request_is_answered(server):
    body = _review_body("chunked")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[:100], body[100:])) + b"0\r\n\r\n"
    s = _tls(server.port, server.ca)
    with s, s.makefile("rb") as f:
        s.sendall(_post(chunks, extra="Transfer-Encoding: chunked\r\n", length=False))
        status, _, resp = _read_response(f)
    assert status == 200
    assert json.loads(resp)["response"]["uid"] == "chunked"


def test_expect_100_continue_is_answered(server):
    """curl sends `Expect: 100-continue` with larger bodies and waits for the interim answer
    before the body: the request goes to a thread at its headers, gunicorn answers 100."""
    body = _review_body("expect")
    s = _tls(server.port, server.ca)
    with s, s.makefile("rb") as f:
        head = _post(body, extra="Expect: 100-continue\r\n")[:-len(body)]
        s.sendall(head)
        assert f.readline().startswith(b"HTTP/1.1 100 ")
        assert f.readline() == b"\r\n"
        s.sendall(body)
        status, _, resp = _read_response(f)
    assert status == 200
    assert json.loads(resp)["response"]["uid"] == "expect"


@pytest.fixture(scope="module")
def short_deadline(tmp_path_factory, webhook_policies):
    srv = standalone_server(tmp_path_factory.mktemp("deadline"), webhook_policies,
                            SCAPGATE_REQUEST_READ_TIMEOUT_S="2")
    yield srv
    srv.stop()


def _closed_by_server(s: socket.socket, trickle: bytes | None, limit_s: float = 30.0) -> bool:
    """Trickle a byte every 0.5 s until the server closes the connection (True) or limit_s."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        readable, _, _ = select.select([s], [], [], 0.5)
        if readable:
            try:
                return s.recv(4096) == b""
            except (ConnectionResetError, ssl.SSLError):
                return True
        if trickle:
            try:
                s.send(trickle)
            except OSError:
                return True
    return False


@pytest.mark.parametrize("stage", ["headers", "body"])
def test_a_request_slower_than_the_deadline_is_closed(short_deadline, stage):
    """Trickling forever does not keep a connection: past the read deadline (2 s here) the
    server closes it without an answer."""
    s = _tls(short_deadline.port, short_deadline.ca)
    with s:
        s.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\n")
        if stage == "body":
            s.sendall(b"Content-Length: 5000\r\n\r\n{")
        assert _closed_by_server(s, trickle=b"X" if stage == "headers" else b" ")


def test_silent_connection_without_handshake_is_closed(short_deadline):
    s = socket.create_connection(("127.0.0.1", short_deadline.port), timeout=20)
    with s:
        assert _closed_by_server(s, trickle=None)


def test_kept_alive_connection_outlives_the_read_deadline(short_deadline):
    """The deadline runs from a request's first byte: an idle kept-alive connection (like
    kube-apiserver's between reviews) is kept for the keep-alive time, not cut at 2 s."""
    client = short_deadline.client()
    try:
        client.review(make_review(workload("Pod", pod_spec([])), uid="first"))
        sock = client.conn.sock
        time.sleep(3)          # idle longer than the read deadline: the behaviour under test
        resp = client.review(make_review(workload("Pod", pod_spec([])), uid="second"))
        assert resp["response"]["uid"] == "second"
        assert client.conn.sock is sock, "the server closed the idle connection"
    finally:
        client.close()
