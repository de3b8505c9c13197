"""The console listener: what runs and how it is judged, for people — never for kube-apiserver.

`scapgate serve --console-bind HOST:PORT` makes gunicorn listen there too. Requests that
arrive on that listener reach only the console's routes (`/api/v1/inventory`,
`/api/v1/policyreports`; the console issue adds its pages) and only with
`Authorization: Bearer <token>` equal to the token file's content (compared in constant
time; the file is re-read when it changes, so a rotated Secret needs no restart). Requests on
the webhook's listener never reach the console's routes, and the webhook's routes are not
served on the console's listener. Every console route is read-only.
"""
from __future__ import annotations

import hmac
import os
import threading

TOKEN_LIMIT = 4096
_cache: dict[str, tuple[tuple, str]] = {}
_lock = threading.Lock()


def read_token(path: str) -> str:
    """The token in the file (whitespace stripped); ValueError when it cannot be used."""
    if not path:
        raise ValueError("no token file (SCAPGATE_CONSOLE_TOKEN_FILE / --console-token-file)")
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"token file {path}: {e.strerror}") from e
    sig = (st.st_ino, st.st_size, st.st_mtime_ns)
    with _lock:
        hit = _cache.get(path)
        if hit is not None and hit[0] == sig:
            return hit[1]
    with open(path, "rb") as fh:
        token = fh.read(TOKEN_LIMIT + 1).decode(errors="replace").strip()
    if len(token) < 16 or len(token) > TOKEN_LIMIT:
        raise ValueError(f"token file {path}: the token must be 16 to {TOKEN_LIMIT} characters")
    with _lock:
        _cache[path] = (sig, token)
    return token


def authorized(header: str | None, path: str) -> bool:
    """Constant-time comparison of `Bearer <token>` with the token file's."""
    try:
        token = read_token(path)
    except ValueError:
        return False
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


def port_of(bind: str) -> str:
    return bind.rsplit(":", 1)[-1] if bind else ""
