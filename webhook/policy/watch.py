"""Reload policies without a restart: poll the policy directory, swap in a valid new set.

A mounted ConfigMap changes by writing a new `..2026_…` directory and swapping the `..data`
symlink, so the visible files change all at once; polling a cheap stat signature every couple of
seconds sees that (and plain edits) without inotify and without a dependency. A change that
does not load, or whose content is unusable, is refused: the previous PolicySet stays in force,
the error is logged, kept for /readyz and counted. Readers never wait for a reload.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Callable

from .. import policy as P
from ..scan import content as content_mod

log = logging.getLogger("scapgate.policy")
_stores: "weakref.WeakSet[PolicyStore]" = weakref.WeakSet()


def _after_fork() -> None:
    for store in list(_stores):
        store._forked()


os.register_at_fork(after_in_child=_after_fork)


def signature(path: str, extra: tuple[str, ...] = ()) -> tuple:
    """What changes when the policies change: each policy file's identity through symlinks
    (inode, size, mtime), the `..data` link target, and the content files the set uses."""
    out: list = []
    try:
        files = P.policy_files(path)
    except OSError as e:
        return (("error", str(e)),)
    data = os.path.join(path, "..data")
    if os.path.islink(data):
        out.append(("..data", os.readlink(data)))
    for f in list(files) + sorted(extra):
        try:
            st = os.stat(f)
            out.append((f, st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((f, None))
    return tuple(out)


def _content_files(pset: P.PolicySet) -> tuple[str, ...]:
    files = set()
    for p in pset.policies:
        files.update(f for f in (p.datastream, p.tailoring) if f)
        files.update(p.oval)
        for product, entry in p.content_products().items():
            if entry is not None:
                files.add(entry.datastream or content_mod.datastream_for(product))
                files.update(f for f in (entry.tailoring,) if f)
    return tuple(sorted(files))


def default_check(pset: P.PolicySet) -> list[str]:
    """Refuse a set whose content is missing or whose profile/tailoring is unusable."""
    from .lint import check_policy_set
    return [str(f) for f in check_policy_set(pset)]


class PolicyStore:
    """The PolicySet in force, reloaded when the directory changes. Thread-safe.

    current() is what admission calls on every request: it returns an immutable PolicySet and
    never blocks on a reload. The first load happens in the constructor and raises PolicyError
    when it fails: a gate must not start without policies (fail closed).
    """

    def __init__(self, path: str, clock: Callable[[], float] = time.time, *,
                 interval_s: float = 2.0,
                 check: Callable[[P.PolicySet], list[str]] | None = default_check):
        self.path = path
        self.clock = clock
        self.interval_s = interval_s          # a ConfigMap update is seen within this
        self._check = check
        self._lock = threading.Lock()         # one reload at a time; readers never take it
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.reload_count = 0                 # successful reloads after the first load
        self.error_count = 0                  # refused reloads (invalid change)
        self.last_error: str | None = None    # why the last change was refused; None once fixed
        self.last_error_at: float | None = None
        self._listeners: list[Callable[[P.PolicySet], None]] = []
        self._error_listeners: list[Callable[[str], None]] = []
        self._failed: tuple = ()
        sig = signature(path)
        self._set = self._load()
        self.loaded_at = clock()
        self._sig = signature(path, _content_files(self._set)) if sig == signature(path) else ()
        _stores.add(self)

    def _forked(self) -> None:
        """In a forked child the watcher thread is gone and a lock may be held by it forever."""
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread = None

    def current(self) -> P.PolicySet:
        if self._pid and self._pid != os.getpid():
            self.start()      # forked after start() (gunicorn --preload): watch in this process too
        return self._set

    def _load(self) -> P.PolicySet:
        pset = P.load_set(self.path)
        problems = self._check(pset) if self._check else []
        if problems:
            raise P.PolicyError("; ".join(problems[:5]) +
                                (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
        return pset

    def check(self) -> bool:
        """Poll once: reload when the signature changed. True when a new set is in force."""
        with self._lock:
            before = signature(self.path, _content_files(self._set))
            if before == self._sig:
                return False
            try:
                pset = self._load()
            except Exception as e:     # any failure keeps the policies in force
                if signature(self.path, _content_files(self._set)) != before:
                    return False       # the files moved under us (a swap in progress): retry
                self._refused(before, str(e))
                return False
            after = signature(self.path, _content_files(pset))
            if signature(self.path, _content_files(self._set)) != before:
                return False           # changed while loading: load again on the next poll
            self._set, self._sig = pset, after
            self.reload_count += 1
            self.loaded_at = self.clock()
            self.last_error = self.last_error_at = None
            self._failed = ()
            log.info("policies reloaded from %s: %s", self.path,
                     ", ".join(f"{p.name}@{p.sha256[:12]}" for p in pset.policies))
        for fn in list(self._listeners):
            fn(pset)
        return True

    def _refused(self, sig: tuple, error: str) -> None:
        """Count and log a refused change once; keep retrying it on every poll (content that
        was missing may be installed without the policy files changing)."""
        if (sig, error) == self._failed:
            return
        self._failed = (sig, error)
        self.error_count += 1
        self.last_error = error
        self.last_error_at = self.clock()
        log.error("policy reload refused, previous policies stay in force: %s", error)
        for fn in list(self._error_listeners):
            fn(error)

    def on_error(self, fn: Callable[[str], None]) -> None:
        """Call fn(error) once for each refused change (e.g. to count it in a metric)."""
        self._error_listeners.append(fn)

    def on_reload(self, fn: Callable[[P.PolicySet], None]) -> None:
        """Call fn(new_set) after each successful reload (e.g. to log or reset a metric)."""
        self._listeners.append(fn)

    def start(self) -> "PolicyStore":
        """Poll in a daemon thread. Idempotent, and safe after fork: a gunicorn worker forked
        from a preloaded app calls start() again and gets its own thread."""
        with self._start_lock:
            if self._thread and self._thread.is_alive() and self._pid == os.getpid():
                return self
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="policy-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._pid = 0
        self._stop.set()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never let the watcher die: it is the only way to recover
                log.exception("policy watcher failed; retrying")

    def status(self) -> dict:
        """For /readyz detail: what is in force, and why the last change was refused."""
        pset = self._set
        return {"source": self.path, "loaded_at": self.loaded_at,
                "policies": {p.name: p.sha256 for p in pset.policies},
                "reloads": self.reload_count, "reload_errors": self.error_count,
                "last_error": self.last_error, "last_error_at": self.last_error_at}
