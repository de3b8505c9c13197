"""Which store a Settings.store value names. Redis is imported only when asked for."""
from __future__ import annotations

import os

from .base import Store
from .sqlite import SQLiteStore


def open_store(url: str, state_dir: str) -> Store:
    """The store a Settings.store value names: "" → SQLite under state_dir, sqlite:///path,
    or redis://…/rediss://…"""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_store import RedisStore
        return RedisStore(url)
    if url == "":
        return SQLiteStore(os.path.join(state_dir, "scapgate.db"))
    if url.startswith("sqlite:///"):                  # an absolute path, as in file:///
        return SQLiteStore("/" + url[len("sqlite:///"):].lstrip("/"))
    raise ValueError(f"unsupported store {url!r}: use '', sqlite:///PATH or redis://HOST:PORT/DB")
