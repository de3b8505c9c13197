"""A gunicorn gthread worker that gives a connection a thread only once its request is in.

gunicorn's gthread worker hands every readable connection to a thread, which then does the TLS
handshake and reads headers and body with blocking calls. A client that trickles its request
(one header byte a second) holds that thread for as long as it likes; 32 such connections hold
every thread of the default 2 workers x 16 threads, and kube-apiserver's reviews time out.

ReadyThreadWorker does the handshake and reads the request in the worker's event loop instead,
without blocking: a connection reaches a thread only with its whole request buffered (headers,
and a Content-Length body or a chunked body up to its last chunk). Each connection has
`request_read_timeout_s` from its first byte (from accept for a new one) to get there; past it,
it is closed without a thread ever waiting for it. A kept-alive connection may stay idle for
the keep-alive time as before.

Memory stays bounded: a request is buffered up to MAX_PREREAD bytes (the review limit and its
headers); a bigger one, or one arriving while all connections together already hold
PREREAD_BUDGET bytes, goes to a thread as plain gthread would hand it (the app refuses bodies
over its limit from Content-Length alone, without reading them).
"""
from __future__ import annotations

import errno
import re
import selectors
import ssl
import time
from collections import OrderedDict
from functools import partial

from gunicorn import http
from gunicorn import sock as gsock
from gunicorn.workers.gthread import ThreadWorker

from ..admission.review import MAX_BODY

MAX_HEADER_BYTES = 64 * 1024          # gunicorn itself refuses longer request lines/fields
MAX_PREREAD = MAX_BODY + MAX_HEADER_BYTES
PREREAD_BUDGET = 64 * 1024 * 1024     # all connections of one worker together
RECV_SIZE = 64 * 1024

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d{1,12})[ \t]*\r\n", re.I)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:[^\r\n]*chunked", re.I)
_EXPECT = re.compile(rb"\r\nexpect[ \t]*:[ \t]*100-continue", re.I)


def request_complete(buf: bytes) -> bool:
    """Whether buf holds a whole HTTP/1.x request (or enough that a thread would not wait).

    Headers end at the first blank line. A Content-Length body must be in; a chunked body must
    end with its last chunk; no body otherwise. A request announcing `Expect: 100-continue`
    is whole with its headers (curl sends one for larger bodies and waits for gunicorn's
    interim answer). Malformed framing counts as complete: gunicorn's parser answers it (400)
    at once, with nothing left to wait for."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return len(buf) >= MAX_HEADER_BYTES
    head = buf[:end + 2]
    body = len(buf) - end - 4
    if _EXPECT.search(head):
        return True     # the client waits for gunicorn's "100 Continue" before its body
    if _CHUNKED.search(head):
        return buf.endswith(b"0\r\n\r\n") or body >= MAX_PREREAD
    lengths = _CONTENT_LENGTH.findall(head)
    if not lengths:
        return True
    return body >= min(int(lengths[0]), MAX_PREREAD)


class _Reading:
    """A connection whose request is being read in the event loop."""

    __slots__ = ("conn", "buf", "deadline", "handshaken", "events")

    def __init__(self, conn, buf: bytes, deadline: float, handshaken: bool):
        self.conn, self.buf, self.deadline = conn, bytearray(buf), deadline
        self.handshaken = handshaken
        self.events = 0


class ReadyThreadWorker(ThreadWorker):

    request_read_timeout_s = 10.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading: OrderedDict[int, _Reading] = OrderedDict()   # by id(conn), deadline order
        self.buffered = 0
        self.read_timeouts = 0

    # Every path to a thread goes through enqueue_req: new connections, kept-alive ones that
    # became readable, deferred ones, and pipelined bytes left in a parser's buffer.
    def enqueue_req(self, conn):
        if self._ready(conn):
            return super().enqueue_req(conn)
        buf = b""
        if conn.parser is not None:
            buf = conn.parser.unreader.take_buffered()
        state = _Reading(conn, buf, time.monotonic() + self.request_read_timeout_s,
                         handshaken=conn.initialized or not self.cfg.is_ssl)
        conn.sock.setblocking(False)
        self.reading[id(conn)] = state
        self.buffered += len(state.buf)
        self._on_event(state, None)
        if id(conn) in self.reading and not state.events:
            self._watch(state, selectors.EVENT_READ)

    @staticmethod
    def _ready(conn) -> bool:
        return getattr(conn, "preread_done", False)

    def _watch(self, state: _Reading, events: int):
        if state.events == events:
            return
        if state.events:
            self.poller.modify(state.conn.sock, events, partial(self._on_event, state))
        else:
            self.poller.register(state.conn.sock, events, partial(self._on_event, state))
        state.events = events

    def _unwatch(self, state: _Reading):
        if state.events:
            try:
                self.poller.unregister(state.conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            state.events = 0

    def _on_event(self, state: _Reading, _fileobj):
        if id(state.conn) in self.reading:
            try:
                self._advance(state)
            except Exception:       # never take the event loop (every connection) down
                self.log.exception("closing a connection after an error reading its request")
                if id(state.conn) in self.reading:
                    self._close(state)

    def _advance(self, state: _Reading) -> bool:
        """Read what the socket has without blocking; True once the connection left us
        (handed to a thread or closed)."""
        conn = state.conn
        try:
            if not state.handshaken:
                if not isinstance(conn.sock, ssl.SSLSocket):
                    self._unwatch(state)          # the wrapped socket replaces this object
                    conn.sock = gsock.ssl_context(self.cfg).wrap_socket(
                        conn.sock, server_side=True, do_handshake_on_connect=False,
                        suppress_ragged_eofs=self.cfg.suppress_ragged_eofs)
                conn.sock.do_handshake()
                state.handshaken = True
                if gsock.is_http2_negotiated(conn.sock):
                    return self._dispatch(state, tls_done=True)   # gunicorn's own HTTP/2 path
            if state.buf and request_complete(state.buf):
                return self._dispatch(state)        # pipelined behind the previous request
            while len(state.buf) < MAX_PREREAD:
                data = conn.sock.recv(RECV_SIZE)
                if not data:
                    if state.buf:
                        return self._dispatch(state)   # the parser answers a truncated request
                    return self._close(state)
                state.buf += data
                self.buffered += len(data)
                if request_complete(state.buf):
                    return self._dispatch(state)
                if self.buffered > PREREAD_BUDGET:
                    return self._dispatch(state)
            return self._dispatch(state)
        except ssl.SSLWantReadError:
            self._watch(state, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self._watch(state, selectors.EVENT_WRITE)
        except (BlockingIOError, InterruptedError):
            self._watch(state, selectors.EVENT_READ)
        except (ssl.SSLError, OSError) as e:
            if isinstance(e, OSError) and e.errno not in (None, errno.ECONNRESET, errno.EPIPE,
                                                          errno.ENOTCONN, errno.ETIMEDOUT):
                self.log.debug("closing connection while reading its request: %s", e)
            return self._close(state)
        return False

    def _forget(self, state: _Reading):
        self._unwatch(state)
        self.reading.pop(id(state.conn), None)
        self.buffered -= len(state.buf)

    def _dispatch(self, state: _Reading, tls_done: bool = False) -> bool:
        self._forget(state)
        conn = state.conn
        conn.sock.setblocking(True)
        if tls_done:
            # HTTP/2 negotiated (only when gunicorn's http_protocols offers h2): set up its
            # connection parser as TConn.init() does, on the socket already handshaken.
            conn.initialized = conn.is_http2 = True
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client,
                                          http2_connection=True)
            conn.parser.initiate_connection()
        elif conn.parser is None:
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.initialized = True
        if state.buf:
            conn.parser.unreader.unread(bytes(state.buf))
        conn.data_ready = True
        conn.preread_done = True
        try:
            super().enqueue_req(conn)
        finally:
            conn.preread_done = False
        return True

    def _close(self, state: _Reading) -> bool:
        self._forget(state)
        self.nr_conns -= 1
        state.conn.close()
        return True

    def murder_pending(self):
        """gunicorn calls this every loop turn (at least once a second): also close the
        connections that did not deliver their request in time."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading:
            state = next(iter(self.reading.values()))
            if state.deadline > now:
                break
            self.read_timeouts += 1
            self.log.debug("closing %s: request not complete within %.0f s",
                           state.conn.client, self.request_read_timeout_s)
            self._close(state)
